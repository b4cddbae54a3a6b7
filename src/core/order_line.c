/*
 * order_line.c
 *		Line numbers for order lines inserted without one.
 *
 * crm.order_line's key is (order_id, line_no).  A BEFORE INSERT row trigger
 * that fires only WHEN (NEW.line_no IS NULL) numbers such a line after the
 * highest line the order had before the statement and the lines this
 * statement numbered, so an application may insert an order's lines without
 * counting them.  Lines inserted by this statement are not visible to its
 * snapshot, so the next number per order is remembered for the rest of the
 * statement (explicit numbers in the same statement are not seen: mix them
 * and a collision is a key violation).  Two transactions adding unnumbered lines
 * to one order at the same time collide on the key (23505): an order's
 * lines arrive in one statement.
 *
 * crm.lock_line_orders checks that the orders of the lines exist and locks
 * those inserted in an earlier transaction, for the lock order (DEVELOPER.md).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

#include "crm_ext.h"

typedef struct NextLine
{
	int64		order_id;		/* hash key */
	char		status;			/* simplehash */
	int32		next;			/* the number the order's next line gets */
} NextLine;

#define SH_PREFIX nextline
#define SH_ELEMENT_TYPE NextLine
#define SH_KEY order_id
#include "int64_hash.h"

/* What the trigger keeps for one statement (fn_extra). */
typedef struct LineNumbering
{
	int			order_att;
	int			line_att;
	Oid			pkey;
	nextline_hash *next;
} LineNumbering;

static LineNumbering *
line_numbering(FunctionCallInfo fcinfo, Relation rel)
{
	LineNumbering *ln = (LineNumbering *) fcinfo->flinfo->fn_extra;

	if (ln == NULL)
	{
		const char *fn = "crm.number_order_line()";

		ln = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(LineNumbering));
		ln->order_att = crm_trigger_attnum(rel, "order_id", fn);
		ln->line_att = crm_trigger_attnum(rel, "line_no", fn);
		ln->pkey = RelationGetPrimaryKeyIndex(rel);
		if (!OidIsValid(ln->pkey))
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("%s needs a primary key (order_id, line_no) on table \"%s\"",
							fn, RelationGetRelationName(rel))));
		ln->next = nextline_create(fcinfo->flinfo->fn_mcxt, 64, NULL);
		fcinfo->flinfo->fn_extra = ln;
	}
	return ln;
}

/* The highest line number order_id has in the table (0 when none). */
static int32
last_line(Relation rel, LineNumbering *ln, int64 order_id)
{
	Datum		key = Int64GetDatum(order_id);
	HeapTuple	tup = crm_row_by_index_in(rel, ln->pkey, &key, BackwardScanDirection);
	int32		last = 0;
	bool		isnull;

	if (tup != NULL)
	{
		Datum		d = heap_getattr(tup, ln->line_att, RelationGetDescr(rel), &isnull);

		if (!isnull)
			last = DatumGetInt32(d);
		heap_freetuple(tup);
	}
	return last;
}

PG_FUNCTION_INFO_V1(crm_number_order_line);

/*
 * crm.number_order_line() RETURNS trigger
 *		BEFORE INSERT row trigger on crm.order_line: a NULL line_no becomes
 *		the order's next line number.
 */
static Datum crm_number_order_line_body(PG_FUNCTION_ARGS);

Datum
crm_number_order_line(PG_FUNCTION_ARGS)
{
	/* on a Citus shard: with the co-located shards (src/common/shard.c) */
	return crm_on_shard(fcinfo, crm_number_order_line_body);
}

static Datum
crm_number_order_line_body(PG_FUNCTION_ARGS)
{
	TriggerData *td = crm_check_trigger(fcinfo, "crm.number_order_line()", CRM_TG_BEFORE, CRM_TG_ROW,
										CRM_TG_INSERT, 0);
	Relation	rel = td->tg_relation;
	LineNumbering *ln = line_numbering(fcinfo, rel);
	HeapTuple	tup = td->tg_trigtuple;
	bool		isnull;
	Datum		order_id;
	NextLine   *entry;
	bool		found;
	int			col;
	Datum		value;
	bool		null = false;

	(void) heap_getattr(tup, ln->line_att, RelationGetDescr(rel), &isnull);
	if (!isnull)
		return PointerGetDatum(tup);
	order_id = heap_getattr(tup, ln->order_att, RelationGetDescr(rel), &isnull);
	if (isnull)
		return PointerGetDatum(tup);	/* fails its NOT NULL check */
	entry = nextline_insert(ln->next, DatumGetInt64(order_id), &found);
	if (!found)
		entry->next = last_line(rel, ln, DatumGetInt64(order_id)) + 1;
	if (entry->next <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("order %lld has no line number left", (long long) DatumGetInt64(order_id))));
	col = ln->line_att;
	value = Int32GetDatum(entry->next);
	entry->next++;
	return PointerGetDatum(heap_modify_tuple_by_cols(tup, RelationGetDescr(rel), 1, &col, &value, &null));
}

