/*
 * rfm.c
 *		crm.rfm(as_of, bins, method): recency, frequency and monetary value of
 *		every golden customer in one pass over crm.orders, scored by quantile
 *		bins or by fixed cut points, and named by crm.rfm_segment_map.
 *
 * One pass: the merged (non-golden) records come from a partial index of
 * crm.customer, then one heap scan of crm.orders folds each paid order placed
 * before as_of into a hash table keyed by customer_id (last order time,
 * count, cents).  Scoring sorts each measure once.  On a Citus coordinator
 * the shards sum their customers instead (one row per customer), and the
 * quantiles are still over all customers.
 *
 * Tie rule for quantile scores: a customer's score is
 *		1 + floor(bins * (customers strictly worse) / customers)
 * so customers with equal values always get equal scores, the worst value
 * always scores 1, and with fewer customers than bins some scores are
 * skipped rather than equal values being split.  "Worse" is a longer
 * recency, a lower frequency, a lower monetary value.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "rfm_score.h"
#include "seg_config.h"

typedef struct RfmAgg
{
	int64		customer_id;	/* hash key */
	char		status;			/* simplehash */
	TimestampTz last_at;
	int64		frequency;
	int64		cents;
} RfmAgg;

#define SH_PREFIX rfmagg
#define SH_ELEMENT_TYPE RfmAgg
#define SH_KEY customer_id
#include "int64_hash.h"


/* ---------------------------------------------------------------------
 * The segment map (crm.rfm_segment_map), cached per backend
 * --------------------------------------------------------------------- */
typedef struct SegRule
{
	int			lo[3];
	int			hi[3];
	char	   *name;
} SegRule;

static SegRule *seg_rules = NULL;
static int	n_seg_rules = 0;
static uint64 seg_rules_generation = 0;
static MemoryContext seg_rules_cxt = NULL;

