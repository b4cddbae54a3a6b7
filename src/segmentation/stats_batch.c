/*
 * stats_batch.c
 *		Batches of crm.customer_stats work: a statement's facts collected per
 *		customer, the customers' stats rows loaded (and locked), the facts
 *		folded in (stats_fold.c), stage and rule tag changes computed, and
 *		the changes written back in one statement per batch.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "seg_config.h"
#include "stats_private.h"

#define BATCH_CUSTOMERS 2000
#define FETCH_ROWS		10000

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

/* A numeric setting of crm.segment_setting, or dflt when it is not set. */
static double
setting_num(const char *key, double dflt)
{
	enum
	{
		SETTING_COL_VALUE = 1
	};
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(key)};
	double		v = dflt;

	if (SPI_execute_with_args(crm_config_sql("SELECT s.value FROM crm.segment_setting s WHERE s.key OPERATOR(pg_catalog.=) $1"),
							  1, argtypes, args, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, SETTING_COL_VALUE);
		char	   *end;

		v = strtod(s, &end);
		if (end == s || *end != '\0' || !isfinite(v) || v < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("setting %s in crm.segment_setting must be a non-negative number", key)));
	}
	return v;
}

/* The enabled rule tags (compiled) and the lifecycle thresholds, cached per configuration generation. */
static SegConfig *
seg_config(void)
{
	enum
	{
		RULE_COL_TAG_ID = 1,
		RULE_COL_COMPILED
	};
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
	if (SPI_execute(crm_config_sql("SELECT t.tag_id, t.compiled FROM crm.tag t "
					"WHERE t.kind OPERATOR(pg_catalog.=) 'rule' AND t.enabled ORDER BY t.tag_id"),
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

		config.rules[i].tag_id = DatumGetInt32(SPI_getbinval(tup, td, RULE_COL_TAG_ID, &isnull));
		d = SPI_getbinval(tup, td, RULE_COL_COMPILED, &isnull);
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

/* The lifecycle stage of a customer as of a time. */
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
	(void) stats_window_sum(st, crm_local_day(as_of, NULL) - 90, 90, &prev_orders, &prev_cents);
	if (o90 >= cfg->growing_orders_90d && o90 > (double) prev_orders)
		return "growing";
	if (st->orders >= cfg->mature_orders)
		return "mature";
	return "active";
}

/* ---------------------------------------------------------------------
 * Batches: facts per customer
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
	/* stats rows this statement created to lock (sorted; in outer, so they outlive batch_reset) */
	MemoryContext outer;
	int64	   *placeholders;
	int			nplaceholders;
	Tuplestorestate *sink;		/* dry run: rows go here, nothing is written or locked */
	TupleDesc	sink_desc;
} Batch;

static int64 run_facts(Batch *b, SPIPlanPtr plan, Datum *args);

static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_load_lock = NULL;
static SPIPlanPtr plan_golden = NULL;
static SPIPlanPtr plan_upsert = NULL;
static SPIPlanPtr plan_upsert1 = NULL;
static SPIPlanPtr plan_delete = NULL;
static SPIPlanPtr plan_stage_only = NULL;
static SPIPlanPtr plan_ensure = NULL;

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
batch_start(Batch *b, bool rebuild, bool tick, TimestampTz as_of)
{
	memset(b, 0, sizeof(Batch));
	b->cxt = AllocSetContextCreate(CurrentMemoryContext, "crm stats batch", ALLOCSET_DEFAULT_SIZES);
	b->rebuild = rebuild;
	b->tick = tick;
	b->as_of = as_of;
	b->outer = CurrentMemoryContext;
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

static bool
is_placeholder(const Batch *b, int64 cust)
{
	return b->nplaceholders > 0 &&
		bsearch(&cust, b->placeholders, b->nplaceholders, sizeof(int64), crm_cmp_int64) != NULL;
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
		st->placeholder = is_placeholder(b, f->cust);
		if (b->nids == b->maxids)
		{
			b->maxids *= 2;
			b->ids = repalloc(b->ids, sizeof(int64) * b->maxids);
		}
		b->ids[b->nids++] = f->cust;
	}
}

/* ---------------------------------------------------------------------
 * Loading the stored state
 * --------------------------------------------------------------------- */
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

/* The rule tags a customer holds, as an int4[] (the last column of two queries below). */
#define RULE_TAGS_OF(customer) \
	"ARRAY(SELECT ct.tag_id FROM crm.customer_tag ct JOIN crm.tag t ON t.tag_id OPERATOR(pg_catalog.=) ct.tag_id " \
	"      AND t.kind OPERATOR(pg_catalog.=) 'rule' WHERE ct.customer_id OPERATOR(pg_catalog.=) " customer ") "

/* The stored state of customers = ANY ($1): columns StatsColumn. */
#define STATS_COLUMNS \
	"SELECT s.customer_id, s.orders, s.refunded_orders, s.spend, s.first_order_at, " \
	"s.last_order_at, s.weekday_orders, s.events, s.last_event_at, s.days, " \
	"s.categories, s.stage, s.stage_since, " \
	RULE_TAGS_OF("s.customer_id") \
	"FROM crm.customer_stats s WHERE s.customer_id OPERATOR(pg_catalog.=) ANY ($1)"

typedef enum StatsColumn
{
	STATS_COL_CUSTOMER_ID = 1,
	STATS_COL_ORDERS,
	STATS_COL_REFUNDED_ORDERS,
	STATS_COL_SPEND,
	STATS_COL_FIRST_ORDER_AT,
	STATS_COL_LAST_ORDER_AT,
	STATS_COL_WEEKDAY_ORDERS,
	STATS_COL_EVENTS,
	STATS_COL_LAST_EVENT_AT,
	STATS_COL_DAYS,
	STATS_COL_CATEGORIES,
	STATS_COL_STAGE,
	STATS_COL_STAGE_SINCE,
	STATS_COL_RULE_TAGS
} StatsColumn;

/* The customers a rebuild starts from, with whether golden and their stage: columns GoldenColumn. */
#define GOLDEN_COLUMNS \
	"SELECT c.customer_id, c.merged_into IS NULL, s.stage, s.stage_since, " \
	RULE_TAGS_OF("c.customer_id") \
	"FROM crm.customer c LEFT JOIN crm.customer_stats s ON s.customer_id OPERATOR(pg_catalog.=) c.customer_id " \
	"WHERE c.customer_id OPERATOR(pg_catalog.=) ANY ($1)"

typedef enum GoldenColumn
{
	GOLDEN_COL_CUSTOMER_ID = 1,
	GOLDEN_COL_IS_GOLDEN,
	GOLDEN_COL_STAGE,
	GOLDEN_COL_STAGE_SINCE,
	GOLDEN_COL_RULE_TAGS
} GoldenColumn;

/* The stored state of the customers in the batch: STATS_COLUMNS, locked or not. */
static void
read_stats(Batch *b, Datum ids, bool lock)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1] = {ids};
	SPIPlanPtr	plan;

	plan = lock ? prepare(&plan_load_lock, STATS_COLUMNS " ORDER BY 1 FOR UPDATE OF s", 1, types) :
		prepare(&plan_load, STATS_COLUMNS, 1, types);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer_stats");
}

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
		CustState  *st = cust_lookup(b->h, DatumGetInt64(SPI_getbinval(tup, td, STATS_COL_CUSTOMER_ID, &isnull)));
		MemoryContext old;
		Datum		d;

		if (st == NULL || st->existed || st->placeholder)
			continue;
		old = MemoryContextSwitchTo(b->cxt);
		st->existed = true;
		st->orders = DatumGetInt32(SPI_getbinval(tup, td, STATS_COL_ORDERS, &isnull));
		st->refunded = DatumGetInt32(SPI_getbinval(tup, td, STATS_COL_REFUNDED_ORDERS, &isnull));
		st->cents = crm_numeric_to_cents(SPI_getbinval(tup, td, STATS_COL_SPEND, &isnull));
		d = SPI_getbinval(tup, td, STATS_COL_FIRST_ORDER_AT, &isnull);
		st->first_at = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, td, STATS_COL_LAST_ORDER_AT, &isnull);
		st->last_at = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, td, STATS_COL_WEEKDAY_ORDERS, &isnull);
		if (!isnull)
		{
			ArrayType  *a = DatumGetArrayTypeP(d);

			if (ARR_NDIM(a) != 1 || ARR_DIMS(a)[0] != 7 || ARR_HASNULL(a) || ARR_ELEMTYPE(a) != INT4OID)
				stats_bad_column("weekday_orders is not an array of 7 integers.", true);
			memcpy(st->weekday, ARR_DATA_PTR(a), sizeof(int32) * 7);
		}
		st->events = DatumGetInt32(SPI_getbinval(tup, td, STATS_COL_EVENTS, &isnull));
		d = SPI_getbinval(tup, td, STATS_COL_LAST_EVENT_AT, &isnull);
		st->last_event_at = isnull ? 0 : DatumGetTimestampTz(d);
		stats_days_from_bytea(st, DatumGetByteaPP(SPI_getbinval(tup, td, STATS_COL_DAYS, &isnull)), true);
		stats_cats_from_bytea(st, DatumGetByteaPP(SPI_getbinval(tup, td, STATS_COL_CATEGORIES, &isnull)), true);
		st->stage = TextDatumGetCString(SPI_getbinval(tup, td, STATS_COL_STAGE, &isnull));
		st->stage_since = DatumGetTimestampTz(SPI_getbinval(tup, td, STATS_COL_STAGE_SINCE, &isnull));
		d = SPI_getbinval(tup, td, STATS_COL_RULE_TAGS, &isnull);
		state_tags(b, st, d, isnull);
		MemoryContextSwitchTo(old);
	}
}

