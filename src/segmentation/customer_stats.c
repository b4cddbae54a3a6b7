/*
 * customer_stats.c
 *		crm.customer_stats kept by statement-level triggers on crm.orders,
 *		crm.order_line and crm.event, with lifecycle stages and rule tags
 *		evaluated for the affected customers in the same pass.
 *
 * Flow.  Every trigger turns its transition table into one query whose rows
 * are "facts" in customer_id order:
 *		(customer_id, kind, at, paid, amount, order_id, category, count)
 * kind 0 = order, 1 = order line, 2 = events, 3 = nothing (re-evaluate).
 * Facts are read through a cursor; every ~2000 customers the batch is
 * flushed: the customers' stats rows are read (one query), the facts folded
 * in, stage and tags evaluated in C, and the changes written back (one
 * upsert, one tag insert, one tag delete, history rows).  So each affected
 * customer is touched once per statement, whatever the number of orders.
 * Inserted orders and lines are folded in incrementally; updates and
 * deletes (refunds, merges moving customer_id) rebuild the customers
 * concerned from their orders, lines and events with the same code.
 *
 * Rolling windows.  Column "days" holds a compact array of day buckets
 * (local day number, paid orders, cents), sorted by day, one per day with
 * orders, for the 400 days up to the customer's latest order day, and a
 * "horizon": every paid order on or after the horizon day is in a bucket.
 * An order is folded in by bumping its day's bucket (the last one for
 * orders arriving in time order: constant time), older buckets drop off the
 * front, so the array never exceeds 400 entries.  Orders and spend over the
 * N days up to any date D are the sum of the buckets in (D - N, D]: exact
 * whenever D - N + 1 >= horizon, i.e. for every D from 35 days before the
 * last order on (365-day window) and earlier for the shorter windows;
 * crm.customer_window falls back to crm.orders for older dates.
 *
 * Categories.  Column "categories" holds, per category bought, the number
 * of paid orders with a line in it, the line amounts (cents) and the orders
 * per weekday: the inputs of share(), category_orders(), category_spend()
 * and top_weekday(category).  Lines of one order are expected in one
 * statement (an order's category is counted once per statement).
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "utils/tuplestore.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "customer_stats.h"
#include "seg_config.h"
#include "tag_rule.h"

#define DAY_HORIZON		400
#define BATCH_CUSTOMERS 2000
#define FETCH_ROWS		10000
#define NO_HORIZON		PG_INT32_MIN

typedef enum FactKind
{
	FACT_ORDER = 0,
	FACT_LINE = 1,
	FACT_EVENTS = 2,
	FACT_NONE = 3
} FactKind;

typedef struct Fact
{
	int64		cust;
	int			kind;
	TimestampTz at;
	bool		paid;
	int64		cents;
	int64		order_id;
	char	   *category;
	int64		count;
} Fact;

typedef struct DayBucket
{
	int32		day;
	int32		orders;
	int64		cents;
} DayBucket;

typedef struct CatStat
{
	char	   *name;
	int32		orders;
	int64		cents;
	int32		weekday[7];
	int64		last_order;		/* last order counted in this statement */
} CatStat;

typedef struct CustState
{
	int64		customer_id;
	char		status;			/* simplehash */
	bool		existed;		/* had a stats row */
	bool		dirty;			/* facts applied: write the row */
	bool		golden;
	int32		orders;
	int32		refunded;
	int64		cents;
	TimestampTz first_at;
	TimestampTz last_at;
	int32		weekday[7];
	int32		events;
	TimestampTz last_event_at;	/* 0 with events == 0 */
	int32		horizon;
	int			ndays;
	int			maxdays;
	DayBucket  *days;
	int			ncats;
	int			maxcats;
	CatStat    *cats;
	char	   *stage;
	TimestampTz stage_since;
	int			ntags;
	int32	   *tags;			/* current rule tags */
} CustState;

#define SH_PREFIX cust
#define SH_ELEMENT_TYPE CustState
#define SH_KEY customer_id
#include "int64_hash.h"

/* ---------------------------------------------------------------------
 * Configuration cache: rule tags and lifecycle thresholds
 * --------------------------------------------------------------------- */
typedef struct RuleTag
{
	int32		tag_id;
	TagProgram *prog;
} RuleTag;

typedef struct SegConfig
{
	uint64		generation;
	MemoryContext cxt;
	int			nrules;
	RuleTag    *rules;
	double		new_days;
	double		growing_orders_90d;
	double		mature_orders;
	double		declining_days;
	double		churned_days;
} SegConfig;

static SegConfig config = {0};

static double
setting_num(const char *key, double dflt)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(key)};
	bool		isnull;
	double		v = dflt;

	if (SPI_execute_with_args("SELECT s.value FROM crm.segment_setting s WHERE s.key OPERATOR(pg_catalog.=) $1",
							  1, argtypes, args, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char	   *end;

		(void) isnull;
		v = strtod(s, &end);
		if (end == s || *end != '\0' || !isfinite(v) || v < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("setting %s in crm.segment_setting must be a non-negative number", key)));
	}
	return v;
}

