/*
 * stats_fold.c
 *		The per-customer state of crm.customer_stats and how facts fold into
 *		it: day buckets, categories, rolling windows, the features rules
 *		read, and the bytes of the compact columns "days" and "categories"
 *		(stats_private.h describes the flow and the formats).
 */
#include "postgres.h"

#include <math.h>

#include "common/int.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "seg_config.h"
#include "stats_private.h"


/* ---------------------------------------------------------------------
 * Folding facts into a customer's state
 * --------------------------------------------------------------------- */
/* *acc += c, or an ERROR when the spend leaves the bigint range. */
static void
add_cents(int64 *acc, int64 c)
{
	if (pg_add_s64_overflow(*acc, c, acc))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("customer spend is out of range")));
}

/* Count orders and cents on a local day: bump or insert its bucket, drop those past the horizon. */
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

/* The customer's counters of a category, added (zero) when new. */
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

/* Fold one fact (an order, an order line, events) into a customer's state. */
void
stats_apply_fact(CustState *st, const Fact *f)
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
				/* count 0: the order had a line of this category before */
				if (c->last_order != f->order_id && f->count > 0)
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
/* The "days" column: horizon, bucket count, then the buckets as stored in memory. */
bytea *
stats_days_to_bytea(const CustState *st)
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

/* What is wrong with the bytes of a "categories" column, or NULL. */
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
void
stats_bad_column(const char *problem, bool from_table)
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

/* Load a "days" column into st (checked first: a bad one raises 22P03). */
void
stats_days_from_bytea(CustState *st, bytea *b, bool from_table)
{
	const char *d = VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);
	const char *problem = days_problem(d, len);
	int32		n;

	if (problem != NULL)
		stats_bad_column(problem, from_table);
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
bytea *
stats_cats_to_bytea(CustState *st)
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

/* Load a "categories" column into st (checked first: a bad one raises 22P03). */
void
stats_cats_from_bytea(CustState *st, bytea *b, bool from_table)
{
	const char *d = VARDATA_ANY(b);
	int			len = VARSIZE_ANY_EXHDR(b);
	const char *problem = cats_problem(d, len);
	int			off = 4;
	int32		n;
	int			i;

	if (problem != NULL)
		stats_bad_column(problem, from_table);
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
 * Features: what rules read
 * --------------------------------------------------------------------- */
/* orders and cents of the buckets in (asof_day - width, asof_day]; false if not exact */
bool
stats_window_sum(const CustState *st, int32 asof_day, int width, int64 *orders, int64 *cents)
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

/* Whole days from one time to another, rounded down. */
static double
days_between(TimestampTz from, TimestampTz to)
{
	return floor((double) (to - from) / (double) USECS_PER_DAY);
}

/* The features tag rules and the lifecycle stage read, from a customer's state as of a time. */
void
stats_features(const CustState *st, TimestampTz as_of, TagFacts *f, TagCategory *cats)
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

		(void) stats_window_sum(st, asof_day, widths[k], &o, &c);
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