/*
 * Stats rows for customers ids (sorted) that have none, so there is a row to
 * lock (ON CONFLICT DO NOTHING waits for a concurrent creator and then sees
 * its row); remembered as placeholders, which the batch replaces or deletes
 * before the statement ends.  Their bytes are those of an empty state.
 */
static void
ensure_stats_rows(Batch *b, Datum ids)
{
	Oid			types[4] = {INT8ARRAYOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID};
	Datum		args[4];
	CustState	empty;
	MemoryContext old;
	uint64		i;

	memset(&empty, 0, sizeof(empty));
	empty.horizon = NO_HORIZON;
	args[0] = ids;
	args[1] = PointerGetDatum(stats_days_to_bytea(&empty));
	args[2] = PointerGetDatum(stats_cats_to_bytea(&empty));
	args[3] = TimestampTzGetDatum(b->as_of);
	if (SPI_execute_plan(prepare(&plan_ensure,
								 "INSERT INTO crm.customer_stats AS s (customer_id, orders, refunded_orders, spend, "
								 "weekday_orders, events, days, categories, line_spend, stage, stage_since, updated_at) "
								 "SELECT u.c, 0, 0, 0, '{0,0,0,0,0,0,0}'::pg_catalog.int4[], 0, $2, $3, 0, 'prospect', $4, pg_catalog.now() "
								 "FROM pg_catalog.unnest($1) AS u(c) ORDER BY 1 "
								 "ON CONFLICT (customer_id) DO NOTHING RETURNING s.customer_id",
								 4, types), args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not create crm.customer_stats rows");
	if (SPI_processed == 0)
		return;
	old = MemoryContextSwitchTo(b->outer);
	b->placeholders = b->placeholders ?
		repalloc(b->placeholders, sizeof(int64) * (b->nplaceholders + SPI_processed)) :
		palloc(sizeof(int64) * SPI_processed);
	MemoryContextSwitchTo(old);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		b->placeholders[b->nplaceholders++] =
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	crm_sort_int64(b->placeholders, b->nplaceholders);
}

/*
 * Step 4 of the lock order (DEVELOPER.md): lock the stats rows of customers
 * ids[0..n) FOR UPDATE in id order, creating the missing ones first, before
 * anything they are rebuilt or folded from is read.  Two transactions
 * writing one customer's stats then run one after the other, and the second
 * reads the first's committed orders and row.  The customer record itself is
 * not locked here: writers hold it FOR SHARE, and a stronger lock would
 * deadlock two inserts for one customer.  The rows read are folded into the
 * batch's states (inserts), or ignored (rebuilds read their own).
 */
static void
lock_stats(Batch *b, const int64 *ids, int n)
{
	int64	   *want = palloc(sizeof(int64) * Max(n, 1));
	int			nwant = n;

	memcpy(want, ids, sizeof(int64) * n);
	crm_sort_int64(want, nwant);
	for (int round = 0; nwant > 0; round++)
	{
		Datum		arr = int8_array(want, nwant);
		int64	   *got;
		int			ngot = 0,
					left = 0;

		/*
		 * Most customers have a row: lock first, create the missing ones in
		 * the next round (a row deleted between its creation and our lock,
		 * by a merge dropping it, is created again).
		 */
		if (round == 100)
			elog(ERROR, "could not lock crm.customer_stats rows");
		if (round > 0)
			ensure_stats_rows(b, arr);
		read_stats(b, arr, true);
		got = palloc(sizeof(int64) * Max(SPI_processed, 1));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			got[ngot++] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													  STATS_COL_CUSTOMER_ID, &isnull));
		}
		read_stats_rows(b);
		crm_sort_int64(got, ngot);
		for (int i = 0; i < nwant; i++)
			if (bsearch(&want[i], got, ngot, sizeof(int64), crm_cmp_int64) == NULL)
				want[left++] = want[i];
		nwant = left;
		pfree(got);
	}
	pfree(want);
}