static SegConfig *
seg_config(void)
{
	int			i;

	if (config.cxt != NULL && config.generation == crm_config_generation())
		return &config;
	(void) crm_relid("tag");
	if (config.cxt == NULL)
		config.cxt = AllocSetContextCreate(TopMemoryContext, "crm segmentation config",
										   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(config.cxt);
	config.nrules = 0;
	config.rules = NULL;
	SPI_connect();
	if (SPI_execute("SELECT t.tag_id, t.compiled FROM crm.tag t "
					"WHERE t.kind OPERATOR(pg_catalog.=) 'rule' AND t.enabled ORDER BY t.tag_id",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tag");
	config.rules = MemoryContextAllocZero(config.cxt, sizeof(RuleTag) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;
		MemoryContext old;

		config.rules[i].tag_id = DatumGetInt32(SPI_getbinval(tup, td, 1, &isnull));
		d = SPI_getbinval(tup, td, 2, &isnull);
		if (isnull)
			continue;
		old = MemoryContextSwitchTo(config.cxt);
		config.rules[config.nrules].tag_id = config.rules[i].tag_id;
		config.rules[config.nrules].prog = tag_program_load(DatumGetByteaPP(d));
		MemoryContextSwitchTo(old);
		config.nrules++;
	}
	config.new_days = setting_num("lifecycle_new_days", 60);
	config.growing_orders_90d = setting_num("lifecycle_growing_orders_90d", 3);
	config.mature_orders = setting_num("lifecycle_mature_orders", 12);
	config.declining_days = setting_num("lifecycle_declining_days", 90);
	config.churned_days = setting_num("lifecycle_churned_days", 365);
	SPI_finish();
	config.generation = crm_config_generation();
	return &config;
}

/* ---------------------------------------------------------------------
 * Folding facts into a customer's state
 * --------------------------------------------------------------------- */
static void
add_cents(int64 *acc, int64 c)
{
	if (pg_add_s64_overflow(*acc, c, acc))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("customer spend is out of range")));
}

static void
bucket_add(CustState *st, int32 day, int32 orders, int64 cents)
{
	int			i;

	if (st->horizon != NO_HORIZON && day < st->horizon)
		return;
	/* common case: the last bucket, or a new last one */
	if (st->ndays > 0 && st->days[st->ndays - 1].day == day)
	{
		st->days[st->ndays - 1].orders += orders;
		add_cents(&st->days[st->ndays - 1].cents, cents);
		return;
	}
	if (st->ndays == st->maxdays)
	{
		st->maxdays = Max(8, st->maxdays * 2);
		st->days = st->days ? repalloc(st->days, sizeof(DayBucket) * st->maxdays) :
			palloc(sizeof(DayBucket) * st->maxdays);
	}
	i = st->ndays;
	while (i > 0 && st->days[i - 1].day > day)
		i--;
	if (i > 0 && st->days[i - 1].day == day)
	{
		st->days[i - 1].orders += orders;
		add_cents(&st->days[i - 1].cents, cents);
		return;
	}
	memmove(&st->days[i + 1], &st->days[i], sizeof(DayBucket) * (st->ndays - i));
	st->days[i].day = day;
	st->days[i].orders = orders;
	st->days[i].cents = cents;
	st->ndays++;
	/* drop buckets older than DAY_HORIZON days before the newest */
	{
		int32		keep_from = st->days[st->ndays - 1].day - (DAY_HORIZON - 1);
		int			drop = 0;

		while (drop < st->ndays && st->days[drop].day < keep_from)
			drop++;
		if (drop > 0)
		{
			memmove(&st->days[0], &st->days[drop], sizeof(DayBucket) * (st->ndays - drop));
			st->ndays -= drop;
		}
		if (drop > 0 || (st->horizon != NO_HORIZON && st->horizon < keep_from))
			st->horizon = keep_from;
	}
}

static CatStat *
cat_get(CustState *st, const char *name)
{
	int			i;
	CatStat    *c;

	for (i = 0; i < st->ncats; i++)
		if (strcmp(st->cats[i].name, name) == 0)
			return &st->cats[i];
	if (st->ncats == st->maxcats)
	{
		st->maxcats = Max(8, st->maxcats * 2);
		st->cats = st->cats ? repalloc(st->cats, sizeof(CatStat) * st->maxcats) :
			palloc(sizeof(CatStat) * st->maxcats);
	}
	c = &st->cats[st->ncats++];
	memset(c, 0, sizeof(CatStat));
	c->name = pstrdup(name);
	c->last_order = -1;
	return c;
}

static void
apply_fact(CustState *st, const Fact *f)
{
	int			wd;
	int32		day;

	switch (f->kind)
	{
		case FACT_ORDER:
			st->dirty = true;
			if (!f->paid)
			{
				st->refunded++;
				break;
			}
			day = crm_local_day(f->at, &wd);
			if (st->orders == 0 || f->at < st->first_at)
				st->first_at = f->at;
			if (st->orders == 0 || f->at > st->last_at)
				st->last_at = f->at;
			st->orders++;
			add_cents(&st->cents, f->cents);
			st->weekday[wd]++;
			bucket_add(st, day, 1, f->cents);
			break;
		case FACT_LINE:
			{
				CatStat    *c = cat_get(st, f->category);

				st->dirty = true;
				(void) crm_local_day(f->at, &wd);
				add_cents(&c->cents, f->cents);
				if (c->last_order != f->order_id)
				{
					c->last_order = f->order_id;
					c->orders++;
					c->weekday[wd]++;
				}
				break;
			}
		case FACT_EVENTS:
			st->dirty = true;
			st->events += (int32) f->count;
			if (st->events == f->count || f->at > st->last_event_at)
				st->last_event_at = f->at;
			break;
		default:
			break;
	}
}

/* ---------------------------------------------------------------------
 * (De)serialising the compact columns
 * --------------------------------------------------------------------- */
static bytea *
days_to_bytea(const CustState *st)
{
	int			len = 8 + sizeof(DayBucket) * st->ndays;
	bytea	   *b = palloc(VARHDRSZ + len);
	char	   *d = VARDATA(b);
	int32		n = st->ndays;

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(d, &st->horizon, 4);
	memcpy(d + 4, &n, 4);
	if (n > 0)
		memcpy(d + 8, st->days, sizeof(DayBucket) * n);
	return b;
}

/*
 * What is wrong with a compact column's bytes, or NULL.  The columns are
 * written by the triggers; crm.stats_window and crm.stats_categories read
 * whatever bytes they are given, so every field is checked before use.
 */
static const char *
days_problem(const char *d, int len)
{
	int32		n;
	int64		cents = 0;

	if (len < 8)
		return "The day buckets are shorter than their 8-byte header.";
	memcpy(&n, d + 4, 4);
	if (n < 0 || n > DAY_HORIZON)
		return "The day bucket count is not between 0 and 400.";
	if (len != 8 + (int) sizeof(DayBucket) * n)
		return "The length does not match the day bucket count.";
	for (int i = 0; i < n; i++)
	{
		DayBucket	bk;
		int32		first;

		memcpy(&bk, d + 8 + sizeof(DayBucket) * i, sizeof(DayBucket));
		if (i > 0)
		{
			DayBucket	prev;

			memcpy(&prev, d + 8 + sizeof(DayBucket) * (i - 1), sizeof(DayBucket));
			if (bk.day <= prev.day)
				return "The day buckets are not in increasing order of day.";
		}
		memcpy(&first, d + 8, 4);
		if ((int64) bk.day - first >= DAY_HORIZON)
			return "The day buckets span more than 400 days.";
		if (bk.orders < 1 || bk.cents < 0)
			return "A day bucket has no orders or a negative spend.";
		if (pg_add_s64_overflow(cents, bk.cents, &cents))
			return "The day buckets' spend exceeds the bigint range.";
	}
	return NULL;
}

static const char *
cats_problem(const char *d, int len)
{
	int			off = 4;
	int32		n;

	if (len < 4)
		return "The categories are shorter than their 4-byte header.";
	memcpy(&n, d, 4);
	if (n < 0 || n > len / 42)
		return "The category count does not fit the length.";
	for (int i = 0; i < n; i++)
	{
		uint16		nl;
		int32		orders,
					wd[7];
		int64		cents;

		if (len - off < 2)
			return "The categories end inside a category.";
		memcpy(&nl, d + off, 2);
		off += 2;
		if (len - off < nl + 40)
			return "The categories end inside a category.";
		if (memchr(d + off, '\0', nl) != NULL ||
			pg_encoding_verifymbstr(GetDatabaseEncoding(), d + off, nl) != nl)
			return "A category name is not valid text in the database encoding.";
		off += nl;
		memcpy(&orders, d + off, 4);
		memcpy(&cents, d + off + 4, 8);
		memcpy(wd, d + off + 12, 28);
		off += 40;
		if (orders < 0 || cents < 0)
			return "A category has negative orders or spend.";
		for (int k = 0; k < 7; k++)
			if (wd[k] < 0)
				return "A category has negative orders on a weekday.";
	}
	if (off != len)
		return "The categories have trailing bytes.";
	return NULL;
}

/* A bad compact column: given to a function (user) or read from the table. */
static void
bad_stats(const char *problem, bool from_table)
{
	if (from_table)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid compact column in crm.customer_stats"),
				 errdetail("%s", problem),
				 errhint("Run crm.rebuild_customer_stats() to rebuild it from the orders.")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid compact column value"),
			 errdetail("%s", problem),
			 errhint("Pass the days or categories column of crm.customer_stats.")));
}

static void
days_from_bytea(CustState *st, bytea *b, bool from_table)
{
	const char *d = VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);
	const char *problem = days_problem(d, len);
	int32		n;

	if (problem != NULL)
		bad_stats(problem, from_table);
	memcpy(&st->horizon, d, 4);
	memcpy(&n, d + 4, 4);
	st->ndays = n;
	st->maxdays = Max(n, 8);
	st->days = palloc(sizeof(DayBucket) * st->maxdays);
	if (n > 0)
		memcpy(st->days, d + 8, sizeof(DayBucket) * n);
}

static int
cmp_cat(const void *a, const void *b)
{
	return strcmp(((const CatStat *) a)->name, ((const CatStat *) b)->name);
}

/* Categories are stored sorted by name, so equal contents give equal bytes. */
static bytea *
cats_to_bytea(CustState *st)
{
	StringInfoData s;
	int32		n = st->ncats;
	int			i;

	if (n > 1)
		qsort(st->cats, n, sizeof(CatStat), cmp_cat);
	initStringInfo(&s);
	appendStringInfoSpaces(&s, VARHDRSZ);
	appendBinaryStringInfo(&s, (char *) &n, 4);
	for (i = 0; i < n; i++)
	{
		const CatStat *c = &st->cats[i];
		uint16		nl = Min(strlen(c->name), PG_UINT16_MAX);

		appendBinaryStringInfo(&s, (char *) &nl, 2);
		appendBinaryStringInfo(&s, c->name, nl);
		appendBinaryStringInfo(&s, (char *) &c->orders, 4);
		appendBinaryStringInfo(&s, (char *) &c->cents, 8);
		appendBinaryStringInfo(&s, (char *) c->weekday, 28);
	}
	SET_VARSIZE(s.data, s.len);
	return (bytea *) s.data;
}

