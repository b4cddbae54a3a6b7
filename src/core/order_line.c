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
CRM_SHARD_TRIGGER(crm_number_order_line);

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
 * the customer it has left.  Returns the order's customer_id.
 */
static int64
lock_order(Relation lrel, Relation orel, Oid pkey, AttrNumber key_att, AttrNumber cust_att,
		   TupleTableSlot *slot, int64 order_id)
{
	HeapTuple	seen;
	bool		isnull;
	int64		cust;

	switch (crm_lock_parent(orel, pkey, key_att, Int64GetDatum(order_id), LockTupleShare, slot, &seen))
	{
		case CRM_PARENT_OURS:
			cust = DatumGetInt64(heap_getattr(seen, cust_att, RelationGetDescr(orel), &isnull));
			heap_freetuple(seen);
			return cust;		/* no merge can have moved it */
		case CRM_PARENT_MISSING:
			crm_report_missing_parent(lrel, "order_id", "orders", order_id);
		case CRM_PARENT_LOCKED:
			break;
	}
	cust = DatumGetInt64(heap_getattr(seen, cust_att, RelationGetDescr(orel), &isnull));
	heap_freetuple(seen);
	if (DatumGetInt64(slot_getattr(slot, cust_att, &isnull)) != cust)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("order %lld moved to another customer while its lines were inserted", (long long) order_id),
				 errdetail("A merge or unmerge of its customer committed meanwhile."),
				 errhint("Retry the transaction.")));
	return cust;
}

/* A line's order and the customer_id it carries (has_customer false: NULL). */
typedef struct LineOrder
{
	int64		order_id;
	int64		customer_id;
	bool		has_customer;
} LineOrder;

static int
cmp_line_order(const void *a, const void *b)
{
	const LineOrder *x = a;
	const LineOrder *y = b;

	if (x->order_id != y->order_id)
		return x->order_id < y->order_id ? -1 : 1;
	if (x->has_customer != y->has_customer)
		return x->has_customer ? 1 : -1;
	if (x->customer_id != y->customer_id)
		return x->customer_id < y->customer_id ? -1 : 1;
	return 0;
}

/* A line that carries another customer than its order's: the (order_id, customer_id) reference fails. */
static void
report_wrong_customer(Relation lrel, int64 order_id, int64 line_customer, int64 order_customer)
{
	ereport(ERROR,
			(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
			 errmsg("insert or update on table \"%s\" violates foreign key constraint \"%s_customer_id_fkey\"",
					crm_table_name(lrel), crm_table_name(lrel)),
			 errdetail("Key (order_id, customer_id)=(%lld, %lld) is not present in table \"orders\": order %lld belongs to customer %lld.",
					   (long long) order_id, (long long) line_customer, (long long) order_id, (long long) order_customer),
			 errhint("Give the line its order's customer_id, or leave customer_id NULL on a single node.")));
}

PG_FUNCTION_INFO_V1(crm_lock_line_orders);

/*
 * crm.lock_line_orders() RETURNS trigger
 *		AFTER INSERT or UPDATE statement trigger on crm.order_line
 *		(REFERENCING NEW TABLE AS lock_new), named to fire before the loyalty
 *		and stats triggers: the orders of the lines must exist (the
 *		reference order_line.order_id -> orders, checked once per order and
 *		statement), a line's customer_id, when given, must be its order's,
 *		and the orders are locked FOR SHARE (step 2 of DEVELOPER.md's lock
 *		order), so a merge moving them waits for the category bonus and stats
 *		of the lines, or they for the merge, and the order cannot be deleted
 *		under them.  Lines inserted with their order take no lock.
 */
CRM_SHARD_TRIGGER(crm_lock_line_orders);

static Datum
crm_lock_line_orders_body(PG_FUNCTION_ARGS)
{
	const char *fn = "crm.lock_line_orders()";
	TriggerData *td = crm_check_trigger(fcinfo, fn, CRM_TG_AFTER, CRM_TG_STATEMENT,
										CRM_TG_INSERT | CRM_TG_UPDATE, 0);
	int			order_att = crm_trigger_attnum(td->tg_relation, "order_id", fn);
	int			line_cust_att = crm_trigger_attnum(td->tg_relation, "customer_id", fn);
	Tuplestorestate *ts = td->tg_newtable;
	TupleTableSlot *lslot;
	TupleTableSlot *oslot;
	Relation	orel;
	Oid			pkey;
	AttrNumber	cust_att;
	AttrNumber	key_att;
	LineOrder  *lines;
	int			n = 0;
	int64		order_customer = 0;

	if (ts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs its transition table", fn),
				 errhint("Create the trigger with REFERENCING NEW TABLE AS lock_new.")));
	lines = palloc(sizeof(LineOrder) * Max(tuplestore_tuple_count(ts), 1));
	lslot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, lslot))
	{
		bool		isnull;
		Datum		d = slot_getattr(lslot, order_att, &isnull);
		Datum		c;

		if (isnull)
			continue;
		lines[n].order_id = DatumGetInt64(d);
		c = slot_getattr(lslot, line_cust_att, &isnull);
		lines[n].has_customer = !isnull;
		lines[n++].customer_id = isnull ? 0 : DatumGetInt64(c);
	}
	ExecDropSingleTupleTableSlot(lslot);
	qsort(lines, n, sizeof(LineOrder), cmp_line_order);

	orel = table_open(crm_relid("orders"), RowShareLock);
	pkey = RelationGetPrimaryKeyIndex(orel);
	cust_att = crm_trigger_attnum(orel, "customer_id", fn);
	key_att = crm_trigger_attnum(orel, "order_id", fn);
	oslot = table_slot_create(orel, NULL);
	for (int i = 0; i < n; i++)
	{
		if (i == 0 || lines[i].order_id != lines[i - 1].order_id)
			order_customer = lock_order(td->tg_relation, orel, pkey, key_att, cust_att, oslot, lines[i].order_id);
		if (lines[i].has_customer && lines[i].customer_id != order_customer)
			report_wrong_customer(td->tg_relation, lines[i].order_id, lines[i].customer_id, order_customer);
	}
	ExecDropSingleTupleTableSlot(oslot);
	table_close(orel, NoLock);
	PG_RETURN_POINTER(NULL);
}