/* A rebuild starts from nothing, but keeps the stage and knows who is golden. */
static void
load_for_rebuild(Batch *b, Datum ids)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1] = {ids};
	uint64		k;

	/* the stats rows were locked before the facts were read (run_facts; not in a dry run) */
	if (SPI_execute_plan(prepare(&plan_golden, GOLDEN_COLUMNS, 1, types), args, NULL, b->sink != NULL, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer");
	for (k = 0; k < SPI_processed; k++)
	{
		HeapTuple	tup = SPI_tuptable->vals[k];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		CustState  *st = cust_lookup(b->h, DatumGetInt64(SPI_getbinval(tup, td, GOLDEN_COL_CUSTOMER_ID, &isnull)));
		Datum		d;

		if (st == NULL)
			continue;
		st->golden = DatumGetBool(SPI_getbinval(tup, td, GOLDEN_COL_IS_GOLDEN, &isnull));
		d = SPI_getbinval(tup, td, GOLDEN_COL_STAGE, &isnull);
		if (!isnull && !st->placeholder)
		{
			st->existed = true;
			st->stage = MemoryContextStrdup(b->cxt, TextDatumGetCString(d));
			st->stage_since = DatumGetTimestampTz(SPI_getbinval(tup, td, GOLDEN_COL_STAGE_SINCE, &isnull));
		}
		d = SPI_getbinval(tup, td, GOLDEN_COL_RULE_TAGS, &isnull);
		state_tags(b, st, d, isnull);
		st->dirty = true;
	}
}

/*
 * Read the stored state of the batch's customers.  Inserts fold their facts
 * into the rows as locked (lock_stats: in READ COMMITTED a row another
 * transaction changed is waited for and read in its committed version).
 * A rebuild locked its rows before reading the facts; a tick writes only
 * stage columns and tag diffs: no locks.
 */
static void
batch_load(Batch *b)
{
	Datum		ids;

	if (b->rebuild)
	{
		load_for_rebuild(b, int8_array(b->ids, b->nids));
		return;
	}
	if (b->tick)
	{
		ids = int8_array(b->ids, b->nids);
		read_stats(b, ids, false);
		read_stats_rows(b);
		return;
	}
	lock_stats(b, b->ids, b->nids);
}

/* ---------------------------------------------------------------------
 * Computing the changes
 * --------------------------------------------------------------------- */
/* Growable parallel arrays for the batch writes. */
typedef struct Cols
{
	int			n;
	int			max;
	Datum	   *v[16];
	bool	   *nulls[16];
} Cols;

/* The columns of a stats row written (UpsertColumn + 1 is the upsert's $n). */
typedef enum UpsertColumn
{
	UP_CUSTOMER_ID,
	UP_ORDERS,
	UP_REFUNDED_ORDERS,
	UP_SPEND,
	UP_FIRST_ORDER_AT,
	UP_LAST_ORDER_AT,
	UP_MEAN_INTERVAL_DAYS,
	UP_WEEKDAY_ORDERS,
	UP_EVENTS,
	UP_LAST_EVENT_AT,
	UP_DAYS,
	UP_CATEGORIES,
	UP_LINE_CENTS,
	UP_STAGE,
	UP_STAGE_SINCE,
	UP_NCOLS
} UpsertColumn;

/* The element types of UpsertColumn. */
static const Oid upsert_types[UP_NCOLS] = {INT8OID, INT4OID, INT4OID, NUMERICOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, FLOAT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, BYTEAOID, BYTEAOID, INT8OID,
TEXTOID, TIMESTAMPTZOID};

/* Columns of the tag lists (entered, left). */
enum
{
	TAG_CUSTOMER,
	TAG_TAG_ID,
	TAG_NCOLS
};

/* Columns of the stage lists (moves: customer, from, to; tick's stage-only: customer, to). */
enum
{
	MOVE_CUSTOMER,
	MOVE_FROM,
	MOVE_TO,
	MOVE_NCOLS
};
enum
{
	STAGE_CUSTOMER,
	STAGE_STAGE,
	STAGE_NCOLS
};

/* What a batch writes, computed by batch_changes and written by batch_write. */
typedef struct Changes
{
	Cols		up;				/* stats rows to upsert: UpsertColumn */
	Cols		stonly;			/* tick: stats rows whose stage alone moved */
	Cols		del;			/* stats rows to delete: customer */
	Cols		tadd;			/* rule tags entered */
	Cols		tdrop;			/* rule tags left */
	Cols		stg;			/* lifecycle transitions */
	Cols		tags;			/* dry run: each upserted row's rule tags (int4[]) */
} Changes;

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

/* A row (customer, tag) of a tag list. */
static void
tag_row(Cols *c, int64 customer_id, int32 tag_id)
{
	int			r = cols_row(c, TAG_NCOLS);

	c->v[TAG_CUSTOMER][r] = Int64GetDatum(customer_id);
	c->v[TAG_TAG_ID][r] = Int32GetDatum(tag_id);
}

/* A customer with no state of its own (merged away, or nothing left): drop its row and tags. */
static void
drop_customer(Batch *b, Changes *ch, const CustState *st)
{
	int			k,
				r;

	if (!st->existed && !st->placeholder && st->ntags == 0)
		return;
	r = cols_row(&ch->del, 1);
	ch->del.v[0][r] = Int64GetDatum(st->customer_id);
	for (k = 0; k < st->ntags; k++)
	{
		tag_row(&ch->tdrop, st->customer_id, st->tags[k]);
		b->changed++;
	}
}

/* Move the customer to its stage as of the batch's time (a transition row unless prospect stays prospect). */
static void
stage_change(Batch *b, Changes *ch, CustState *st, const char *stage)
{
	int			r;

	if (st->stage != NULL && strcmp(st->stage, stage) == 0)
		return;
	if (st->stage != NULL || strcmp(stage, "prospect") != 0)
	{
		r = cols_row(&ch->stg, MOVE_NCOLS);
		ch->stg.v[MOVE_CUSTOMER][r] = Int64GetDatum(st->customer_id);
		ch->stg.v[MOVE_FROM][r] = CStringGetTextDatum(st->stage ? st->stage : "prospect");
		ch->stg.v[MOVE_TO][r] = CStringGetTextDatum(stage);
		b->changed++;
	}
	st->stage = (char *) stage;
	st->stage_since = b->as_of;
	if (b->tick && st->existed && !st->dirty)
	{
		r = cols_row(&ch->stonly, STAGE_NCOLS);
		ch->stonly.v[STAGE_CUSTOMER][r] = Int64GetDatum(st->customer_id);
		ch->stonly.v[STAGE_STAGE][r] = CStringGetTextDatum(stage);
	}
	else
		st->dirty = true;
}

/* Evaluate the rule tags and list the ones the customer enters and leaves. */
static void
tag_changes(Batch *b, Changes *ch, const SegConfig *cfg, const CustState *st, const TagFacts *f,
			bool *newtag)
{
	int			k;

	for (k = 0; k < cfg->nrules; k++)
		newtag[k] = tag_program_eval(cfg->rules[k].prog, f);
	for (k = 0; k < cfg->nrules; k++)
	{
		bool		had = false;
		int			j;

		for (j = 0; j < st->ntags; j++)
			if (st->tags[j] == cfg->rules[k].tag_id)
				had = true;
		if (newtag[k] && !had)
		{
			tag_row(&ch->tadd, st->customer_id, cfg->rules[k].tag_id);
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
			tag_row(&ch->tdrop, st->customer_id, st->tags[k]);
			b->changed++;
		}
	}
}

/* The rule tags a customer holds after tag_changes (newtag), as an int4[] in tag_id order. */
static Datum
rule_tags_array(const SegConfig *cfg, const bool *newtag)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(cfg->nrules, 1));
	int			k,
				n = 0;

	for (k = 0; k < cfg->nrules; k++)
		if (newtag[k])
			d[n++] = Int32GetDatum(cfg->rules[k].tag_id);
	return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT));
}