static void
cats_from_bytea(CustState *st, bytea *b, bool from_table)
{
	const char *d = VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);
	const char *problem = cats_problem(d, len);
	int			off = 4;
	int32		n;
	int			i;

	if (problem != NULL)
		bad_stats(problem, from_table);
	memcpy(&n, d, 4);
	st->ncats = n;
	st->maxcats = Max(n, 8);
	st->cats = palloc(sizeof(CatStat) * st->maxcats);
	for (i = 0; i < n; i++)
	{
		CatStat    *c = &st->cats[i];
		uint16		nl;

		memcpy(&nl, d + off, 2);
		off += 2;
		c->name = pnstrdup(d + off, nl);
		off += nl;
		memcpy(&c->orders, d + off, 4);
		memcpy(&c->cents, d + off + 4, 8);
		memcpy(c->weekday, d + off + 12, 28);
		off += 40;
		c->last_order = -1;
	}
}

/* ---------------------------------------------------------------------
 * Features, stage, tags
 * --------------------------------------------------------------------- */
/* orders and cents of the buckets in (asof_day - width, asof_day]; false if not exact */
static bool
window_sum(const CustState *st, int32 asof_day, int width, int64 *orders, int64 *cents)
{
	int			i;

	*orders = 0;
	*cents = 0;
	for (i = st->ndays - 1; i >= 0; i--)
	{
		int32		d = st->days[i].day;

		if (d > asof_day)
			continue;
		if (d <= asof_day - width)
			break;
		*orders += st->days[i].orders;
		add_cents(cents, st->days[i].cents);
	}
	return st->horizon == NO_HORIZON || asof_day - width + 1 >= st->horizon;
}

static double
days_between(TimestampTz from, TimestampTz to)
{
	return floor((double) (to - from) / (double) USECS_PER_DAY);
}

static void
compute_facts(const CustState *st, TimestampTz as_of, TagFacts *f, TagCategory *cats)
{
	int32		asof_day = crm_local_day(as_of, NULL);
	static const int widths[3] = {30, 90, 365};
	int			k;

	memset(f, 0, sizeof(TagFacts));
	f->num[TF_ORDERS] = st->orders;
	f->num[TF_REFUNDED_ORDERS] = st->refunded;
	f->num[TF_SPEND] = (double) st->cents / 100.0;
	f->num[TF_AVG_ORDER_VALUE] = st->orders > 0 ? (double) st->cents / 100.0 / st->orders : NAN;
	for (k = 0; k < 3; k++)
	{
		int64		o,
					c;

		(void) window_sum(st, asof_day, widths[k], &o, &c);
		f->num[TF_ORDERS_30D + k] = (double) o;
		f->num[TF_SPEND_30D + k] = (double) c / 100.0;
	}
	f->num[TF_DAYS_SINCE_FIRST_ORDER] = st->orders > 0 ? days_between(st->first_at, as_of) : NAN;
	f->num[TF_DAYS_SINCE_LAST_ORDER] = st->orders > 0 ? days_between(st->last_at, as_of) : NAN;
	f->num[TF_MEAN_INTERVAL_DAYS] = st->orders > 1 ?
		(double) (st->last_at - st->first_at) / (double) USECS_PER_DAY / (st->orders - 1) : NAN;
	f->num[TF_EVENTS] = st->events;
	f->num[TF_DAYS_SINCE_LAST_EVENT] = st->events > 0 ? days_between(st->last_event_at, as_of) : NAN;
	memcpy(f->weekday, st->weekday, sizeof(f->weekday));
	for (k = 0; k < st->ncats; k++)
	{
		cats[k].name = st->cats[k].name;
		cats[k].orders = st->cats[k].orders;
		cats[k].cents = st->cats[k].cents;
		memcpy(cats[k].weekday, st->cats[k].weekday, sizeof(cats[k].weekday));
		add_cents(&f->line_cents, st->cats[k].cents);
	}
	f->cats = cats;
	f->ncats = st->ncats;
}

static const char *
lifecycle_stage(const SegConfig *cfg, const CustState *st, const TagFacts *f, TimestampTz as_of)
{
	double		since_last = f->num[TF_DAYS_SINCE_LAST_ORDER];
	double		since_first = f->num[TF_DAYS_SINCE_FIRST_ORDER];
	double		o90 = f->num[TF_ORDERS_90D];
	int64		prev_orders,
				prev_cents;

	if (st->orders == 0)
		return "prospect";
	if (since_last > cfg->churned_days)
		return "churned";
	if (since_last > cfg->declining_days)
		return "declining";
	if (since_first <= cfg->new_days)
		return "new";
	/* orders in the 90 days before the last 90 */
	(void) window_sum(st, crm_local_day(as_of, NULL) - 90, 90, &prev_orders, &prev_cents);
	if (o90 >= cfg->growing_orders_90d && o90 > (double) prev_orders)
		return "growing";
	if (st->orders >= cfg->mature_orders)
		return "mature";
	return "active";
}

/* ---------------------------------------------------------------------
 * Batches
 * --------------------------------------------------------------------- */
typedef struct Batch
{
	MemoryContext cxt;
	cust_hash  *h;
	int64	   *ids;			/* customers in first-seen order */
	int			nids;
	int			maxids;
	Fact	   *facts;
	int			nfacts;
	int			maxfacts;
	bool		rebuild;
	bool		tick;			/* no facts: re-evaluate only, write stage columns only */
	TimestampTz as_of;
	int64		changed;		/* stage moves and tag changes */
} Batch;

static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_load_lock = NULL;
static SPIPlanPtr plan_golden = NULL;
static SPIPlanPtr plan_upsert = NULL;
static SPIPlanPtr plan_upsert1 = NULL;
static SPIPlanPtr plan_delete = NULL;
static SPIPlanPtr plan_stage_only = NULL;
static SPIPlanPtr plan_lock = NULL;

/* Generic plans: "= ANY ($1)" must not be re-planned for every batch. */
static SPIPlanPtr
prepare(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	return crm_prepare_kept(slot, sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

static Datum
int8_array(const int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
datum_array(Datum *d, bool *nulls, int n, Oid type)
{
	int16		len;
	bool		byval;
	char		align;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &len, &byval, &align);
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, type, len, byval, align));
}

static void
batch_reset(Batch *b)
{
	MemoryContextReset(b->cxt);
	/* small to start with: most statements insert one order */
	b->h = cust_create(b->cxt, 16, NULL);
	b->maxids = 16;
	b->ids = MemoryContextAlloc(b->cxt, sizeof(int64) * b->maxids);
	b->nids = 0;
	b->maxfacts = 16;
	b->facts = MemoryContextAlloc(b->cxt, sizeof(Fact) * b->maxfacts);
	b->nfacts = 0;
}

static void
batch_add_fact(Batch *b, const Fact *f)
{
	bool		found;
	CustState  *st;

	if (b->nfacts == b->maxfacts)
	{
		b->maxfacts *= 2;
		b->facts = repalloc(b->facts, sizeof(Fact) * b->maxfacts);
	}
	b->facts[b->nfacts++] = *f;
	st = cust_insert(b->h, f->cust, &found);
	if (!found)
	{
		char		status = st->status;

		memset(st, 0, sizeof(CustState));
		st->customer_id = f->cust;
		st->status = status;
		st->golden = true;
		st->horizon = NO_HORIZON;
		if (b->nids == b->maxids)
		{
			b->maxids *= 2;
			b->ids = repalloc(b->ids, sizeof(int64) * b->maxids);
		}
		b->ids[b->nids++] = f->cust;
	}
}

