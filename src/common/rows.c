/*
 * rows.c
 *		Reading crm's rows and relations without the executor: lookups by
 *		key inside triggers, where an SPI query would cost several times as
 *		much, and relations by name; and a query's rows a batch at a time.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "crm_ext.h"

/*
 * A copy of the first row of rel through its index idx, with one int8 (or int4)
 * equality key on the index's first column when key is not NULL, or NULL
 * when there is none; t_self of the copy is the row's ctid.  Read with the
 * active snapshot and without the executor: lookups in triggers, where an
 * SPI query would cost several times as much.
 */
HeapTuple
crm_row_by_index(Relation rel, Oid idx, const Datum *key)
{
	return crm_row_by_index_in(rel, idx, key, ForwardScanDirection);
}

/* crm_row_by_index, from either end of the index: the last row when backward. */
HeapTuple
crm_row_by_index_in(Relation rel, Oid idx, const Datum *key, ScanDirection direction)
{
	return crm_row_by_index_at(rel, idx, key, direction, GetActiveSnapshot());
}

/* crm_row_by_index_in as snapshot snap sees the table. */
HeapTuple
crm_row_by_index_at(Relation rel, Oid idx, const Datum *key, ScanDirection direction, Snapshot snap)
{
	Relation	irel = index_open(idx, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan = index_beginscan(rel, irel, snap, key ? 1 : 0, 0);
	ScanKeyData skey;
	HeapTuple	tup = NULL;

	/* keys are bigint, or integer (crm.store) */
	if (key)
		ScanKeyInit(&skey, 1, BTEqualStrategyNumber,
					TupleDescAttr(RelationGetDescr(irel), 0)->atttypid == INT4OID ? F_INT4EQ : F_INT8EQ, *key);
	index_rescan(scan, key ? &skey : NULL, key ? 1 : 0, NULL, 0);
	if (index_getnext_slot(scan, direction, slot))
		tup = ExecCopySlotHeapTuple(slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(irel, AccessShareLock);
	return tup;
}

/* Column att of crm_row_by_index's row of table relid: false when none. */
bool
crm_first_row_by_index(Oid relid, Oid idx, const Datum *key, AttrNumber att,
					   Datum *value, bool *isnull)
{
	Relation	rel = table_open(relid, AccessShareLock);
	HeapTuple	tup = crm_row_by_index(rel, idx, key);
	bool		found = tup != NULL;

	if (found)
	{
		Assert(TupleDescAttr(RelationGetDescr(rel), att - 1)->attbyval);
		*value = heap_getattr(tup, att, RelationGetDescr(rel), isnull);
		heap_freetuple(tup);
	}
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * crm.customer's oid, primary key and merged_into column, for crm_merge_walk;
 * fn names the caller in the error when the column is missing.  Callers keep
 * the result per FmgrInfo or per configuration generation.
 */
void
crm_customer_keys(CrmCustomerKeys *keys, const char *fn)
{
	Relation	crel;

	keys->relid = crm_relid("customer");
	crel = table_open(keys->relid, AccessShareLock);
	keys->pkey = RelationGetPrimaryKeyIndex(crel);
	keys->merged_att = crm_trigger_attnum(crel, "merged_into", fn);
	table_close(crel, AccessShareLock);
}

/*
 * Walks crm.customer.merged_into up from record through the table's primary
 * key (keys, crm_customer_keys), at most CRM_MERGE_WALK_LIMIT
 * links, stopping early at target (0: none).  Returns where the walk ended:
 * target when reached, else the golden record at the end of the chain, or 0
 * when record does not exist.  Merges keep chains one link long; longer ones
 * are left by older releases.
 */
int64
crm_merge_walk(const CrmCustomerKeys *keys, int64 record, int64 target)
{
	return crm_merge_walk_at(keys, record, target, GetActiveSnapshot(), NULL);
}

/*
 * crm_merge_walk as snapshot snap sees crm.customer; with last_tid, the
 * ctid of the row the walk ended on (src/common/customer.c locks it).
 */
int64
crm_merge_walk_at(const CrmCustomerKeys *keys, int64 record, int64 target,
				  Snapshot snap, ItemPointer last_tid)
{
	Relation	crel = table_open(keys->relid, AccessShareLock);
	Datum		id = Int64GetDatum(record);
	int64		last = 0;

	for (int depth = 0;; depth++)
	{
		HeapTuple	tup = crm_row_by_index_at(crel, keys->pkey, &id, ForwardScanDirection, snap);
		bool		isnull = true;
		Datum		next = (Datum) 0;

		if (tup == NULL)
			break;
		last = DatumGetInt64(id);
		if (last_tid)
			*last_tid = tup->t_self;
		next = heap_getattr(tup, keys->merged_att, RelationGetDescr(crel), &isnull);
		heap_freetuple(tup);
		if (isnull || last == target || depth == CRM_MERGE_WALK_LIMIT)
			break;
		id = next;
	}
	table_close(crel, AccessShareLock);
	return last;
}

/*
 * Runs the read-only query sql through a cursor and calls each_row(tup,
 * desc, arg) for every row it returns, a batch at a time, so a result of
 * millions of rows is never held whole.  each_row runs in the caller's
 * memory context (what it allocates outlives SPI); tup and its values are
 * valid only during the call.  Whole-table reads that go through Citus on a
 * coordinator use it, where one node scans the table itself.
 */
#define EACH_ROW_BATCH 10000
void
crm_each_row(const char *sql, int nargs, Oid *types, Datum *args, CrmRowFn each_row, void *arg)
{
	MemoryContext caller = CurrentMemoryContext;
	Portal		portal;

	SPI_connect();
	portal = SPI_cursor_open_with_args(NULL, sql, nargs, types, args, NULL, true, 0);
	for (;;)
	{
		MemoryContext spi;

		SPI_cursor_fetch(portal, true, EACH_ROW_BATCH);
		if (SPI_processed == 0)
			break;
		spi = MemoryContextSwitchTo(caller);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			CHECK_FOR_INTERRUPTS();
			each_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);
		}
		MemoryContextSwitchTo(spi);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
}