/* The stats row of a customer, as the upsert writes it. */
static void
upsert_row(Changes *ch, CustState *st, const TagFacts *f)
{
	Cols	   *up = &ch->up;
	int			r = cols_row(up, UP_NCOLS);
	StringInfoData s;

	up->v[UP_CUSTOMER_ID][r] = Int64GetDatum(st->customer_id);
	up->v[UP_ORDERS][r] = Int32GetDatum(st->orders);
	up->v[UP_REFUNDED_ORDERS][r] = Int32GetDatum(st->refunded);
	up->v[UP_SPEND][r] = crm_cents_to_numeric(st->cents);
	up->v[UP_FIRST_ORDER_AT][r] = TimestampTzGetDatum(st->first_at);
	up->nulls[UP_FIRST_ORDER_AT][r] = st->orders == 0;
	up->v[UP_LAST_ORDER_AT][r] = TimestampTzGetDatum(st->last_at);
	up->nulls[UP_LAST_ORDER_AT][r] = st->orders == 0;
	up->v[UP_MEAN_INTERVAL_DAYS][r] = Float8GetDatum(f->num[TF_MEAN_INTERVAL_DAYS]);
	up->nulls[UP_MEAN_INTERVAL_DAYS][r] = st->orders < 2;
	/* as text: unnest cannot return one int[] per row */
	initStringInfo(&s);
	appendStringInfo(&s, "{%d,%d,%d,%d,%d,%d,%d}", st->weekday[0], st->weekday[1],
					 st->weekday[2], st->weekday[3], st->weekday[4], st->weekday[5],
					 st->weekday[6]);
	up->v[UP_WEEKDAY_ORDERS][r] = CStringGetTextDatum(s.data);
	up->v[UP_EVENTS][r] = Int32GetDatum(st->events);
	up->v[UP_LAST_EVENT_AT][r] = TimestampTzGetDatum(st->last_event_at);
	up->nulls[UP_LAST_EVENT_AT][r] = st->events == 0;
	up->v[UP_DAYS][r] = PointerGetDatum(stats_days_to_bytea(st));
	up->v[UP_CATEGORIES][r] = PointerGetDatum(stats_cats_to_bytea(st));
	up->v[UP_LINE_CENTS][r] = Int64GetDatum(f->line_cents);
	up->v[UP_STAGE][r] = CStringGetTextDatum(st->stage);
	up->v[UP_STAGE_SINCE][r] = TimestampTzGetDatum(st->stage_since);
}