/* Current rule tags of a customer from an int4[] (NULL: none). */
static void
state_tags(Batch *b, CustState *st, Datum d, bool isnull)
{
	ArrayType  *a;
	int			n;

	if (isnull)
		return;
	a = DatumGetArrayTypeP(d);
	if (ARR_NDIM(a) != 1 || ARR_HASNULL(a) || ARR_ELEMTYPE(a) != INT4OID)
		return;
	n = ARR_DIMS(a)[0];
	st->tags = MemoryContextAlloc(b->cxt, sizeof(int32) * Max(n, 1));
	memcpy(st->tags, ARR_DATA_PTR(a), sizeof(int32) * n);
	st->ntags = n;
}

#define STATS_COLUMNS \
	"SELECT s.customer_id, s.orders, s.refunded_orders, s.spend, s.first_order_at, " \
	"s.last_order_at, s.weekday_orders, s.events, s.last_event_at, s.days, " \
	"s.categories, s.stage, s.stage_since, " \
	"ARRAY(SELECT ct.tag_id FROM crm.customer_tag ct JOIN crm.tag t ON t.tag_id OPERATOR(pg_catalog.=) ct.tag_id " \
	"      AND t.kind OPERATOR(pg_catalog.=) 'rule' WHERE ct.customer_id OPERATOR(pg_catalog.=) s.customer_id) " \
	"FROM crm.customer_stats s WHERE s.customer_id OPERATOR(pg_catalog.=) ANY ($1)"

/* Fold the rows of a STATS_COLUMNS query into the batch's states. */
static void
read_stats_rows(Batch *b)
{
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		CustState  *st = cust_lookup(b->h, DatumGetInt64(SPI_getbinval(tup, td, 1, &isnull)));
		MemoryContext old;
		Datum		d;

		if (st == NULL || st->existed)
			continue;
		old = MemoryContextSwitchTo(b->cxt);
		st->existed = true;
		st->orders = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
		st->refunded = DatumGetInt32(SPI_getbinval(tup, td, 3, &isnull));
		st->cents = crm_numeric_to_cents(SPI_getbinval(tup, td, 4, &isnull));
		d = SPI_getbinval(tup, td, 5, &isnull);
		st->first_at = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, td, 6, &isnull);
		st->last_at = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, td, 7, &isnull);
		if (!isnull)
		{
			ArrayType  *a = DatumGetArrayTypeP(d);

			if (ARR_NDIM(a) != 1 || ARR_DIMS(a)[0] != 7 || ARR_HASNULL(a) || ARR_ELEMTYPE(a) != INT4OID)
				bad_stats("weekday_orders is not an array of 7 integers.", true);
			memcpy(st->weekday, ARR_DATA_PTR(a), sizeof(int32) * 7);
		}
		st->events = DatumGetInt32(SPI_getbinval(tup, td, 8, &isnull));
		d = SPI_getbinval(tup, td, 9, &isnull);
		st->last_event_at = isnull ? 0 : DatumGetTimestampTz(d);
		days_from_bytea(st, DatumGetByteaPP(SPI_getbinval(tup, td, 10, &isnull)), true);
		cats_from_bytea(st, DatumGetByteaPP(SPI_getbinval(tup, td, 11, &isnull)), true);
		st->stage = TextDatumGetCString(SPI_getbinval(tup, td, 12, &isnull));
		st->stage_since = DatumGetTimestampTz(SPI_getbinval(tup, td, 13, &isnull));
		d = SPI_getbinval(tup, td, 14, &isnull);
		state_tags(b, st, d, isnull);
		MemoryContextSwitchTo(old);
	}
}

/*
 * Read the stored state of the batch's customers.
 *
 * Two transactions folding orders of one customer in at once would both
 * read the old row, and the second upsert would undo the first.  So the
 * trigger reads existing stats rows FOR UPDATE: in READ COMMITTED a row
 * another transaction changed is waited for and re-read in its committed
 * version.  Customers without a stats row yet have nothing to lock: their
 * customer records are locked instead (FOR NO KEY UPDATE, in id order, which
 * does not conflict with foreign-key checks) and their stats read again
 * with a fresh snapshot, which sees a row another transaction created
 * meanwhile.  A tick writes only stage columns and tag diffs: no locks.
 */