/*
 * Lock FOR SHARE the order with key order_id (through pkey), unless this
 * transaction inserted or changed it; a foreign-key violation (23503) for
 * the lines when there is no such order (references.c: the lock is the
 * reference's too).  A serialization failure when a concurrent merge or
 * unmerge moved it to another customer while we waited: the triggers after
 * this one read the order with the statement's snapshot and would credit
 * the customer it has left.
 */
static void
lock_order(Relation lrel, Relation orel, Oid pkey, AttrNumber key_att, AttrNumber cust_att,
		   TupleTableSlot *slot, int64 order_id)
{
	HeapTuple	seen;
	bool		isnull;
	Datum		cust;

	switch (crm_lock_parent(orel, pkey, key_att, Int64GetDatum(order_id), LockTupleShare, slot, &seen))
	{
		case CRM_PARENT_OURS:
			heap_freetuple(seen);
			return;				/* no merge can have moved it */
		case CRM_PARENT_MISSING:
			crm_report_missing_parent(lrel, "order_id", "orders", order_id);
		case CRM_PARENT_LOCKED:
			break;
	}
	cust = heap_getattr(seen, cust_att, RelationGetDescr(orel), &isnull);
	heap_freetuple(seen);
	if (!isnull && DatumGetInt64(slot_getattr(slot, cust_att, &isnull)) != DatumGetInt64(cust))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("order %lld moved to another customer while its lines were inserted", (long long) order_id),
				 errdetail("A merge or unmerge of its customer committed meanwhile."),
				 errhint("Retry the transaction.")));
}

PG_FUNCTION_INFO_V1(crm_lock_line_orders);

/*
 * crm.lock_line_orders() RETURNS trigger
 *		AFTER INSERT or UPDATE statement trigger on crm.order_line
 *		(REFERENCING NEW TABLE AS lock_new), named to fire before the loyalty
 *		and stats triggers: the orders the lines belong to must exist (the
 *		reference order_line.order_id -> orders, checked once per order and
 *		statement) and are locked FOR SHARE (step 2 of DEVELOPER.md's lock
 *		order), so a merge moving them waits for the category bonus and stats
 *		of the lines, or they for the merge, and the order cannot be deleted
 *		under them.  Lines inserted with their order take no lock.
 */
static Datum crm_lock_line_orders_body(PG_FUNCTION_ARGS);

Datum
crm_lock_line_orders(PG_FUNCTION_ARGS)
{
	/* on a Citus shard: with the co-located shards (src/common/shard.c) */
	return crm_on_shard(fcinfo, crm_lock_line_orders_body);
}

static Datum
crm_lock_line_orders_body(PG_FUNCTION_ARGS)
{
	const char *fn = "crm.lock_line_orders()";
	TriggerData *td = crm_check_trigger(fcinfo, fn, CRM_TG_AFTER, CRM_TG_STATEMENT,
										CRM_TG_INSERT | CRM_TG_UPDATE, 0);
	int			order_att = crm_trigger_attnum(td->tg_relation, "order_id", fn);
	Tuplestorestate *ts = td->tg_newtable;
	TupleTableSlot *lslot;
	TupleTableSlot *oslot;
	Relation	orel;
	Oid			pkey;
	AttrNumber	cust_att;
	AttrNumber	key_att;
	int64	   *ids;
	int			n = 0;

	if (ts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs its transition table", fn),
				 errhint("Create the trigger with REFERENCING NEW TABLE AS lock_new.")));
	ids = palloc(sizeof(int64) * Max(tuplestore_tuple_count(ts), 1));
	lslot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, lslot))
	{
		bool		isnull;
		Datum		d = slot_getattr(lslot, order_att, &isnull);

		if (!isnull)
			ids[n++] = DatumGetInt64(d);
	}
	ExecDropSingleTupleTableSlot(lslot);
	crm_sort_int64(ids, n);

	orel = table_open(crm_relid("orders"), RowShareLock);
	pkey = RelationGetPrimaryKeyIndex(orel);
	cust_att = crm_trigger_attnum(orel, "customer_id", fn);
	key_att = crm_trigger_attnum(orel, "order_id", fn);
	oslot = table_slot_create(orel, NULL);
	for (int i = 0; i < n; i++)
		if (i == 0 || ids[i] != ids[i - 1])
			lock_order(td->tg_relation, orel, pkey, key_att, cust_att, oslot, ids[i]);
	ExecDropSingleTupleTableSlot(oslot);
	table_close(orel, NoLock);
	PG_RETURN_POINTER(NULL);
}