/* The rules of crm.rfm_segment_map in priority order, cached per configuration generation. */
static void
load_segment_map(void)
{
	enum
	{
		MAP_COL_SEGMENT = 1,
		MAP_COL_R_MIN,
		MAP_COL_R_MAX,
		MAP_COL_F_MIN,
		MAP_COL_F_MAX,
		MAP_COL_M_MIN,
		MAP_COL_M_MAX
	};
	static const int lo_col[3] = {MAP_COL_R_MIN, MAP_COL_F_MIN, MAP_COL_M_MIN};
	static const int hi_col[3] = {MAP_COL_R_MAX, MAP_COL_F_MAX, MAP_COL_M_MAX};
	int			i;

	if (seg_rules != NULL && seg_rules_generation == crm_config_generation())
		return;
	(void) crm_relid("rfm_segment_map");
	if (seg_rules_cxt == NULL)
		seg_rules_cxt = AllocSetContextCreate(TopMemoryContext, "crm rfm segment map",
											  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(seg_rules_cxt);
	seg_rules = NULL;
	SPI_connect();
	if (SPI_execute(crm_config_sql("SELECT m.segment, m.r_min, m.r_max, m.f_min, m.f_max, m.m_min, m.m_max "
					"FROM crm.rfm_segment_map m ORDER BY m.priority"), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.rfm_segment_map");
	n_seg_rules = SPI_processed;
	seg_rules = MemoryContextAllocZero(seg_rules_cxt, sizeof(SegRule) * Max(n_seg_rules, 1));
	for (i = 0; i < n_seg_rules; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		int			k;

		seg_rules[i].name = MemoryContextStrdup(seg_rules_cxt,
												TextDatumGetCString(SPI_getbinval(tup, td, MAP_COL_SEGMENT, &isnull)));
		for (k = 0; k < 3; k++)
		{
			seg_rules[i].lo[k] = DatumGetInt32(SPI_getbinval(tup, td, lo_col[k], &isnull));
			seg_rules[i].hi[k] = DatumGetInt32(SPI_getbinval(tup, td, hi_col[k], &isnull));
		}
	}
	SPI_finish();
	seg_rules_generation = crm_config_generation();
}

/* The first matching rule's name, or "Others". */
static const char *
segment_of(RfmScore s)
{
	int			v[3] = {RFM_R(s), RFM_F(s), RFM_M(s)};
	int			i;

	for (i = 0; i < n_seg_rules; i++)
	{
		SegRule    *r = &seg_rules[i];

		if (v[0] >= r->lo[0] && v[0] <= r->hi[0] &&
			v[1] >= r->lo[1] && v[1] <= r->hi[1] &&
			v[2] >= r->lo[2] && v[2] <= r->hi[2])
			return r->name;
	}
	return "Others";
}

PG_FUNCTION_INFO_V1(crm_rfm_segment);

/* crm.rfm_segment(rfm_score): the segment name of a score */
Datum
crm_rfm_segment(PG_FUNCTION_ARGS)
{
	RfmScore	s = DatumGetRfmScore(PG_GETARG_DATUM(0));

	load_segment_map();
	PG_RETURN_TEXT_P(cstring_to_text(segment_of(s)));
}

/* ---------------------------------------------------------------------
 * Fixed cut points (crm.rfm_threshold)
 * --------------------------------------------------------------------- */
typedef struct Cuts
{
	int			n;
	int			score[RFM_SCORE_MAX];
	double		bound[RFM_SCORE_MAX];
} Cuts;

static void
load_cuts(Cuts *cuts)
{
	enum
	{
		CUT_COL_DIMENSION = 1,
		CUT_COL_SCORE,
		CUT_COL_BOUND
	};
	int			i;

	memset(cuts, 0, sizeof(Cuts) * 3);
	SPI_connect();
	if (SPI_execute(crm_config_sql("SELECT t.dimension, t.score, t.bound::pg_catalog.float8 FROM crm.rfm_threshold t "
					"ORDER BY t.dimension, t.score"), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.rfm_threshold");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *dim = TextDatumGetCString(SPI_getbinval(tup, td, CUT_COL_DIMENSION, &isnull));
		int			k = dim[0] == 'r' ? 0 : dim[0] == 'f' ? 1 : 2;
		Cuts	   *c = &cuts[k];

		if (c->n < RFM_SCORE_MAX)
		{
			c->score[c->n] = DatumGetInt32(SPI_getbinval(tup, td, CUT_COL_SCORE, &isnull));
			c->bound[c->n] = DatumGetFloat8(SPI_getbinval(tup, td, CUT_COL_BOUND, &isnull));
			c->n++;
		}
	}
	SPI_finish();
}

/*
 * Score by cut points.  Frequency and monetary: the highest score whose
 * bound is <= the value.  Recency: the highest score whose bound (maximum
 * days since the last order) is >= the recency.  1 when none applies.
 */
static int
cut_score(const Cuts *c, double v, bool recency)
{
	int			best = 1;
	int			i;

	for (i = 0; i < c->n; i++)
		if ((recency ? v <= c->bound[i] : v >= c->bound[i]) && c->score[i] > best)
			best = c->score[i];
	return best;
}

/* ---------------------------------------------------------------------
 * Quantile scores
 * --------------------------------------------------------------------- */
/* number of elements of sorted[0..n) strictly less than v */
static int64
count_less(const int64 *sorted, int64 n, int64 v)
{
	int64		lo = 0,
				hi = n;

	while (lo < hi)
	{
		int64		mid = lo + (hi - lo) / 2;

		if (sorted[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int
quantile_score(const int64 *sorted, int64 n, int64 v, int bins)
{
	int64		less = count_less(sorted, n, v);

	return 1 + (int) ((less * bins) / n);
}

/* Column number of a table's column, or an ERROR. */
static AttrNumber
column_of(Relation rel, const char *name)
{
	int			att = SPI_fnumber(RelationGetDescr(rel), name);

	if (att <= 0)
		elog(ERROR, "column %s of %s is missing", name, RelationGetRelationName(rel));
	return att;
}

/* One scored customer. */
typedef struct RfmRow
{
	int64		customer_id;
	TimestampTz last_at;
	int64		frequency;
	int64		cents;
	RfmScore	score;
} RfmRow;

#define ST_SORT sort_rfm_rows
#define ST_ELEMENT_TYPE RfmRow
#define ST_COMPARE(a, b) ((a)->customer_id < (b)->customer_id ? -1 : ((a)->customer_id > (b)->customer_id ? 1 : 0))
#define ST_SCOPE static
#define ST_DECLARE
#define ST_DEFINE
#include "lib/sort_template.h"

static int64
recency_days_of(TimestampTz as_of, TimestampTz last_at)
{
	return (as_of - last_at) / USECS_PER_DAY;
}

/* Checks the arguments of crm.rfm / crm.refresh_rfm; true for fixed cut points. */
static bool
check_rfm_args(TimestampTz as_of, int32 bins, const char *method)
{
	bool		fixed;

	if (strcmp(method, "quantile") == 0)
		fixed = false;
	else if (strcmp(method, "fixed") == 0)
		fixed = true;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown RFM scoring method \"%s\"", method),
				 errhint("Use quantile or fixed.")));
	if (!fixed && (bins < 1 || bins > RFM_SCORE_MAX))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bins must be between 1 and 9, not %d", bins)));
	if (TIMESTAMP_NOT_FINITE(as_of))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of must be a finite time")));
	return fixed;
}

/*
 * Records merged into another: their orders do not count on their own.
 * Few, and found through the partial index customer_merged_into_idx.
 */
static rfmagg_hash *
load_merged(void)
{
	enum
	{
		MERGED_COL_CUSTOMER_ID = 1
	};
	rfmagg_hash *merged = rfmagg_create(CurrentMemoryContext, 1024, NULL);
	uint64		i;

	SPI_connect();
	if (SPI_execute(crm_shard_sql("SELECT c.customer_id FROM crm.customer c WHERE c.merged_into IS NOT NULL"),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		found;

		(void) rfmagg_insert(merged, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, MERGED_COL_CUSTOMER_ID, &isnull)),
							 &found);
	}
	SPI_finish();
	return merged;
}

/* Folds count paid orders of a customer, the last at last_at, worth cents, into agg. */
static void
fold_orders(rfmagg_hash *agg, int64 cust, TimestampTz last_at, int64 count, int64 cents)
{
	bool		found;
	RfmAgg	   *e = rfmagg_insert(agg, cust, &found);

	if (!found)
	{
		e->last_at = last_at;
		e->frequency = 0;
		e->cents = 0;
	}
	else if (last_at > e->last_at)
		e->last_at = last_at;
	e->frequency += count;
	if (pg_add_s64_overflow(e->cents, cents, &e->cents))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("monetary value of a customer is out of range")));
}

/* The one pass over the orders: last order, count and cents per golden customer. */
static rfmagg_hash *
aggregate_orders(TimestampTz as_of, Snapshot snap)
{
	rfmagg_hash *merged = load_merged();
	rfmagg_hash *agg = rfmagg_create(CurrentMemoryContext, 8192, NULL);
	Relation	rel = table_open(crm_relid("orders"), AccessShareLock);
	AttrNumber	o_cust = column_of(rel, "customer_id"),
				o_at = column_of(rel, "ordered_at"),
				o_status = column_of(rel, "status"),
				o_net = column_of(rel, "net_amount");
	AttrNumber	o_max = Max(Max(o_cust, o_at), Max(o_status, o_net));
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);

	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		TimestampTz at;
		text	   *status;
		int64		cust;

		CHECK_FOR_INTERRUPTS();
		slot_getsomeattrs(slot, o_max);
		at = DatumGetTimestampTz(slot->tts_values[o_at - 1]);
		if (at >= as_of)
			continue;
		status = (text *) DatumGetPointer(slot->tts_values[o_status - 1]);
		if (VARSIZE_ANY_EXHDR(status) != 4 || memcmp(VARDATA_ANY(status), "paid", 4) != 0)
			continue;
		cust = DatumGetInt64(slot->tts_values[o_cust - 1]);
		if (merged->members > 0 && rfmagg_lookup(merged, cust) != NULL)
			continue;
		fold_orders(agg, cust, at, 1,
					slot->tts_isnull[o_net - 1] ? 0 : crm_numeric_to_cents(slot->tts_values[o_net - 1]));
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, AccessShareLock);
	return agg;
}

