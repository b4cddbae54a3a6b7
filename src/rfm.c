/*
 * rfm.c
 *		crm.rfm(as_of, bins, method): recency, frequency and monetary value of
 *		every golden customer in one pass over crm.orders, scored by quantile
 *		bins or by fixed cut points, and named by crm.rfm_segment_map.
 *
 * One pass: the merged (non-golden) records come from a partial index of
 * crm.customer, then one heap scan of crm.orders folds each paid order placed
 * before as_of into a hash table keyed by customer_id (last order time,
 * count, cents).  Scoring sorts each measure once.
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
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
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
#define SH_KEY_TYPE int64
#define SH_KEY customer_id
#define SH_HASH_KEY(tb, key) murmurhash32((uint32) (key) ^ (uint32) ((uint64) (key) >> 32))
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* A specialised sort of int64 arrays (no comparator calls). */
#define ST_SORT sort_int64
#define ST_ELEMENT_TYPE int64
#define ST_COMPARE(a, b) (*(a) < *(b) ? -1 : (*(a) > *(b) ? 1 : 0))
#define ST_SCOPE static
#define ST_DECLARE
#define ST_DEFINE
#include "lib/sort_template.h"

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

static void
load_segment_map(void)
{
	int			i;

	if (seg_rules != NULL && seg_rules_generation == crm_seg_config_generation)
		return;
	(void) crm_relid("rfm_segment_map");
	if (seg_rules_cxt == NULL)
		seg_rules_cxt = AllocSetContextCreate(TopMemoryContext, "crm rfm segment map",
											  ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(seg_rules_cxt);
	seg_rules = NULL;
	SPI_connect();
	if (SPI_execute("SELECT m.segment, m.r_min, m.r_max, m.f_min, m.f_max, m.m_min, m.m_max "
					"FROM crm.rfm_segment_map m ORDER BY m.priority", true, 0) != SPI_OK_SELECT)
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
												TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull)));
		for (k = 0; k < 3; k++)
		{
			seg_rules[i].lo[k] = DatumGetInt32(SPI_getbinval(tup, td, 2 + 2 * k, &isnull));
			seg_rules[i].hi[k] = DatumGetInt32(SPI_getbinval(tup, td, 3 + 2 * k, &isnull));
		}
	}
	SPI_finish();
	seg_rules_generation = crm_seg_config_generation;
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
	int			i;

	memset(cuts, 0, sizeof(Cuts) * 3);
	SPI_connect();
	if (SPI_execute("SELECT t.dimension, t.score, t.bound::float8 FROM crm.rfm_threshold t "
					"ORDER BY t.dimension, t.score", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.rfm_threshold");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *dim = TextDatumGetCString(SPI_getbinval(tup, td, 1, &isnull));
		int			k = dim[0] == 'r' ? 0 : dim[0] == 'f' ? 1 : 2;
		Cuts	   *c = &cuts[k];

		if (c->n < RFM_SCORE_MAX)
		{
			c->score[c->n] = DatumGetInt32(SPI_getbinval(tup, td, 2, &isnull));
			c->bound[c->n] = DatumGetFloat8(SPI_getbinval(tup, td, 3, &isnull));
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
	char	   *method = text_to_cstring(PG_GETARG_TEXT_PP(2));
	bool		fixed;
	Cuts		cuts[3];
	Relation	rel;
	TableScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snap = GetActiveSnapshot();
	rfmagg_hash *merged;
	rfmagg_hash *agg;
	rfmagg_iterator it;
	RfmAgg	   *e;
	AttrNumber	o_cust,
				o_at,
				o_status,
				o_net,
				o_max;
	int64		n,
				i;
	Datum	   *segtext;

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

	InitMaterializedSRF(fcinfo, 0);
	load_segment_map();
	if (fixed)
		load_cuts(cuts);

	/*
	 * Records merged into another: their orders do not count on their own.
	 * Few, and found through the partial index customer_merged_into_idx.
	 */
	merged = rfmagg_create(CurrentMemoryContext, 1024, NULL);
	SPI_connect();
	if (SPI_execute("SELECT c.customer_id FROM crm.customer c WHERE c.merged_into IS NOT NULL",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		found;

		(void) rfmagg_insert(merged, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 1, &isnull)),
							 &found);
	}
	SPI_finish();

	/* The one pass over the orders. */
	agg = rfmagg_create(CurrentMemoryContext, 8192, NULL);
	rel = table_open(crm_relid("orders"), AccessShareLock);
	o_cust = column_of(rel, "customer_id");
	o_at = column_of(rel, "ordered_at");
	o_status = column_of(rel, "status");
	o_net = column_of(rel, "net_amount");
	o_max = Max(Max(o_cust, o_at), Max(o_status, o_net));
	slot = table_slot_create(rel, NULL);
	scan = table_beginscan(rel, snap, 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		TimestampTz at;
		text	   *status;
		int64		cust;
		bool		found;

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
		isnull = slot->tts_isnull[o_net - 1];
		e = rfmagg_insert(agg, cust, &found);
		if (!found)
		{
			e->last_at = at;
			e->frequency = 0;
			e->cents = 0;
		}
		else if (at > e->last_at)
			e->last_at = at;
		e->frequency++;
		if (!isnull)
		{
			int64		c = crm_numeric_to_cents(slot->tts_values[o_net - 1]);

			if (pg_add_s64_overflow(e->cents, c, &e->cents))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("monetary value of a customer is out of range")));
		}
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, AccessShareLock);

	n = agg->members;
	if (n == 0)
		return (Datum) 0;
	{
		int64	   *ids = palloc(sizeof(int64) * n);
		int64	   *srec = palloc(sizeof(int64) * n);
		int64	   *sfreq = palloc(sizeof(int64) * n);
		int64	   *smon = palloc(sizeof(int64) * n);

		i = 0;
		rfmagg_start_iterate(agg, &it);
		while ((e = rfmagg_iterate(agg, &it)) != NULL)
		{
			ids[i] = e->customer_id;
			/* negated: a longer recency is worse */
			srec[i] = -((as_of - e->last_at) / USECS_PER_DAY);
			sfreq[i] = e->frequency;
			smon[i] = e->cents;
			i++;
		}
		/* output in customer_id order */
		sort_int64(ids, n);
		/* one text datum per possible score (R, F, M 1..9), made on first use */
		segtext = palloc0(sizeof(Datum) * 4096);
		if (!fixed)
		{
			sort_int64(srec, n);
			sort_int64(sfreq, n);
			sort_int64(smon, n);
		}
		for (i = 0; i < n; i++)
		{
			Datum		values[6];
			bool		nulls[6] = {false, false, false, false, false, false};
			int			r,
						f,
						m;
			RfmScore	s;
			int64		recency_days;

			e = rfmagg_lookup(agg, ids[i]);
			recency_days = (as_of - e->last_at) / USECS_PER_DAY;
			if (fixed)
			{
				r = cut_score(&cuts[0], (double) recency_days, true);
				f = cut_score(&cuts[1], (double) e->frequency, false);
				m = cut_score(&cuts[2], (double) e->cents / 100.0, false);
			}
			else
			{
				r = quantile_score(srec, n, -recency_days, bins);
				f = quantile_score(sfreq, n, e->frequency, bins);
				m = quantile_score(smon, n, e->cents, bins);
			}
			s = RFM_PACK(r, f, m);
			values[0] = Int64GetDatum(e->customer_id);
			values[1] = Int32GetDatum((int32) Min(recency_days, PG_INT32_MAX));
			values[2] = Int64GetDatum(e->frequency);
			values[3] = crm_cents_to_numeric(e->cents);
			values[4] = RfmScoreGetDatum(s);
			if (segtext[s] == (Datum) 0)
				segtext[s] = PointerGetDatum(cstring_to_text(segment_of(s)));
			values[5] = segtext[s];
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}