/* For every customer of the batch (facts folded in): its row, stage move and tag changes. */
static void
batch_changes(Batch *b, Changes *ch)
{
	SegConfig  *cfg = seg_config();
	int			i;
	TagCategory *cats = NULL;
	int			maxcats = 0;
	bool	   *newtag = palloc(sizeof(bool) * Max(cfg->nrules, 1));

	cols_init(&ch->up, UP_NCOLS, b->nids);
	cols_init(&ch->del, 1, 4);
	cols_init(&ch->stonly, STAGE_NCOLS, 4);
	cols_init(&ch->tadd, TAG_NCOLS, 4);
	cols_init(&ch->tdrop, TAG_NCOLS, 4);
	cols_init(&ch->stg, MOVE_NCOLS, 4);
	cols_init(&ch->tags, 1, Max(b->nids, 1));

	for (i = 0; i < b->nids; i++)
	{
		CustState  *st = cust_lookup(b->h, b->ids[i]);
		TagFacts	f;
		const char *stage;
		bool		has_any = st->orders > 0 || st->refunded > 0 || st->events > 0;

		CHECK_FOR_INTERRUPTS();
		if (!st->golden || (b->rebuild && !has_any))
		{
			drop_customer(b, ch, st);
			continue;
		}
		if (st->ncats > maxcats)
		{
			maxcats = st->ncats * 2;
			cats = cats ? repalloc(cats, sizeof(TagCategory) * maxcats) : palloc(sizeof(TagCategory) * maxcats);
		}
		stats_features(st, b->as_of, &f, cats);
		stage = lifecycle_stage(cfg, st, &f, b->as_of);
		stage_change(b, ch, st, stage);
		f.stage = stage;
		tag_changes(b, ch, cfg, st, &f, newtag);
		if (st->dirty || !st->existed)
		{
			upsert_row(ch, st, &f);
			if (b->sink)
				ch->tags.v[0][cols_row(&ch->tags, 1)] = rule_tags_array(cfg, newtag);
		}
	}
}