/* fold_orders for one row of aggregate_orders_on_cluster's query. */
static void
fold_customer_sums(HeapTuple tup, TupleDesc desc, void *agg)
{
	enum
	{
		SUMS_COL_CUSTOMER_ID = 1, SUMS_COL_LAST_AT, SUMS_COL_COUNT, SUMS_COL_NET
	};
	bool		isnull;
	bool		net_null;
	Datum		net = SPI_getbinval(tup, desc, SUMS_COL_NET, &net_null);
	int64		cust = DatumGetInt64(SPI_getbinval(tup, desc, SUMS_COL_CUSTOMER_ID, &isnull));
	TimestampTz last_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, SUMS_COL_LAST_AT, &isnull));
	int64		count = DatumGetInt64(SPI_getbinval(tup, desc, SUMS_COL_COUNT, &isnull));

	fold_orders(agg, cust, last_at, count, net_null ? 0 : crm_numeric_to_cents(net));
}

/*
 * The same on a Citus coordinator, where the orders are in the workers'
 * shards: each shard sums its customers (the GROUP BY is by the distribution
 * column, so Citus runs it on the shards) and the coordinator receives one
 * row per customer.  net_amount has two decimals, so the sum's cents are
 * the sum of the orders' cents.
 */
static rfmagg_hash *
aggregate_orders_on_cluster(TimestampTz as_of)
{
	rfmagg_hash *agg = rfmagg_create(CurrentMemoryContext, 8192, NULL);
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		args[1] = {TimestampTzGetDatum(as_of)};

	crm_each_row("SELECT o.customer_id, pg_catalog.max(o.ordered_at), pg_catalog.count(*), "
				 "pg_catalog.sum(o.net_amount) FROM crm.orders o "
				 "JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) o.customer_id "
				 "WHERE c.merged_into IS NULL AND o.ordered_at OPERATOR(pg_catalog.<) $1 "
				 "AND o.status OPERATOR(pg_catalog.=) 'paid' GROUP BY o.customer_id",
				 1, types, args, fold_customer_sums, agg);
	return agg;
}