static void
batch_load(Batch *b)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1];
	int			i,
				nmissing = 0;
	int64	   *missing;

	args[0] = int8_array(b->ids, b->nids);
	if (b->rebuild)
	{
		uint64		k;

		/* a rebuild starts from nothing, but keeps the stage and knows who is golden */
		if (SPI_execute_plan(prepare(&plan_lock,
									 "SELECT c.customer_id FROM crm.customer c "
									 "WHERE c.customer_id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY 1 FOR NO KEY UPDATE",
									 1, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not lock customers");
		if (SPI_execute_plan(prepare(&plan_golden,
									 "SELECT c.customer_id, c.merged_into IS NULL, s.stage, s.stage_since, "
									 "ARRAY(SELECT ct.tag_id FROM crm.customer_tag ct JOIN crm.tag t ON t.tag_id OPERATOR(pg_catalog.=) ct.tag_id "
									 "      AND t.kind OPERATOR(pg_catalog.=) 'rule' WHERE ct.customer_id OPERATOR(pg_catalog.=) c.customer_id) "
									 "FROM crm.customer c LEFT JOIN crm.customer_stats s ON s.customer_id OPERATOR(pg_catalog.=) c.customer_id "
									 "WHERE c.customer_id OPERATOR(pg_catalog.=) ANY ($1)",
									 1, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crm.customer");
		for (k = 0; k < SPI_processed; k++)
		{
			HeapTuple	tup = SPI_tuptable->vals[k];
			TupleDesc	td = SPI_tuptable->tupdesc;
			bool		isnull;
			CustState  *st = cust_lookup(b->h, DatumGetInt64(SPI_getbinval(tup, td, 1, &isnull)));
			Datum		d;

			if (st == NULL)
				continue;
			st->golden = DatumGetBool(SPI_getbinval(tup, td, 2, &isnull));
			d = SPI_getbinval(tup, td, 3, &isnull);
			if (!isnull)
			{
				st->existed = true;
				st->stage = MemoryContextStrdup(b->cxt, TextDatumGetCString(d));
				st->stage_since = DatumGetTimestampTz(SPI_getbinval(tup, td, 4, &isnull));
			}
			d = SPI_getbinval(tup, td, 5, &isnull);
			state_tags(b, st, d, isnull);
			st->dirty = true;
		}
		return;
	}

	if (b->tick)
	{
		if (SPI_execute_plan(prepare(&plan_load, STATS_COLUMNS, 1, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crm.customer_stats");
		read_stats_rows(b);
		return;
	}

	if (SPI_execute_plan(prepare(&plan_load_lock, STATS_COLUMNS " ORDER BY 1 FOR UPDATE OF s", 1, types),
						 args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer_stats");
	read_stats_rows(b);
	missing = palloc(sizeof(int64) * b->nids);
	for (i = 0; i < b->nids; i++)
		if (!cust_lookup(b->h, b->ids[i])->existed)
			missing[nmissing++] = b->ids[i];
	if (nmissing > 0)
	{
		args[0] = int8_array(missing, nmissing);
		if (SPI_execute_plan(prepare(&plan_lock,
									 "SELECT c.customer_id FROM crm.customer c "
									 "WHERE c.customer_id OPERATOR(pg_catalog.=) ANY ($1) ORDER BY 1 FOR NO KEY UPDATE",
									 1, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not lock customers");
		if (SPI_execute_plan(prepare(&plan_load_lock, STATS_COLUMNS " ORDER BY 1 FOR UPDATE OF s", 1, types),
							 args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crm.customer_stats");
		read_stats_rows(b);
	}
	pfree(missing);
}

/* Growable parallel arrays for the batch writes. */
typedef struct Cols
{
	int			n;
	int			max;
	Datum	   *v[16];
	bool	   *nulls[16];
} Cols;

static void
cols_init(Cols *c, int ncols, int max)
{
	int			i;

	c->n = 0;
	c->max = max;
	for (i = 0; i < ncols; i++)
	{
		c->v[i] = palloc(sizeof(Datum) * max);
		c->nulls[i] = palloc0(sizeof(bool) * max);
	}
}

static int
cols_row(Cols *c, int ncols)
{
	int			i;

	if (c->n == c->max)
	{
		c->max *= 2;
		for (i = 0; i < ncols; i++)
		{
			c->v[i] = repalloc(c->v[i], sizeof(Datum) * c->max);
			c->nulls[i] = repalloc(c->nulls[i], sizeof(bool) * c->max);
			memset(c->nulls[i] + c->max / 2, 0, sizeof(bool) * (c->max / 2));
		}
	}
	return c->n++;
}

#define UPSERT_COLS 15

static void
batch_finish(Batch *b)
{
	SegConfig  *cfg = seg_config();
	Cols		up,
				stonly,
				del,
				tadd,
				tdrop,
				stg;
	int			i;
	TagCategory *cats = NULL;
	int			maxcats = 0;
	bool	   *newtag = palloc(sizeof(bool) * Max(cfg->nrules, 1));

	cols_init(&up, UPSERT_COLS, b->nids);
	cols_init(&del, 1, 4);
	cols_init(&stonly, 2, 4);
	cols_init(&tadd, 2, 4);
	cols_init(&tdrop, 2, 4);
	cols_init(&stg, 3, 4);

	for (i = 0; i < b->nids; i++)
	{
		CustState  *st = cust_lookup(b->h, b->ids[i]);
		TagFacts	f;
		const char *stage;
		bool		has_any = st->orders > 0 || st->refunded > 0 || st->events > 0;
		int			k,
					r;

		CHECK_FOR_INTERRUPTS();
		if (!st->golden || (b->rebuild && !has_any))
		{
			/* no state of its own (merged away, or nothing left): drop it */
			if (st->existed || st->ntags > 0)
			{
				r = cols_row(&del, 1);
				del.v[0][r] = Int64GetDatum(st->customer_id);
				for (k = 0; k < st->ntags; k++)
				{
					r = cols_row(&tdrop, 2);
					tdrop.v[0][r] = Int64GetDatum(st->customer_id);
					tdrop.v[1][r] = Int32GetDatum(st->tags[k]);
					b->changed++;
				}
			}
			continue;
		}
		if (st->ncats > maxcats)
		{
			maxcats = st->ncats * 2;
			cats = cats ? repalloc(cats, sizeof(TagCategory) * maxcats) : palloc(sizeof(TagCategory) * maxcats);
		}
		compute_facts(st, b->as_of, &f, cats);
		stage = lifecycle_stage(cfg, st, &f, b->as_of);
		if (st->stage == NULL || strcmp(st->stage, stage) != 0)
		{
			r = cols_row(&stg, 3);
			stg.v[0][r] = Int64GetDatum(st->customer_id);
			stg.v[1][r] = CStringGetTextDatum(st->stage ? st->stage : "prospect");
			stg.v[2][r] = CStringGetTextDatum(stage);
			if (st->stage != NULL || strcmp(stage, "prospect") != 0)
				b->changed++;
			else
				stg.n--;		/* prospect -> prospect: nothing moved */
			st->stage = (char *) stage;
			st->stage_since = b->as_of;
			if (b->tick && st->existed && !st->dirty)
			{
				r = cols_row(&stonly, 2);
				stonly.v[0][r] = Int64GetDatum(st->customer_id);
				stonly.v[1][r] = CStringGetTextDatum(stage);
			}
			else
				st->dirty = true;
		}
		f.stage = stage;

		/* rule tags: evaluate, then diff with the current ones */
		for (k = 0; k < cfg->nrules; k++)
			newtag[k] = tag_program_eval(cfg->rules[k].prog, &f);
		for (k = 0; k < cfg->nrules; k++)
		{
			bool		had = false;
			int			j;

			for (j = 0; j < st->ntags; j++)
				if (st->tags[j] == cfg->rules[k].tag_id)
					had = true;
			if (newtag[k] && !had)
			{
				r = cols_row(&tadd, 2);
				tadd.v[0][r] = Int64GetDatum(st->customer_id);
				tadd.v[1][r] = Int32GetDatum(cfg->rules[k].tag_id);
				b->changed++;
			}
		}
		for (k = 0; k < st->ntags; k++)
		{
			bool		keep = false;
			int			j;

			for (j = 0; j < cfg->nrules; j++)
				if (cfg->rules[j].tag_id == st->tags[k])
					keep = newtag[j];
			if (!keep)
			{
				r = cols_row(&tdrop, 2);
				tdrop.v[0][r] = Int64GetDatum(st->customer_id);
				tdrop.v[1][r] = Int32GetDatum(st->tags[k]);
				b->changed++;
			}
		}

		if (st->dirty || !st->existed)
		{
			r = cols_row(&up, UPSERT_COLS);
			up.v[0][r] = Int64GetDatum(st->customer_id);
			up.v[1][r] = Int32GetDatum(st->orders);
			up.v[2][r] = Int32GetDatum(st->refunded);
			up.v[3][r] = crm_cents_to_numeric(st->cents);
			up.v[4][r] = TimestampTzGetDatum(st->first_at);
			up.nulls[4][r] = st->orders == 0;
			up.v[5][r] = TimestampTzGetDatum(st->last_at);
			up.nulls[5][r] = st->orders == 0;
			up.v[6][r] = Float8GetDatum(f.num[TF_MEAN_INTERVAL_DAYS]);
			up.nulls[6][r] = st->orders < 2;
			/* as text: unnest cannot return one int[] per row */
			{
				StringInfoData s;

				initStringInfo(&s);
				appendStringInfo(&s, "{%d,%d,%d,%d,%d,%d,%d}", st->weekday[0], st->weekday[1],
								 st->weekday[2], st->weekday[3], st->weekday[4], st->weekday[5],
								 st->weekday[6]);
				up.v[7][r] = CStringGetTextDatum(s.data);
			}
			up.v[8][r] = Int32GetDatum(st->events);
			up.v[9][r] = TimestampTzGetDatum(st->last_event_at);
			up.nulls[9][r] = st->events == 0;
			up.v[10][r] = PointerGetDatum(days_to_bytea(st));
			up.v[11][r] = PointerGetDatum(cats_to_bytea(st));
			up.v[12][r] = Int64GetDatum(f.line_cents);
			up.v[13][r] = CStringGetTextDatum(st->stage);
			up.v[14][r] = TimestampTzGetDatum(st->stage_since);
		}
	}

	/*
	 * Stats rows, tag changes with their history, and stage moves: one
	 * statement with data-modifying CTEs, so a batch costs one round trip.
	 */
	if (up.n == 1 && tdrop.n + tadd.n + stg.n == 0)
	{
		/* one customer and nothing else: a single-row upsert is much cheaper to start */
		Oid			types[UPSERT_COLS] = {INT8OID, INT4OID, INT4OID, NUMERICOID, TIMESTAMPTZOID,
			TIMESTAMPTZOID, FLOAT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, BYTEAOID, BYTEAOID, INT8OID,
		TEXTOID, TIMESTAMPTZOID};
		Datum		args[UPSERT_COLS];
		char		nulls[UPSERT_COLS];

		for (i = 0; i < UPSERT_COLS; i++)
		{
			args[i] = up.v[i][0];
			nulls[i] = up.nulls[i][0] ? 'n' : ' ';
		}
		if (SPI_execute_plan(prepare(&plan_upsert1,
									 "INSERT INTO crm.customer_stats AS s (customer_id, orders, refunded_orders, spend, "
									 "first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, "
									 "days, categories, line_spend, stage, stage_since, updated_at) "
									 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::pg_catalog.int4[], $9, $10, $11, $12, "
									 "($13::pg_catalog.numeric OPERATOR(pg_catalog./) 100)::pg_catalog.numeric(20,2), $14, $15, pg_catalog.now()) "
									 "ON CONFLICT (customer_id) DO UPDATE SET orders = EXCLUDED.orders, "
									 "refunded_orders = EXCLUDED.refunded_orders, spend = EXCLUDED.spend, "
									 "first_order_at = EXCLUDED.first_order_at, last_order_at = EXCLUDED.last_order_at, "
									 "mean_interval_days = EXCLUDED.mean_interval_days, weekday_orders = EXCLUDED.weekday_orders, "
									 "events = EXCLUDED.events, last_event_at = EXCLUDED.last_event_at, days = EXCLUDED.days, "
									 "categories = EXCLUDED.categories, line_spend = EXCLUDED.line_spend, stage = EXCLUDED.stage, "
									 "stage_since = EXCLUDED.stage_since, updated_at = EXCLUDED.updated_at",
									 UPSERT_COLS, types), args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write crm.customer_stats");
	}
	else if (up.n + tdrop.n + tadd.n + stg.n > 0)
	{
#define WRITE_ARGS (UPSERT_COLS + 8)
		Oid			types[WRITE_ARGS] = {INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, NUMERICARRAYOID,
			TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
			TIMESTAMPTZARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
			INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZOID,
		INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
		Oid			elem[UPSERT_COLS] = {INT8OID, INT4OID, INT4OID, NUMERICOID, TIMESTAMPTZOID,
			TIMESTAMPTZOID, FLOAT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, BYTEAOID, BYTEAOID, INT8OID,
		TEXTOID, TIMESTAMPTZOID};
		Datum		args[WRITE_ARGS];

		for (i = 0; i < UPSERT_COLS; i++)
			args[i] = datum_array(up.v[i], up.nulls[i], up.n, elem[i]);
		args[15] = datum_array(tdrop.v[0], tdrop.nulls[0], tdrop.n, INT8OID);
		args[16] = datum_array(tdrop.v[1], tdrop.nulls[1], tdrop.n, INT4OID);
		args[17] = datum_array(tadd.v[0], tadd.nulls[0], tadd.n, INT8OID);
		args[18] = datum_array(tadd.v[1], tadd.nulls[1], tadd.n, INT4OID);
		args[19] = TimestampTzGetDatum(b->as_of);
		args[20] = datum_array(stg.v[0], stg.nulls[0], stg.n, INT8OID);
		args[21] = datum_array(stg.v[1], stg.nulls[1], stg.n, TEXTOID);
		args[22] = datum_array(stg.v[2], stg.nulls[2], stg.n, TEXTOID);
		if (SPI_execute_plan(prepare(&plan_upsert,
									 "WITH up AS (INSERT INTO crm.customer_stats AS s (customer_id, orders, refunded_orders, spend, "
									 "first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, "
									 "days, categories, line_spend, stage, stage_since, updated_at) "
									 "SELECT u.c, u.o, u.r, u.sp, u.fa, u.la, u.mi, u.wd::pg_catalog.int4[], u.ev, u.le, "
									 "u.dy, u.ca, (u.lc::pg_catalog.numeric OPERATOR(pg_catalog./) 100)::pg_catalog.numeric(20,2), u.st, u.ss, pg_catalog.now() "
									 "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), pg_catalog.unnest($14), pg_catalog.unnest($15)) "
									 "AS u(c, o, r, sp, fa, la, mi, wd, ev, le, dy, ca, lc, st, ss) "
									 "ON CONFLICT (customer_id) DO UPDATE SET orders = EXCLUDED.orders, "
									 "refunded_orders = EXCLUDED.refunded_orders, spend = EXCLUDED.spend, "
									 "first_order_at = EXCLUDED.first_order_at, last_order_at = EXCLUDED.last_order_at, "
									 "mean_interval_days = EXCLUDED.mean_interval_days, weekday_orders = EXCLUDED.weekday_orders, "
									 "events = EXCLUDED.events, last_event_at = EXCLUDED.last_event_at, days = EXCLUDED.days, "
									 "categories = EXCLUDED.categories, line_spend = EXCLUDED.line_spend, stage = EXCLUDED.stage, "
									 "stage_since = EXCLUDED.stage_since, updated_at = EXCLUDED.updated_at RETURNING 1), "
									 "d AS (DELETE FROM crm.customer_tag ct USING ROWS FROM (pg_catalog.unnest($16), pg_catalog.unnest($17)) AS u(c, t) "
									 "WHERE ct.customer_id OPERATOR(pg_catalog.=) u.c AND ct.tag_id OPERATOR(pg_catalog.=) u.t "
									 "RETURNING ct.customer_id, ct.tag_id), "
									 "a AS (INSERT INTO crm.customer_tag (customer_id, tag_id, since) "
									 "SELECT u.c, u.t, $20 FROM ROWS FROM (pg_catalog.unnest($18), pg_catalog.unnest($19)) AS u(c, t) "
									 "ON CONFLICT DO NOTHING RETURNING customer_id, tag_id), "
									 "h AS (INSERT INTO crm.customer_tag_history (customer_id, tag_id, change, at) "
									 "SELECT d.customer_id, d.tag_id, 'leave', $20 FROM d "
									 "UNION ALL SELECT a.customer_id, a.tag_id, 'enter', $20 FROM a RETURNING 1), "
									 "tr AS (INSERT INTO crm.lifecycle_transition (customer_id, from_stage, to_stage, at) "
									 "SELECT u.c, u.f, u.t, $20 FROM ROWS FROM (pg_catalog.unnest($21), pg_catalog.unnest($22), pg_catalog.unnest($23)) AS u(c, f, t) "
									 "RETURNING 1) "
									 "SELECT (SELECT pg_catalog.count(*) FROM up), (SELECT pg_catalog.count(*) FROM h), "
									 "(SELECT pg_catalog.count(*) FROM tr)",
									 WRITE_ARGS, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not write crm.customer_stats");
	}
	if (stonly.n > 0)
	{
		Oid			types[3] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};
		Datum		args[3] = {datum_array(stonly.v[0], stonly.nulls[0], stonly.n, INT8OID),
			datum_array(stonly.v[1], stonly.nulls[1], stonly.n, TEXTOID),
		TimestampTzGetDatum(b->as_of)};

		if (SPI_execute_plan(prepare(&plan_stage_only,
									 "UPDATE crm.customer_stats s SET stage = u.st, stage_since = $3 "
									 "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(c, st) "
									 "WHERE s.customer_id OPERATOR(pg_catalog.=) u.c",
									 3, types), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not write lifecycle stages");
	}
	if (del.n > 0)
	{
		Oid			types[1] = {INT8ARRAYOID};
		Datum		args[1] = {datum_array(del.v[0], del.nulls[0], del.n, INT8OID)};

		if (SPI_execute_plan(prepare(&plan_delete,
									 "DELETE FROM crm.customer_stats s WHERE s.customer_id OPERATOR(pg_catalog.=) ANY ($1)",
									 1, types), args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not delete from crm.customer_stats");
	}
}

static void
batch_flush(Batch *b)
{
	int			i;

	if (b->nids == 0)
		return;
	batch_load(b);
	for (i = 0; i < b->nfacts; i++)
	{
		CustState  *st = cust_lookup(b->h, b->facts[i].cust);
		MemoryContext old = MemoryContextSwitchTo(b->cxt);

		apply_fact(st, &b->facts[i]);
		MemoryContextSwitchTo(old);
	}
	batch_finish(b);
	batch_reset(b);
}

static int
cmp_fact(const void *a, const void *b)
{
	const Fact *x = (const Fact *) a;
	const Fact *y = (const Fact *) b;

	if (x->cust != y->cust)
		return x->cust < y->cust ? -1 : 1;
	if (x->order_id != y->order_id)
		return x->order_id < y->order_id ? -1 : 1;
	return 0;
}

/*
 * Small inserts into crm.orders or crm.event (most statements insert one
 * row): read the transition table directly instead of through a query.
 */
#define DIRECT_MAX_ROWS 1000

static void
direct_facts(TriggerData *td, bool orders, TimestampTz as_of)
{
	Tuplestorestate *ts = td->tg_newtable;
	Relation	rel = td->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			n = (int) tuplestore_tuple_count(ts);
	Fact	   *facts = palloc(sizeof(Fact) * Max(n, 1));
	int			k = 0,
				i;
	int			a_cust = SPI_fnumber(desc, "customer_id");
	int			a_at = SPI_fnumber(desc, orders ? "ordered_at" : "at");
	int			a_status = orders ? SPI_fnumber(desc, "status") : 0;
	int			a_net = orders ? SPI_fnumber(desc, "net_amount") : 0;
	int			a_id = SPI_fnumber(desc, orders ? "order_id" : "event_id");
	Batch		b;

	if (a_cust <= 0 || a_at <= 0 || a_id <= 0 || (orders && (a_status <= 0 || a_net <= 0)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() is missing columns of \"%s\"",
						RelationGetRelationName(rel))));
	tuplestore_rescan(ts);
	while (k < n && tuplestore_gettupleslot(ts, true, false, slot))
	{
		Fact	   *f = &facts[k];
		bool		isnull;
		Datum		d;

		memset(f, 0, sizeof(Fact));
		f->cust = DatumGetInt64(slot_getattr(slot, a_cust, &isnull));
		f->at = DatumGetTimestampTz(slot_getattr(slot, a_at, &isnull));
		f->order_id = DatumGetInt64(slot_getattr(slot, a_id, &isnull));
		if (orders)
		{
			text	   *status;

			f->kind = FACT_ORDER;
			d = slot_getattr(slot, a_status, &isnull);
			status = DatumGetTextPP(d);
			f->paid = !isnull && VARSIZE_ANY_EXHDR(status) == 4 &&
				memcmp(VARDATA_ANY(status), "paid", 4) == 0;
			d = slot_getattr(slot, a_net, &isnull);
			f->cents = isnull ? 0 : crm_numeric_to_cents(d);
			f->count = 1;
		}
		else
		{
			f->kind = FACT_EVENTS;
			f->paid = true;
			f->count = 1;
		}
		k++;
	}
	ExecDropSingleTupleTableSlot(slot);
	if (k > 1)
		qsort(facts, k, sizeof(Fact), cmp_fact);

	memset(&b, 0, sizeof(b));
	b.cxt = AllocSetContextCreate(CurrentMemoryContext, "crm stats batch", ALLOCSET_DEFAULT_SIZES);
	b.as_of = as_of;
	batch_reset(&b);
	for (i = 0; i < k; i++)
		batch_add_fact(&b, &facts[i]);
	batch_flush(&b);
	MemoryContextDelete(b.cxt);
	pfree(facts);
}

/*
 * Run a fact query (columns as described at the top of the file, ordered by
 * customer_id) and fold its rows in, batch by batch.  Must be called inside
 * SPI.  Returns the number of stage moves and tag changes.
 */
static int64
process_facts(SPIPlanPtr plan, Datum *args, bool rebuild, bool tick, TimestampTz as_of)
{
	Batch		b;
	Portal		portal;
	int64		prev = PG_INT64_MIN;

	memset(&b, 0, sizeof(b));
	b.cxt = AllocSetContextCreate(CurrentMemoryContext, "crm stats batch", ALLOCSET_DEFAULT_SIZES);
	b.rebuild = rebuild;
	b.tick = tick;
	b.as_of = as_of;
	batch_reset(&b);
	(void) seg_config();

	portal = SPI_cursor_open(NULL, plan, args, NULL, false);
	for (;;)
	{
		uint64		i,
					n;
		SPITupleTable *tt;

		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		tt = SPI_tuptable;
		n = SPI_processed;
		for (i = 0; i < n; i++)
		{
			HeapTuple	tup = tt->vals[i];
			TupleDesc	td = tt->tupdesc;
			bool		isnull;
			Fact		f;
			Datum		d;

			f.cust = DatumGetInt64(SPI_getbinval(tup, td, 1, &isnull));
			if (f.cust != prev && b.nids >= BATCH_CUSTOMERS)
				batch_flush(&b);
			prev = f.cust;
			f.kind = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
			d = SPI_getbinval(tup, td, 3, &isnull);
			f.at = isnull ? 0 : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, td, 4, &isnull);
			f.paid = isnull ? false : DatumGetBool(d);
			d = SPI_getbinval(tup, td, 5, &isnull);
			f.cents = isnull ? 0 : crm_numeric_to_cents(d);
			d = SPI_getbinval(tup, td, 6, &isnull);
			f.order_id = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, td, 7, &isnull);
			f.category = isnull ? NULL : MemoryContextStrdup(b.cxt, TextDatumGetCString(d));
			d = SPI_getbinval(tup, td, 8, &isnull);
			f.count = isnull ? 0 : DatumGetInt64(d);
			if (f.kind == FACT_LINE && f.category == NULL)
				continue;
			batch_add_fact(&b, &f);
		}
		SPI_freetuptable(tt);
	}
	SPI_cursor_close(portal);
	batch_flush(&b);
	MemoryContextDelete(b.cxt);
	return b.changed;
}

/*
 * Fact queries, prepared once per backend and kept (the trigger's queries
 * name its transition tables, so they are keyed by their text).
 */
#define N_FACT_PLANS 16
static struct
{
	char	   *sql;
	SPIPlanPtr	plan;
}			fact_plans[N_FACT_PLANS];

static SPIPlanPtr
fact_plan(const char *sql, int nargs, Oid *types)
{
	int			i;
	SPIPlanPtr	p;

	for (i = 0; i < N_FACT_PLANS && fact_plans[i].sql != NULL; i++)
		if (strcmp(fact_plans[i].sql, sql) == 0)
			return crm_prepare_kept(&fact_plans[i].plan, sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
	if (i == N_FACT_PLANS)
	{
		/* cache full: use once */
		p = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		return p;
	}
	fact_plans[i].sql = MemoryContextStrdup(TopMemoryContext, sql);
	return crm_prepare_kept(&fact_plans[i].plan, sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

/* The fact query rebuilding customers = ANY($1) from their data. */
static const char *rebuild_sql =
"SELECT o.customer_id, 0, o.ordered_at, o.status OPERATOR(pg_catalog.=) 'paid', o.net_amount, o.order_id, NULL::pg_catalog.text, 1::pg_catalog.int8 "
"FROM crm.orders o WHERE o.customer_id OPERATOR(pg_catalog.=) ANY ($1) "
"UNION ALL "
"SELECT o.customer_id, 1, o.ordered_at, true, l.amount, l.order_id, l.category, 1 "
"FROM crm.order_line l JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
"WHERE o.customer_id OPERATOR(pg_catalog.=) ANY ($1) AND o.status OPERATOR(pg_catalog.=) 'paid' "
"UNION ALL "
"SELECT e.customer_id, 2, pg_catalog.max(e.at), true, NULL, NULL, NULL, pg_catalog.count(*) "
"FROM crm.event e WHERE e.customer_id OPERATOR(pg_catalog.=) ANY ($1) GROUP BY e.customer_id "
"UNION ALL "
"SELECT u.c, 3, NULL, NULL, NULL, NULL, NULL, NULL FROM pg_catalog.unnest($1) AS u(c) "
"ORDER BY 1, 2, 6";

static int64
rebuild_customers(Datum ids, TimestampTz as_of)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1] = {ids};

	return process_facts(fact_plan(rebuild_sql, 1, types), args, true, false, as_of);
}

/* ---------------------------------------------------------------------
 * The triggers
 * --------------------------------------------------------------------- */
typedef enum Source
{
	SRC_ORDERS,
	SRC_LINES,
	SRC_EVENTS
} Source;

PG_FUNCTION_INFO_V1(crm_customer_stats_trigger);

/*
 * crm.customer_stats_trigger() RETURNS trigger
 *		AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT on crm.orders,
 *		crm.order_line, crm.event, with transition tables.
 */
Datum
crm_customer_stats_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *relname;
	Source		src;
	Trigger    *tg;
	StringInfoData sql;
	TimestampTz as_of;

	(void) crm_check_trigger(fcinfo, "crm.customer_stats_trigger()", CRM_TG_AFTER, CRM_TG_STATEMENT,
							 CRM_TG_INSERT | CRM_TG_UPDATE | CRM_TG_DELETE, -1);
	tg = td->tg_trigger;
	relname = RelationGetRelationName(td->tg_relation);
	if (get_rel_namespace(RelationGetRelid(td->tg_relation)) != get_namespace_oid("crm", false))
		relname = "";
	if (strcmp(relname, "orders") == 0)
		src = SRC_ORDERS;
	else if (strcmp(relname, "order_line") == 0)
		src = SRC_LINES;
	else if (strcmp(relname, "event") == 0)
		src = SRC_EVENTS;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() works on crm.orders, crm.order_line and crm.event only")));
	if ((TRIGGER_FIRED_BY_INSERT(td->tg_event) && tg->tgnewtable == NULL) ||
		(TRIGGER_FIRED_BY_UPDATE(td->tg_event) && (tg->tgnewtable == NULL || tg->tgoldtable == NULL)) ||
		(TRIGGER_FIRED_BY_DELETE(td->tg_event) && tg->tgoldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() needs the transition tables of its event")));

	as_of = crm_seg_now();
	SPI_connect();
	crm_kept_plans_check();
	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register transition tables");
	initStringInfo(&sql);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event) && src != SRC_LINES &&
		tuplestore_tuple_count(td->tg_newtable) <= DIRECT_MAX_ROWS)
		direct_facts(td, src == SRC_ORDERS, as_of);
	else if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		const char *nt = quote_identifier(tg->tgnewtable);

		if (src == SRC_ORDERS)
			appendStringInfo(&sql,
							 "SELECT n.customer_id, 0, n.ordered_at, n.status OPERATOR(pg_catalog.=) 'paid', n.net_amount, "
							 "n.order_id, NULL::pg_catalog.text, 1::pg_catalog.int8 FROM %s n ORDER BY 1", nt);
		else if (src == SRC_LINES)
			appendStringInfo(&sql,
							 "SELECT o.customer_id, 1, o.ordered_at, true, l.amount, l.order_id, l.category, 1::pg_catalog.int8 "
							 "FROM %s l JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
							 "WHERE o.status OPERATOR(pg_catalog.=) 'paid' ORDER BY 1, 6", nt);
		else
			appendStringInfo(&sql,
							 "SELECT n.customer_id, 2, pg_catalog.max(n.at), true, NULL::pg_catalog.numeric, NULL::pg_catalog.int8, "
							 "NULL::pg_catalog.text, pg_catalog.count(*) FROM %s n GROUP BY 1 ORDER BY 1", nt);
		(void) process_facts(fact_plan(sql.data, 0, NULL), NULL, false, false, as_of);
	}
	else
	{
		/* updates and deletes: rebuild every customer concerned */
		const char *ot = quote_identifier(tg->tgoldtable);
		Datum		ids;
		bool		isnull;

		if (src == SRC_LINES)
		{
			appendStringInfo(&sql,
							 "SELECT pg_catalog.array_agg(DISTINCT o.customer_id) FROM crm.orders o "
							 "WHERE o.order_id OPERATOR(pg_catalog.=) ANY (SELECT x.order_id FROM %s x", ot);
			if (tg->tgnewtable)
				appendStringInfo(&sql, " UNION ALL SELECT y.order_id FROM %s y", quote_identifier(tg->tgnewtable));
			appendStringInfoString(&sql, ")");
		}
		else
		{
			appendStringInfo(&sql, "SELECT pg_catalog.array_agg(DISTINCT u.customer_id) FROM (SELECT x.customer_id FROM %s x", ot);
			if (tg->tgnewtable)
				appendStringInfo(&sql, " UNION ALL SELECT y.customer_id FROM %s y", quote_identifier(tg->tgnewtable));
			appendStringInfoString(&sql, ") u");
		}
		if (SPI_execute(sql.data, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not collect customers");
		ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
		{
			ids = PointerGetDatum(DatumGetArrayTypePCopy(ids));
			(void) rebuild_customers(ids, as_of);
		}
	}
	SPI_finish();
	PG_RETURN_POINTER(NULL);
}

PG_FUNCTION_INFO_V1(crm_rebuild_customer_stats);

/*
 * crm.rebuild_customer_stats(customers bigint[] DEFAULT NULL, at timestamptz DEFAULT NULL)
 *		Rebuild stats, stage and tags of the given customers (all customer
 *		records when NULL) from their orders, lines and events, as of "at"
 *		(NULL: crm.segmentation_now()).
 */
Datum
crm_rebuild_customer_stats(PG_FUNCTION_ARGS)
{
	TimestampTz at;
	int64		n;

	at = PG_ARGISNULL(1) ? crm_seg_now() : PG_GETARG_TIMESTAMPTZ(1);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite time")));
	SPI_connect();
	crm_kept_plans_check();
	if (PG_ARGISNULL(0))
	{
		bool		isnull;
		Datum		ids;

		if (SPI_execute("SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id) FROM crm.customer c",
						false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read crm.customer");
		ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		n = isnull ? 0 : rebuild_customers(PointerGetDatum(DatumGetArrayTypePCopy(ids)), at);
	}
	else
		n = rebuild_customers(PG_GETARG_DATUM(0), at);
	SPI_finish();
	PG_RETURN_INT64(n);
}

int64
customer_stats_tick(TimestampTz at)
{
	int64		n;

	SPI_connect();
	crm_kept_plans_check();
	n = process_facts(fact_plan("SELECT s.customer_id, 3, NULL::pg_catalog.timestamptz, NULL::pg_catalog.bool, "
								"NULL::pg_catalog.numeric, NULL::pg_catalog.int8, NULL::pg_catalog.text, NULL::pg_catalog.int8 "
								"FROM crm.customer_stats s ORDER BY 1", 0, NULL),
					  NULL, false, true, at);
	SPI_finish();
	return n;
}

PG_FUNCTION_INFO_V1(crm_segmentation_tick);

/* crm.segmentation_tick(at): tick task moving stages and time-dependent tags */
Datum
crm_segmentation_tick(PG_FUNCTION_ARGS)
{
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(0);

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite time")));
	PG_RETURN_INT64(customer_stats_tick(at));
}

/* ---------------------------------------------------------------------
 * Reading the compact columns from SQL
 * --------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(crm_stats_categories);

/* crm.stats_categories(categories bytea) RETURNS TABLE(category, orders, spend, weekday_orders) */
Datum
crm_stats_categories(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CustState	st;
	int			i,
				k;

	InitMaterializedSRF(fcinfo, 0);
	memset(&st, 0, sizeof(st));
	cats_from_bytea(&st, PG_GETARG_BYTEA_PP(0), false);
	for (i = 0; i < st.ncats; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		Datum		wd[7];

		for (k = 0; k < 7; k++)
			wd[k] = Int32GetDatum(st.cats[i].weekday[k]);
		values[0] = CStringGetTextDatum(st.cats[i].name);
		values[1] = Int32GetDatum(st.cats[i].orders);
		values[2] = crm_cents_to_numeric(st.cats[i].cents);
		values[3] = PointerGetDatum(construct_array(wd, 7, INT4OID, 4, true, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_stats_window);

/*
 * crm.stats_window(days bytea, as_of timestamptz, width integer, OUT orders, OUT spend)
 *		Orders and spend of the width local days up to as_of's day, from the
 *		day buckets; NULLs when the buckets no longer reach back that far.
 */
Datum
crm_stats_window(PG_FUNCTION_ARGS)
{
	CustState	st;
	TimestampTz as_of = PG_GETARG_TIMESTAMPTZ(1);
	int32		width = PG_GETARG_INT32(2);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int64		o,
				c;

	if (width < 1 || width > DAY_HORIZON)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("window width must be between 1 and %d days", DAY_HORIZON)));
	if (TIMESTAMP_NOT_FINITE(as_of))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of must be a finite time")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&st, 0, sizeof(st));
	days_from_bytea(&st, PG_GETARG_BYTEA_PP(0), false);
	if (window_sum(&st, crm_local_day(as_of, NULL), width, &o, &c))
	{
		values[0] = Int64GetDatum(o);
		values[1] = crm_cents_to_numeric(c);
	}
	else
		nulls[0] = nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

PG_FUNCTION_INFO_V1(crm_segmentation_now);

/* crm.segmentation_now(): setting crm.as_of if set, else the transaction start */
Datum
crm_segmentation_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(crm_seg_now());
}