/* ---------------------------------------------------------------------
 * Writing the changes
 * --------------------------------------------------------------------- */
#define UPSERT_SET \
	"ON CONFLICT (customer_id) DO UPDATE SET orders = EXCLUDED.orders, " \
	"refunded_orders = EXCLUDED.refunded_orders, spend = EXCLUDED.spend, " \
	"first_order_at = EXCLUDED.first_order_at, last_order_at = EXCLUDED.last_order_at, " \
	"mean_interval_days = EXCLUDED.mean_interval_days, weekday_orders = EXCLUDED.weekday_orders, " \
	"events = EXCLUDED.events, last_event_at = EXCLUDED.last_event_at, days = EXCLUDED.days, " \
	"categories = EXCLUDED.categories, line_spend = EXCLUDED.line_spend, stage = EXCLUDED.stage, " \
	"stage_since = EXCLUDED.stage_since, updated_at = EXCLUDED.updated_at"

/* One customer and nothing else: a single-row upsert is much cheaper to start. */
static void
write_one_row(const Cols *up)
{
	Datum		args[UP_NCOLS];
	char		nulls[UP_NCOLS];
	int			i;

	for (i = 0; i < UP_NCOLS; i++)
	{
		args[i] = up->v[i][0];
		nulls[i] = up->nulls[i][0] ? 'n' : ' ';
	}
	if (SPI_execute_plan(prepare(&plan_upsert1,
								 "INSERT INTO crm.customer_stats AS s (customer_id, orders, refunded_orders, spend, "
								 "first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, "
								 "days, categories, line_spend, stage, stage_since, updated_at) "
								 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::pg_catalog.int4[], $9, $10, $11, $12, "
								 "($13::pg_catalog.numeric OPERATOR(pg_catalog./) 100)::pg_catalog.numeric(20,2), $14, $15, pg_catalog.now()) "
								 UPSERT_SET,
								 UP_NCOLS, (Oid *) upsert_types), args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write crm.customer_stats");
}

/*
 * The parameters of write_all (WriteArg + 1 is its $n): the upsert's
 * columns as arrays, then the tag and stage lists.
 */
typedef enum WriteArg
{
	WA_UPSERT = 0,				/* UP_NCOLS arrays, in UpsertColumn order */
	WA_LEFT_CUSTOMER = UP_NCOLS,
	WA_LEFT_TAG,
	WA_ENTERED_CUSTOMER,
	WA_ENTERED_TAG,
	WA_AT,
	WA_MOVE_CUSTOMER,
	WA_MOVE_FROM,
	WA_MOVE_TO,
	WA_NARGS
} WriteArg;

/*
 * Stats rows, tag changes with their history, and stage moves: one
 * statement with data-modifying CTEs, so a batch costs one round trip.
 */
static void
write_all(Batch *b, const Changes *ch)
{
	Oid			types[WA_NARGS] = {INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, NUMERICARRAYOID,
		TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		TIMESTAMPTZARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZOID,
	INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[WA_NARGS];
	int			i;

	for (i = 0; i < UP_NCOLS; i++)
		args[WA_UPSERT + i] = datum_array(ch->up.v[i], ch->up.nulls[i], ch->up.n, upsert_types[i]);
	args[WA_LEFT_CUSTOMER] = datum_array(ch->tdrop.v[TAG_CUSTOMER], ch->tdrop.nulls[TAG_CUSTOMER], ch->tdrop.n, INT8OID);
	args[WA_LEFT_TAG] = datum_array(ch->tdrop.v[TAG_TAG_ID], ch->tdrop.nulls[TAG_TAG_ID], ch->tdrop.n, INT4OID);
	args[WA_ENTERED_CUSTOMER] = datum_array(ch->tadd.v[TAG_CUSTOMER], ch->tadd.nulls[TAG_CUSTOMER], ch->tadd.n, INT8OID);
	args[WA_ENTERED_TAG] = datum_array(ch->tadd.v[TAG_TAG_ID], ch->tadd.nulls[TAG_TAG_ID], ch->tadd.n, INT4OID);
	args[WA_AT] = TimestampTzGetDatum(b->as_of);
	args[WA_MOVE_CUSTOMER] = datum_array(ch->stg.v[MOVE_CUSTOMER], ch->stg.nulls[MOVE_CUSTOMER], ch->stg.n, INT8OID);
	args[WA_MOVE_FROM] = datum_array(ch->stg.v[MOVE_FROM], ch->stg.nulls[MOVE_FROM], ch->stg.n, TEXTOID);
	args[WA_MOVE_TO] = datum_array(ch->stg.v[MOVE_TO], ch->stg.nulls[MOVE_TO], ch->stg.n, TEXTOID);
	if (SPI_execute_plan(prepare(&plan_upsert,
								 "WITH up AS (INSERT INTO crm.customer_stats AS s (customer_id, orders, refunded_orders, spend, "
								 "first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, "
								 "days, categories, line_spend, stage, stage_since, updated_at) "
								 "SELECT u.c, u.o, u.r, u.sp, u.fa, u.la, u.mi, u.wd::pg_catalog.int4[], u.ev, u.le, "
								 "u.dy, u.ca, (u.lc::pg_catalog.numeric OPERATOR(pg_catalog./) 100)::pg_catalog.numeric(20,2), u.st, u.ss, pg_catalog.now() "
								 "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), pg_catalog.unnest($14), pg_catalog.unnest($15)) "
								 "AS u(c, o, r, sp, fa, la, mi, wd, ev, le, dy, ca, lc, st, ss) "
								 UPSERT_SET " RETURNING 1), "
								 "d AS (DELETE FROM crm.customer_tag ct USING ROWS FROM (pg_catalog.unnest($16), pg_catalog.unnest($17)) AS u(c, t) "
								 "WHERE ct.customer_id OPERATOR(pg_catalog.=) u.c AND ct.tag_id OPERATOR(pg_catalog.=) u.t "
								 "RETURNING ct.customer_id, ct.tag_id), "
								 "a AS (INSERT INTO crm.customer_tag (customer_id, tag_id, since) "
								 "SELECT u.c, u.t, $20 FROM ROWS FROM (pg_catalog.unnest($18), pg_catalog.unnest($19)) AS u(c, t) "
								 "ON CONFLICT DO NOTHING RETURNING customer_id, tag_id), "
								 "h AS (INSERT INTO crm.customer_tag_history (history_id, customer_id, tag_id, change, at) "
								 "SELECT pg_catalog.nextval('crm.customer_tag_history_history_id_seq'::pg_catalog.regclass), d.customer_id, d.tag_id, 'leave', $20 FROM d "
								 "UNION ALL SELECT pg_catalog.nextval('crm.customer_tag_history_history_id_seq'::pg_catalog.regclass), a.customer_id, a.tag_id, 'enter', $20 FROM a RETURNING 1), "
								 "tr AS (INSERT INTO crm.lifecycle_transition (transition_id, customer_id, from_stage, to_stage, at) "
								 "SELECT pg_catalog.nextval('crm.lifecycle_transition_transition_id_seq'::pg_catalog.regclass), u.c, u.f, u.t, $20 FROM ROWS FROM (pg_catalog.unnest($21), pg_catalog.unnest($22), pg_catalog.unnest($23)) AS u(c, f, t) "
								 "RETURNING 1) "
								 "SELECT (SELECT pg_catalog.count(*) FROM up), (SELECT pg_catalog.count(*) FROM h), "
								 "(SELECT pg_catalog.count(*) FROM tr)",
								 WA_NARGS, types), args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not write crm.customer_stats");
}

/* A tick's stage moves of customers whose stats did not change: the stage columns only. */
static void
write_stages(Batch *b, const Cols *stonly)
{
	Oid			types[3] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};
	Datum		args[3] = {datum_array(stonly->v[STAGE_CUSTOMER], stonly->nulls[STAGE_CUSTOMER], stonly->n, INT8OID),
		datum_array(stonly->v[STAGE_STAGE], stonly->nulls[STAGE_STAGE], stonly->n, TEXTOID),
	TimestampTzGetDatum(b->as_of)};

	if (SPI_execute_plan(prepare(&plan_stage_only,
								 "UPDATE crm.customer_stats s SET stage = u.st, stage_since = $3 "
								 "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(c, st) "
								 "WHERE s.customer_id OPERATOR(pg_catalog.=) u.c",
								 3, types), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not write lifecycle stages");
}

/* Stats rows of customers with no state of their own. */
static void
delete_rows(const Cols *del)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1] = {datum_array(del->v[0], del->nulls[0], del->n, INT8OID)};

	if (SPI_execute_plan(prepare(&plan_delete,
								 "DELETE FROM crm.customer_stats s WHERE s.customer_id OPERATOR(pg_catalog.=) ANY ($1)",
								 1, types), args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete from crm.customer_stats");
}

/*
 * A dry run's output: the stats rows the batch would write, with their rule
 * tags (columns of crm.customer_stats_expected, in UpsertColumn order but
 * line spend as numeric and without stage_since, then the tags).
 */
static void
batch_emit(Batch *b, const Changes *ch)
{
	Datum		values[UP_NCOLS];
	bool		nulls[UP_NCOLS];
	int			r,
				i;

	Assert(ch->tags.n == ch->up.n);
	for (r = 0; r < ch->up.n; r++)
	{
		for (i = 0; i < UP_STAGE_SINCE; i++)
		{
			values[i] = ch->up.v[i][r];
			nulls[i] = ch->up.nulls[i][r];
		}
		values[UP_WEEKDAY_ORDERS] = OidInputFunctionCall(F_ARRAY_IN, TextDatumGetCString(values[UP_WEEKDAY_ORDERS]),
														 INT4OID, -1);
		values[UP_LINE_CENTS] = crm_cents_to_numeric(DatumGetInt64(values[UP_LINE_CENTS]));
		values[UP_STAGE_SINCE] = ch->tags.v[0][r];
		nulls[UP_STAGE_SINCE] = false;
		tuplestore_putvalues(b->sink, b->sink_desc, values, nulls);
	}
}

/* Make the batch's writes. */
static void
batch_write(Batch *b, const Changes *ch)
{
	if (ch->up.n == 1 && ch->tdrop.n + ch->tadd.n + ch->stg.n == 0)
		write_one_row(&ch->up);
	else if (ch->up.n + ch->tdrop.n + ch->tadd.n + ch->stg.n > 0)
		write_all(b, ch);
	if (ch->stonly.n > 0)
		write_stages(b, &ch->stonly);
	if (ch->del.n > 0)
		delete_rows(&ch->del);
}

/* Load the batch's customers, fold its facts in, write the changes, and start the next batch. */
static void
batch_flush(Batch *b)
{
	Changes		ch;
	int			i;

	if (b->nids == 0)
		return;
	batch_load(b);
	for (i = 0; i < b->nfacts; i++)
	{
		CustState  *st = cust_lookup(b->h, b->facts[i].cust);
		MemoryContext old = MemoryContextSwitchTo(b->cxt);

		stats_apply_fact(st, &b->facts[i]);
		MemoryContextSwitchTo(old);
	}
	batch_changes(b, &ch);
	if (b->sink)
		batch_emit(b, &ch);
	else
		batch_write(b, &ch);
	batch_reset(b);
}

/* A rebuild of customers = ANY (ids) locks their stats rows before it reads their facts (defect 7 of issue 13). */
static void
lock_rebuilt(Batch *b, Datum ids)
{
	ArrayType  *a = DatumGetArrayTypeP(ids);
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				k = 0;
	int64	   *v;

	deconstruct_array(a, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	v = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			v[k++] = DatumGetInt64(elems[i]);
	lock_stats(b, v, k);
	pfree(v);
}

/* ---------------------------------------------------------------------
 * Entry points for stats_trigger.c
 * --------------------------------------------------------------------- */
/*
 * Run a fact query (columns FactColumn, ordered by customer_id) and fold
 * its rows in, batch by batch.  Must be called inside SPI.  Returns the
 * number of stage moves and tag changes.
 */
int64
stats_process_facts(SPIPlanPtr plan, Datum *args, bool rebuild, bool tick, TimestampTz as_of)
{
	Batch		b;

	batch_start(&b, rebuild, tick, as_of);
	return run_facts(&b, plan, args);
}

/*
 * A dry rebuild: run a rebuild's fact query and put the stats rows and rule
 * tags the rebuild would write into sink (columns of
 * crm.customer_stats_expected), writing and locking nothing.  Must be called
 * inside SPI.
 */
void
stats_expected_facts(SPIPlanPtr plan, Datum *args, TimestampTz as_of,
					 Tuplestorestate *sink, TupleDesc sink_desc)
{
	Batch		b;

	batch_start(&b, true, false, as_of);
	b.sink = sink;
	b.sink_desc = sink_desc;
	(void) run_facts(&b, plan, args);
}

/* The body of the two above: the fact query's rows, batch by batch. */
static int64
run_facts(Batch *b, SPIPlanPtr plan, Datum *args)
{
	Portal		portal;
	int64		prev = PG_INT64_MIN;

	batch_reset(b);
	(void) seg_config();
	if (b->rebuild && b->sink == NULL)
		lock_rebuilt(b, args[0]);

	/* read_only = false: a snapshot taken now, after the locks (a dry run: the caller's) */
	portal = SPI_cursor_open(NULL, plan, args, NULL, b->sink != NULL);
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

			f.cust = DatumGetInt64(SPI_getbinval(tup, td, FACT_COL_CUSTOMER_ID, &isnull));
			if (f.cust != prev && b->nids >= BATCH_CUSTOMERS)
				batch_flush(b);
			prev = f.cust;
			f.kind = DatumGetInt32(SPI_getbinval(tup, td, FACT_COL_KIND, &isnull));
			d = SPI_getbinval(tup, td, FACT_COL_AT, &isnull);
			f.at = isnull ? 0 : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, td, FACT_COL_PAID, &isnull);
			f.paid = isnull ? false : DatumGetBool(d);
			d = SPI_getbinval(tup, td, FACT_COL_AMOUNT, &isnull);
			f.cents = isnull ? 0 : crm_numeric_to_cents(d);
			d = SPI_getbinval(tup, td, FACT_COL_ORDER_ID, &isnull);
			f.order_id = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, td, FACT_COL_CATEGORY, &isnull);
			f.category = isnull ? NULL : MemoryContextStrdup(b->cxt, TextDatumGetCString(d));
			d = SPI_getbinval(tup, td, FACT_COL_COUNT, &isnull);
			f.count = isnull ? 0 : DatumGetInt64(d);
			if (f.kind == FACT_LINE && f.category == NULL)
				continue;
			batch_add_fact(b, &f);
		}
		SPI_freetuptable(tt);
	}
	SPI_cursor_close(portal);
	batch_flush(b);
	MemoryContextDelete(b->cxt);
	return b->changed;
}

/*
 * Fold facts already in memory (sorted by customer) in as one batch.  Must
 * be called inside SPI.
 */
void
stats_fold_facts(const Fact *facts, int nfacts, TimestampTz as_of)
{
	Batch		b;
	int			i;

	batch_start(&b, false, false, as_of);
	batch_reset(&b);
	for (i = 0; i < nfacts; i++)
		batch_add_fact(&b, &facts[i]);
	batch_flush(&b);
	MemoryContextDelete(b.cxt);
}