/*
 * Every golden customer with a paid order before as_of, scored, in
 * customer_id order; *n_out gets the count.  Reads under snap.
 */
static RfmRow *
rfm_compute(TimestampTz as_of, int32 bins, bool fixed, Snapshot snap, int64 *n_out)
{
	rfmagg_hash *agg;
	rfmagg_iterator it;
	RfmAgg	   *e;
	RfmRow	   *rows;
	Cuts		cuts[3];
	int64	   *srec,
			   *sfreq,
			   *smon;
	int64		n,
				i;

	load_segment_map();
	if (fixed)
		load_cuts(cuts);
	agg = crm_distributed_outside_shard() ? aggregate_orders_on_cluster(as_of) : aggregate_orders(as_of, snap);
	n = *n_out = agg->members;
	rows = palloc(sizeof(RfmRow) * Max(n, 1));
	srec = palloc(sizeof(int64) * Max(n, 1));
	sfreq = palloc(sizeof(int64) * Max(n, 1));
	smon = palloc(sizeof(int64) * Max(n, 1));
	i = 0;
	rfmagg_start_iterate(agg, &it);
	while ((e = rfmagg_iterate(agg, &it)) != NULL)
	{
		rows[i].customer_id = e->customer_id;
		rows[i].last_at = e->last_at;
		rows[i].frequency = e->frequency;
		rows[i].cents = e->cents;
		/* negated: a longer recency is worse */
		srec[i] = -recency_days_of(as_of, e->last_at);
		sfreq[i] = e->frequency;
		smon[i] = e->cents;
		i++;
	}
	sort_rfm_rows(rows, n);
	if (!fixed)
	{
		crm_sort_int64(srec, n);
		crm_sort_int64(sfreq, n);
		crm_sort_int64(smon, n);
	}
	for (i = 0; i < n; i++)
	{
		RfmRow	   *row = &rows[i];
		int64		recency_days = recency_days_of(as_of, row->last_at);

		if (fixed)
			row->score = RFM_PACK(cut_score(&cuts[0], (double) recency_days, true),
								  cut_score(&cuts[1], (double) row->frequency, false),
								  cut_score(&cuts[2], (double) row->cents / 100.0, false));
		else
			row->score = RFM_PACK(quantile_score(srec, n, -recency_days, bins),
								  quantile_score(sfreq, n, row->frequency, bins),
								  quantile_score(smon, n, row->cents, bins));
	}
	return rows;
}

/* One text datum per possible score, made on first use. */
static Datum
segment_datum(Datum *cache, RfmScore s)
{
	if (cache[s] == (Datum) 0)
		cache[s] = PointerGetDatum(cstring_to_text(segment_of(s)));
	return cache[s];
}

PG_FUNCTION_INFO_V1(crm_rfm);

/*
 * crm.rfm(as_of timestamptz, bins integer DEFAULT 5, method text DEFAULT 'quantile')
 *		RETURNS TABLE(customer_id, recency_days, frequency, monetary, score, segment)
 */
