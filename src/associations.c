/*
 * associations.c
 *		Pair association rules ("frequently bought together") from paid order
 *		lines: crm.refresh_associations(min_support, min_confidence).
 *
 * Apriori for pairs.  A first query counts the baskets (paid orders with
 * lines) each sku is in and keeps the skus whose support reaches
 * min_support: only pairs of those can qualify.  Then the lines are read in
 * order_id order through a cursor, a batch at a time, and each basket's
 * pairs of frequent skus are counted in a triangular array of counters.
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
	const char *key;			/* points into the sku name array */
	int			idx;
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
	int			K,
				i,
				j,
				ret;
	Datum	   *sku_datum;
	char	  **sku_name;
	int64	   *sku_count;
	HASHCTL		hctl;
	HTAB	   *skus;
	Size		budget;
	int			lo;
	RuleBatch  *batch;
	Oid			ins_types[6] = {TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID};
	Oid			cnt_types[1] = {INT8OID};
	Datum		cnt_args[1];
	MemoryContext fn_cxt = CurrentMemoryContext;
	MemoryContext batch_cxt;
	bool		isnull;

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

	ret = SPI_execute("SELECT pg_catalog.count(*) FROM crm.orders o WHERE o.status OPERATOR(pg_catalog.=) 'paid' "
					  "AND EXISTS (SELECT 1 FROM crm.order_line l WHERE l.order_id OPERATOR(pg_catalog.=) o.order_id)",
					  true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "counting baskets failed: %d", ret);
	baskets = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);

	ret = SPI_execute("DELETE FROM crm.association_rule", false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "clearing association rules failed: %d", ret);
	if (baskets == 0)
	{
		SPI_finish();
		PG_RETURN_INT64(0);
	}
	min_count = (int64) ceil(min_support * (double) baskets - 1e-9);
	if (min_count < 1)
		min_count = 1;

	/* frequent skus, in name order */
	cnt_args[0] = Int64GetDatum(min_count);
	ret = SPI_execute_with_args("SELECT l.sku, pg_catalog.count(DISTINCT l.order_id) "
								"FROM crm.order_line l JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
								"WHERE o.status OPERATOR(pg_catalog.=) 'paid' "
								"GROUP BY l.sku HAVING pg_catalog.count(DISTINCT l.order_id) OPERATOR(pg_catalog.>=) $1 "
								"ORDER BY l.sku COLLATE \"C\"",
								1, cnt_types, cnt_args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "counting skus failed: %d", ret);
	if (SPI_processed > (uint64) (MaxAllocSize / sizeof(int64)) / 4)
		ereport(ERROR,
				errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				errmsg("too many frequent skus"),
				errhint("Raise min_support."));
	K = (int) SPI_processed;
	{
		MemoryContext old = MemoryContextSwitchTo(fn_cxt);

		sku_datum = palloc(sizeof(Datum) * Max(K, 1));
		sku_name = palloc(sizeof(char *) * Max(K, 1));
		sku_count = palloc(sizeof(int64) * Max(K, 1));
		for (i = 0; i < K; i++)
		{
			sku_datum[i] = PointerGetDatum(DatumGetTextPCopy(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
			sku_name[i] = TextDatumGetCString(sku_datum[i]);
			sku_count[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		}
		MemoryContextSwitchTo(old);
	}
	SPI_freetuptable(SPI_tuptable);
	if (K < 2)
	{
		SPI_finish();
		PG_RETURN_INT64(0);
	}

	memset(&hctl, 0, sizeof(hctl));
	hctl.keysize = sizeof(char *);
	hctl.entrysize = sizeof(SkuEntry);
	hctl.hash = sku_hash;
	hctl.match = sku_match;
	hctl.hcxt = fn_cxt;
	skus = hash_create("crm sku index", K, &hctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	for (i = 0; i < K; i++)
	{
		SkuEntry   *e = hash_search(skus, &sku_name[i], HASH_ENTER, NULL);

		e->idx = i;
	}

	batch = MemoryContextAllocZero(fn_cxt, sizeof(RuleBatch));
	batch->plan = SPI_prepare("INSERT INTO crm.association_rule (antecedent, consequent, baskets, support, confidence, lift) "
							  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
							  "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))",
							  6, ins_types);
	if (batch->plan == NULL)
		elog(ERROR, "SPI_prepare failed: %d", SPI_result);
	batch_cxt = AllocSetContextCreate(fn_cxt, "crm associations batch", ALLOCSET_DEFAULT_SIZES);

	/* the triangle, in parts that fit in work_mem */
	budget = (Size) work_mem * 1024;
	lo = 0;
	while (lo < K)
	{
		int64	   *rowoff = MemoryContextAlloc(fn_cxt, sizeof(int64) * (K + 1));
		int64		cells = 0;
		int			hi = lo;
		uint32	   *tri;
		Portal		portal;
		int64		cur_order = -1;
		int		   *items;
		int			nitems = 0,
					cap = 64;

		while (hi < K && (cells + (K - 1 - hi)) * (int64) sizeof(uint32) <= (int64) budget)
		{
			rowoff[hi - lo] = cells;
			cells += K - 1 - hi;
			hi++;
		}
		if (hi == lo)
		{
			/* one row always fits: work_mem is at least 64kB */
			rowoff[0] = 0;
			cells = K - 1 - lo;
			hi = lo + 1;
		}
		tri = MemoryContextAllocHuge(fn_cxt, sizeof(uint32) * Max(cells, 1));
		memset(tri, 0, sizeof(uint32) * Max(cells, 1));
		items = MemoryContextAlloc(fn_cxt, sizeof(int) * cap);

		portal = SPI_cursor_open_with_args(NULL,
										   "SELECT l.order_id, l.sku FROM crm.order_line l "
										   "JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
										   "WHERE o.status OPERATOR(pg_catalog.=) 'paid' ORDER BY l.order_id",
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
				int64		oid = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
				char	   *sku = TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
				SkuEntry   *e;

				if (oid != cur_order)
				{
					count_basket(items, nitems, lo, hi, rowoff, tri);
					nitems = 0;
					cur_order = oid;
				}
				e = hash_search(skus, &sku, HASH_FIND, NULL);
				if (e != NULL)
				{
					if (nitems == cap)
					{
						if (cap >= 1000000)
							ereport(ERROR,
									errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
									errmsg("an order has more than %d lines", cap));
						cap *= 2;
						items = repalloc(items, sizeof(int) * cap);
					}
					items[nitems++] = e->idx;
				}
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(batch_cxt);
			SPI_freetuptable(SPI_tuptable);
		}
		count_basket(items, nitems, lo, hi, rowoff, tri);
		SPI_cursor_close(portal);

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
				conf_ij = (double) c / (double) sku_count[i];
				conf_ji = (double) c / (double) sku_count[j];
				lift = (double) c * (double) baskets / ((double) sku_count[i] * (double) sku_count[j]);
				if (conf_ij >= min_confidence)
					add_rule(batch, sku_datum[i], sku_datum[j], c, sup, conf_ij, lift);
				if (conf_ji >= min_confidence)
					add_rule(batch, sku_datum[j], sku_datum[i], c, sup, conf_ji, lift);
			}
		pfree(tri);
		pfree(rowoff);
		pfree(items);
		lo = hi;
	}
	flush_rules(batch);
	SPI_finish();
	PG_RETURN_INT64(batch->inserted);
}
