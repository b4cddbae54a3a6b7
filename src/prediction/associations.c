/*
 * associations.c
 *		Pair association rules ("frequently bought together") from paid order
 *		lines: crm.refresh_associations(min_support, min_confidence).
 *
 * Apriori for pairs.  The paid order lines are read in order_id order
 * through a cursor, a batch at a time.  A first pass counts the baskets
 * (paid orders with lines) and the baskets each sku is in, and keeps the
 * skus whose support reaches min_support: only pairs of those can qualify.
 * The next pass counts each basket's pairs of frequent skus in a triangular
 * array of counters.
 * When the triangle does not fit in work_mem, the first sku's range is
 * split and the lines are read once per part, so memory stays bounded by
 * work_mem whatever the catalogue size.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "crm_ext.h"

#define FETCH_ROWS 10000
#define INSERT_BATCH 5000

typedef struct SkuEntry
{
	const char *key;			/* the sku, in the function's memory */
	int			idx;			/* index among frequent skus, or -1 */
	int64		baskets;		/* paid orders with this sku */
	int64		seen_in;		/* last basket counted, for de-duplication */
} SkuEntry;

static uint32
sku_hash(const void *key, Size keysize)
{
	const char *s = *(const char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
sku_match(const void *a, const void *b, Size keysize)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int
cmp_int(const void *a, const void *b)
{
	int			x = *(const int *) a,
				y = *(const int *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

typedef struct RuleBatch
{
	int			n;
	Datum		ante[INSERT_BATCH];
	Datum		cons[INSERT_BATCH];
	Datum		cnt[INSERT_BATCH];
	Datum		sup[INSERT_BATCH];
	Datum		conf[INSERT_BATCH];
	Datum		lift[INSERT_BATCH];
	SPIPlanPtr	plan;
	int64		inserted;
} RuleBatch;

static void
flush_rules(RuleBatch *b)
{
	Datum		args[6];
	int			ret;

	if (b->n == 0)
		return;
	args[0] = PointerGetDatum(construct_array(b->ante, b->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(b->cons, b->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(b->cnt, b->n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(b->sup, b->n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_array(b->conf, b->n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[5] = PointerGetDatum(construct_array(b->lift, b->n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ret = SPI_execute_plan(b->plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "inserting association rules failed: %d", ret);
	b->inserted += SPI_processed;
	b->n = 0;
}

static void
add_rule(RuleBatch *b, Datum ante, Datum cons, int64 c, double sup, double conf, double lift)
{
	b->ante[b->n] = ante;
	b->cons[b->n] = cons;
	b->cnt[b->n] = Int64GetDatum(c);
	b->sup[b->n] = Float8GetDatum(sup);
	b->conf[b->n] = Float8GetDatum(conf);
	b->lift[b->n] = Float8GetDatum(lift);
	b->n++;
	if (b->n == INSERT_BATCH)
		flush_rules(b);
}

/* Counts one basket's pairs whose first sku lies in [lo, hi). */
static void
count_basket(int *items, int n, int lo, int hi, const int64 *rowoff, uint32 *tri)
{
	int			i,
				j,
				m = 0;

	if (n < 2)
		return;
	qsort(items, n, sizeof(int), cmp_int);
	for (i = 0; i < n; i++)
		if (m == 0 || items[i] != items[m - 1])
			items[m++] = items[i];
	for (i = 0; i < m; i++)
	{
		int			a = items[i];

		if (a < lo)
			continue;
		if (a >= hi)
			break;
		for (j = i + 1; j < m; j++)
		{
			uint32	   *c = &tri[rowoff[a - lo] + (items[j] - a - 1)];

			if (*c < PG_UINT32_MAX)
				(*c)++;
		}
	}
}

/*
 * Every paid order line, by order.  On a Citus coordinator the join also
 * matches the customer (a line carries its order's there), so each shard
 * joins its own rows and Citus merges the ordered streams; on one node a
 * line's customer_id may be NULL.
 */
#define LINES_QUERY(customer_match) \
	"SELECT l.order_id, l.sku FROM crm.order_line l " \
	"JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id " customer_match \
	"WHERE o.status OPERATOR(pg_catalog.=) 'paid' ORDER BY l.order_id"
enum
{
	LINE_ORDER_ID = 1, LINE_SKU
};

typedef struct PassState
{
	HTAB	   *skus;
	MemoryContext fn_cxt;
	bool		first;			/* counting skus (true) or pairs (false) */
	int64		baskets;
	/* pair pass */
	int			lo;
	int			hi;
	const int64 *rowoff;
	uint32	   *tri;
	int		   *items;
	int			nitems;
	int			cap;
} PassState;

static void
end_basket(PassState *ps)
{
	if (!ps->first)
		count_basket(ps->items, ps->nitems, ps->lo, ps->hi, ps->rowoff, ps->tri);
	ps->nitems = 0;
}

/* One pass over all paid order lines, basket by basket. */
static void
scan_lines(PassState *ps)
{
	Portal		portal;
	int64		cur_order = -1;
	bool		any = false;
	MemoryContext batch_cxt = AllocSetContextCreate(ps->fn_cxt, "crm associations batch",
													ALLOCSET_DEFAULT_SIZES);

	portal = SPI_cursor_open_with_args(NULL, crm_shard_sql(crm_distributed_outside_shard() ?
															 LINES_QUERY("AND o.customer_id OPERATOR(pg_catalog.=) l.customer_id ") :
															 LINES_QUERY("")),
									   0, NULL, NULL, NULL, true, 0);
	for (;;)
	{
		uint64		r;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		old = MemoryContextSwitchTo(batch_cxt);
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			bool		isnull;
			int64		oid = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, LINE_ORDER_ID, &isnull));
			char	   *sku = TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, LINE_SKU, &isnull));
			SkuEntry   *e;
			bool		found;

			if (!any || oid != cur_order)
			{
				if (any)
					end_basket(ps);
				cur_order = oid;
				any = true;
				ps->baskets++;
			}
			if (ps->first)
			{
				e = hash_search(ps->skus, &sku, HASH_ENTER, &found);
				if (!found)
				{
					e->key = MemoryContextStrdup(ps->fn_cxt, sku);
					e->idx = -1;
					e->baskets = 0;
					e->seen_in = 0;
				}
				if (e->seen_in != ps->baskets)
				{
					e->seen_in = ps->baskets;
					e->baskets++;
				}
			}
			else
			{
				e = hash_search(ps->skus, &sku, HASH_FIND, NULL);
				if (e != NULL && e->idx >= 0)
				{
					if (ps->nitems == ps->cap)
					{
						if (ps->cap >= 1000000)
							ereport(ERROR,
									errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
									errmsg("an order has more than %d lines", ps->cap));
						ps->cap *= 2;
						ps->items = repalloc(ps->items, sizeof(int) * ps->cap);
					}
					ps->items[ps->nitems++] = e->idx;
				}
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		SPI_freetuptable(SPI_tuptable);
	}
	if (any)
		end_basket(ps);
	SPI_cursor_close(portal);
	MemoryContextDelete(batch_cxt);
}

static int
cmp_entry_key(const void *a, const void *b)
{
	return strcmp((*(SkuEntry *const *) a)->key, (*(SkuEntry *const *) b)->key);
}

PG_FUNCTION_INFO_V1(crm_refresh_associations);

/*
 * crm.refresh_associations(min_support float8, min_confidence float8)
 *		RETURNS bigint: replaces crm.association_rule with the pair rules of
 *		all paid orders and returns how many rules it stored.
 */
Datum
crm_refresh_associations(PG_FUNCTION_ARGS)
{
	double		min_support = PG_GETARG_FLOAT8(0);
	double		min_confidence = PG_GETARG_FLOAT8(1);
	int64		baskets;
	int64		min_count;
	int			K = 0,
				i,
				j,
				ret;
	SkuEntry  **freq;
	Datum	   *sku_datum;
	HASHCTL		hctl;
	HASH_SEQ_STATUS seq;
	SkuEntry   *e;
	Size		budget;
	int			lo;
	RuleBatch  *batch;
	PassState	ps;
	Oid			ins_types[6] = {TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID};
	MemoryContext fn_cxt = CurrentMemoryContext;

	if (!(min_support > 0.0 && min_support <= 1.0))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("min_support must be in (0, 1]"),
				errhint("It is the share of baskets a pair must appear in, e.g. 0.001."));
	if (!(min_confidence >= 0.0 && min_confidence <= 1.0))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("min_confidence must be in [0, 1]"));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute(crm_shard_sql("DELETE FROM crm.association_rule"), false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "clearing association rules failed: %d", ret);

	memset(&hctl, 0, sizeof(hctl));
	hctl.keysize = sizeof(char *);
	hctl.entrysize = sizeof(SkuEntry);
	hctl.hash = sku_hash;
	hctl.match = sku_match;
	hctl.hcxt = fn_cxt;

	/* pass 1: baskets and the support of each sku */
	memset(&ps, 0, sizeof(ps));
	ps.skus = hash_create("crm sku index", 1024, &hctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	ps.fn_cxt = fn_cxt;
	ps.first = true;
	scan_lines(&ps);
	baskets = ps.baskets;
	if (baskets == 0)
	{
		SPI_finish();
		PG_RETURN_INT64(0);
	}
	min_count = (int64) ceil(min_support * (double) baskets - 1e-9);
	if (min_count < 1)
		min_count = 1;

	/* frequent skus, in name order */
	freq = MemoryContextAlloc(fn_cxt, sizeof(SkuEntry *) * Max(hash_get_num_entries(ps.skus), 1));
	hash_seq_init(&seq, ps.skus);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->baskets >= min_count)
			freq[K++] = e;
	if (K < 2)
	{
		SPI_finish();
		PG_RETURN_INT64(0);
	}
	qsort(freq, K, sizeof(SkuEntry *), cmp_entry_key);
	sku_datum = MemoryContextAlloc(fn_cxt, sizeof(Datum) * K);
	for (i = 0; i < K; i++)
	{
		freq[i]->idx = i;
		sku_datum[i] = PointerGetDatum(cstring_to_text(freq[i]->key));
	}

	batch = MemoryContextAllocZero(fn_cxt, sizeof(RuleBatch));
	batch->plan = SPI_prepare(crm_shard_sql("INSERT INTO crm.association_rule (antecedent, consequent, baskets, support, confidence, lift) "
							  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
							  "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))"),
							  6, ins_types);
	if (batch->plan == NULL)
		elog(ERROR, "SPI_prepare failed: %d", SPI_result);

	/* pass 2 and on: the triangle of pair counts, in parts that fit in work_mem */
	budget = (Size) work_mem * 1024;
	lo = 0;
	while (lo < K)
	{
		int64	   *rowoff = MemoryContextAlloc(fn_cxt, sizeof(int64) * (K + 1));
		int64		cells = 0;
		int			hi = lo;
		uint32	   *tri;

		while (hi < K && (cells + (K - 1 - hi)) * (int64) sizeof(uint32) <= (int64) budget)
		{
			rowoff[hi - lo] = cells;
			cells += K - 1 - hi;
			hi++;
		}
		if (hi == lo)
		{
			/* a single row always goes, even past work_mem */
			rowoff[0] = 0;
			cells = K - 1 - lo;
			hi = lo + 1;
		}
		tri = MemoryContextAllocHuge(fn_cxt, sizeof(uint32) * Max(cells, 1));
		memset(tri, 0, sizeof(uint32) * Max(cells, 1));

		ps.first = false;
		ps.baskets = 0;
		ps.lo = lo;
		ps.hi = hi;
		ps.rowoff = rowoff;
		ps.tri = tri;
		ps.cap = 64;
		ps.nitems = 0;
		ps.items = MemoryContextAlloc(fn_cxt, sizeof(int) * ps.cap);
		scan_lines(&ps);

		/* rules of this part */
		for (i = lo; i < hi; i++)
			for (j = i + 1; j < K; j++)
			{
				int64		c = tri[rowoff[i - lo] + (j - i - 1)];
				double		sup,
							conf_ij,
							conf_ji,
							lift;

				if (c < min_count)
					continue;
				sup = (double) c / (double) baskets;
				conf_ij = (double) c / (double) freq[i]->baskets;
				conf_ji = (double) c / (double) freq[j]->baskets;
				lift = (double) c * (double) baskets / ((double) freq[i]->baskets * (double) freq[j]->baskets);
				if (conf_ij >= min_confidence)
					add_rule(batch, sku_datum[i], sku_datum[j], c, sup, conf_ij, lift);
				if (conf_ji >= min_confidence)
					add_rule(batch, sku_datum[j], sku_datum[i], c, sup, conf_ji, lift);
			}
		pfree(tri);
		pfree(rowoff);
		pfree(ps.items);
		lo = hi;
	}
	flush_rules(batch);
	SPI_finish();
	PG_RETURN_INT64(batch->inserted);
}