Datum
crm_rfm(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz as_of = PG_GETARG_TIMESTAMPTZ(0);
	int32		bins = PG_GETARG_INT32(1);
	bool		fixed = check_rfm_args(as_of, bins, text_to_cstring(PG_GETARG_TEXT_PP(2)));
	Datum	   *segtext = palloc0(sizeof(Datum) * 4096);
	RfmRow	   *rows;
	int64		n,
				i;

	InitMaterializedSRF(fcinfo, 0);
	rows = rfm_compute(as_of, bins, fixed, GetActiveSnapshot(), &n);
	for (i = 0; i < n; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = Int64GetDatum(rows[i].customer_id);
		values[1] = Int32GetDatum((int32) Min(recency_days_of(as_of, rows[i].last_at), PG_INT32_MAX));
		values[2] = Int64GetDatum(rows[i].frequency);
		values[3] = crm_cents_to_numeric(rows[i].cents);
		values[4] = RfmScoreGetDatum(rows[i].score);
		values[5] = segment_datum(segtext, rows[i].score);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * crm.refresh_rfm: write only what changed
 * --------------------------------------------------------------------- */

/* Column arrays of the rows to insert or update. */
typedef struct RowBatch
{
	int			n;
	int			capacity;		/* of del's cust (the others are made for all rows) */
	Datum	   *cust,
			   *last_at,
			   *freq,
			   *monetary,
			   *score,
			   *segment;
} RowBatch;

static void
batch_init(RowBatch *b, int64 capacity)
{
	size_t		sz = sizeof(Datum) * Max(capacity, 1);

	b->n = 0;
	b->cust = palloc(sz);
	b->last_at = palloc(sz);
	b->freq = palloc(sz);
	b->monetary = palloc(sz);
	b->score = palloc(sz);
	b->segment = palloc(sz);
}

static void
batch_add(RowBatch *b, const RfmRow *row, Datum *segtext)
{
	b->cust[b->n] = Int64GetDatum(row->customer_id);
	b->last_at[b->n] = TimestampTzGetDatum(row->last_at);
	b->freq[b->n] = Int64GetDatum(row->frequency);
	b->monetary[b->n] = crm_cents_to_numeric(row->cents);
	b->score[b->n] = RfmScoreGetDatum(row->score);
	b->segment[b->n] = segment_datum(segtext, row->score);
	b->n++;
}

static Datum
array_of(Datum *elems, int n, Oid type)
{
	int16		len;
	bool		byval;
	char		align;

	get_typlenbyvalalign(type, &len, &byval, &align);
	return PointerGetDatum(construct_array(elems, n, type, len, byval, align));
}

static bool
text_equal(Datum a, Datum b)
{
	text	   *ta = DatumGetTextPP(a);
	text	   *tb = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(ta) == VARSIZE_ANY_EXHDR(tb) &&
		memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), VARSIZE_ANY_EXHDR(ta)) == 0;
}

static RfmRow *
find_row(RfmRow *rows, int64 n, int64 cust)
{
	int64		lo = 0,
				hi = n;

	while (lo < hi)
	{
		int64		mid = lo + (hi - lo) / 2;

		if (rows[mid].customer_id < cust)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && rows[lo].customer_id == cust ? &rows[lo] : NULL;
}

/* The columns of crm.rfm_snapshot diff_row compares, in this order. */
static const char *const snapshot_columns[] = {"customer_id", "last_order_at", "frequency", "monetary", "score", "segment"};
#define N_SNAPSHOT_COLUMNS lengthof(snapshot_columns)

/* The new rows (sorted by customer), and what comparing the stored ones with them finds. */
typedef struct SnapshotDiff
{
	RfmRow	   *rows;
	int64		n;
	bool	   *seen;			/* per new row: it has a stored row */
	Datum	   *segtext;		/* segment_datum's cache */
	RowBatch   *upd;			/* changed rows */
	RowBatch   *del;			/* customers no longer scored */
} SnapshotDiff;

/* One stored row v[] (snapshot_columns' order) against the new rows. */
static void
diff_row(SnapshotDiff *d, const Datum *v)
{
	int64		cust = DatumGetInt64(v[0]);
	RfmRow	   *row = find_row(d->rows, d->n, cust);

	if (row == NULL)
	{
		if (d->del->n == d->del->capacity)
		{
			d->del->capacity *= 2;
			d->del->cust = repalloc(d->del->cust, sizeof(Datum) * d->del->capacity);
		}
		d->del->cust[d->del->n++] = Int64GetDatum(cust);
		return;
	}
	d->seen[row - d->rows] = true;
	if (DatumGetTimestampTz(v[1]) != row->last_at ||
		DatumGetInt64(v[2]) != row->frequency ||
		crm_numeric_to_cents(v[3]) != row->cents ||
		DatumGetRfmScore(v[4]) != row->score ||
		!text_equal(v[5], segment_datum(d->segtext, row->score)))
		batch_add(d->upd, row, d->segtext);
}

/* diff_row for every row of crm.rfm_snapshot, by a scan of the table. */
static void
diff_stored_rows(SnapshotDiff *d, Relation rel, Snapshot snap)
{
	AttrNumber	att[N_SNAPSHOT_COLUMNS];
	Datum		v[N_SNAPSHOT_COLUMNS];
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);

	for (int c = 0; c < N_SNAPSHOT_COLUMNS; c++)
		att[c] = column_of(rel, snapshot_columns[c]);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		slot_getallattrs(slot);
		for (int c = 0; c < N_SNAPSHOT_COLUMNS; c++)
			v[c] = slot->tts_values[att[c] - 1];
		diff_row(d, v);
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
}

/* diff_row for a row of the query in diff_snapshot (snapshot_columns' order; none is NULL). */
static void
diff_queried_row(HeapTuple tup, TupleDesc desc, void *d)
{
	Datum		v[N_SNAPSHOT_COLUMNS];
	bool		isnull;

	for (int c = 0; c < N_SNAPSHOT_COLUMNS; c++)
		v[c] = SPI_getbinval(tup, desc, c + 1, &isnull);
	diff_row(d, v);
}

/*
 * Compares crm.rfm_snapshot with the new rows: changed rows go to upd,
 * rows of customers no longer scored to del (customer ids only); seen[]
 * marks the new rows that have a snapshot row.  On a Citus coordinator the
 * stored rows come from the shards, through Citus.  Returns the type of the
 * score column.
 */
static Oid
diff_snapshot(RfmRow *rows, int64 n, bool *seen, Datum *segtext, Snapshot snap,
			  RowBatch *upd, RowBatch *del)
{
	Relation	rel = table_open(crm_relid("rfm_snapshot"), AccessShareLock);
	Oid			score_type = TupleDescAttr(RelationGetDescr(rel), column_of(rel, "score") - 1)->atttypid;
	SnapshotDiff d = {rows, n, seen, segtext, upd, del};

	del->n = 0;
	del->capacity = 64;
	del->cust = palloc(sizeof(Datum) * del->capacity);
	if (crm_distributed_outside_shard())
		crm_each_row("SELECT s.customer_id, s.last_order_at, s.frequency, s.monetary, s.score, s.segment "
					 "FROM crm.rfm_snapshot s", 0, NULL, NULL, diff_queried_row, &d);
	else
		diff_stored_rows(&d, rel, snap);
	table_close(rel, AccessShareLock);
	return score_type;
}

static void
run_write(const char *sql, int nargs, Oid *types, Datum *args, int expect)
{
	if (SPI_execute_with_args(crm_shard_sql(sql), nargs, types, args, NULL, false, 0) != expect)
		elog(ERROR, "SPI failed for \"%s\"", sql);
}

/* Applies the diff with one set-based statement per kind of change. */
static void
write_changes(RowBatch *ins, RowBatch *upd, RowBatch *del, Oid score_type)
{
	Oid			types[6] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID,
	NUMERICARRAYOID, get_array_type(score_type), TEXTARRAYOID};
	RowBatch   *b[2] = {upd, ins};
	static const char *const sql[2] = {
		"UPDATE crm.rfm_snapshot s SET last_order_at = u.l, frequency = u.f, monetary = u.m, "
		"score = u.s, segment = u.g "
		"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
		"pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(c, l, f, m, s, g) "
		"WHERE s.customer_id OPERATOR(pg_catalog.=) u.c",
		"INSERT INTO crm.rfm_snapshot (customer_id, last_order_at, frequency, monetary, score, segment) "
		"SELECT u.c, u.l, u.f, u.m, u.s, u.g FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
		"pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(c, l, f, m, s, g)"
	};
	int			k;

	if (del->n > 0)
	{
		Datum		arg = array_of(del->cust, del->n, INT8OID);

		run_write("DELETE FROM crm.rfm_snapshot s WHERE s.customer_id OPERATOR(pg_catalog.=) ANY ($1)",
				  1, types, &arg, SPI_OK_DELETE);
	}
	for (k = 0; k < 2; k++)
	{
		Datum		args[6];

		if (b[k]->n == 0)
			continue;
		args[0] = array_of(b[k]->cust, b[k]->n, INT8OID);
		args[1] = array_of(b[k]->last_at, b[k]->n, TIMESTAMPTZOID);
		args[2] = array_of(b[k]->freq, b[k]->n, INT8OID);
		args[3] = array_of(b[k]->monetary, b[k]->n, NUMERICOID);
		args[4] = array_of(b[k]->score, b[k]->n, score_type);
		args[5] = array_of(b[k]->segment, b[k]->n, TEXTOID);
		run_write(sql[k], 6, types, args, k == 0 ? SPI_OK_UPDATE : SPI_OK_INSERT);
	}
}

PG_FUNCTION_INFO_V1(crm_refresh_rfm);

/*
 * crm.refresh_rfm(as_of, bins, method) RETURNS bigint: brings
 * crm.rfm_snapshot to crm.rfm(as_of, bins, method) writing only the rows
 * that differ, records the refresh in crm.rfm_refresh and returns the number
 * of customers scored.  The snapshot stores the last order time rather than
 * the recency, so a next-day refresh rewrites only customers who ordered or
 * whose scores moved, not every row.
 */
Datum
crm_refresh_rfm(PG_FUNCTION_ARGS)
{
	TimestampTz as_of = PG_GETARG_TIMESTAMPTZ(0);
	int32		bins = PG_GETARG_INT32(1);
	text	   *method = PG_GETARG_TEXT_PP(2);
	bool		fixed = check_rfm_args(as_of, bins, text_to_cstring(method));
	Datum	   *segtext = palloc0(sizeof(Datum) * 4096);
	RfmRow	   *rows;
	bool	   *seen;
	RowBatch	ins,
				upd,
				del;
	int64		n,
				i;
	Snapshot	snap;
	Oid			score_type;
	Datum		state[6];
	Oid			state_types[6] = {TIMESTAMPTZOID, INT4OID, TEXTOID, INT8OID, INT8OID, INT8OID};

	SPI_connect();
	/* One refresh at a time; readers see the old scores until commit. */
	if (SPI_execute(crm_shard_sql("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crm.refresh_rfm'))"),
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock crm.refresh_rfm");
	/* A snapshot taken after the lock sees the previous refresh committed. */
	snap = RegisterSnapshot(GetTransactionSnapshot());
	rows = rfm_compute(as_of, bins, fixed, snap, &n);
	seen = palloc0(sizeof(bool) * Max(n, 1));
	batch_init(&upd, n);
	score_type = diff_snapshot(rows, n, seen, segtext, snap, &upd, &del);
	UnregisterSnapshot(snap);
	batch_init(&ins, n);
	for (i = 0; i < n; i++)
		if (!seen[i])
			batch_add(&ins, &rows[i], segtext);
	write_changes(&ins, &upd, &del, score_type);

	state[0] = TimestampTzGetDatum(as_of);
	state[1] = Int32GetDatum(bins);
	state[2] = PointerGetDatum(method);
	state[3] = Int64GetDatum(n);
	state[4] = Int64GetDatum((int64) ins.n + upd.n + del.n);
	state[5] = Int64GetDatum((int64) del.n);
	/* (now() in VALUES, not in DO UPDATE: Citus refuses that on a reference table) */
	run_write("INSERT INTO crm.rfm_refresh AS r (as_of, bins, method, scored, rows_written, rows_deleted, refreshed_at) "
			  "VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.now()) ON CONFLICT (singleton) DO UPDATE SET "
			  "as_of = excluded.as_of, bins = excluded.bins, method = excluded.method, "
			  "scored = excluded.scored, rows_written = excluded.rows_written, "
			  "rows_deleted = excluded.rows_deleted, refreshed_at = excluded.refreshed_at",
			  6, state_types, state, SPI_OK_INSERT);
	SPI_finish();
	PG_RETURN_INT64(n);
}
