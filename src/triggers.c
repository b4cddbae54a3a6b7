/*
 * triggers.c
 *		Row triggers of the core data model.
 *
 * crm.fill_origin_customer keeps origin_customer_id, the customer a row
 * arrived on, beside customer_id, the golden customer it belongs to now.
 * Merges rewrite customer_id; origin_customer_id never changes, which is what
 * lets an unmerge put every row back exactly.  With the argument 'to_golden'
 * (orders, events) a row inserted for a record already merged into another
 * goes to the golden customer at once, so its points, stats and tags land
 * where the shopper is; origin_customer_id still names the record.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/inval.h"

#include "crm_ext.h"

/* ------------------------------------------------------------------------
 * Kept plans
 *
 * A plan kept across statements holds the OIDs of crm's types in its
 * parameter list.  DROP EXTENSION and CREATE EXTENSION (in this backend or
 * another) give the types new OIDs, and re-planning a kept plan would then
 * fail with "cache lookup failed for type".  So every kept plan is made by
 * crm_prepare_kept(), which remembers where it is stored, and
 * crm_kept_plans_check() frees them all (their slots become NULL) once
 * crm_ext is another installation than they were made for.  The extension
 * is looked up again only after types changed somewhere (pg_type has a
 * syscache callback, pg_extension none), which is rare.
 * ------------------------------------------------------------------------
 */
#define MAX_KEPT_PLANS 64
static SPIPlanPtr *kept_slots[MAX_KEPT_PLANS];
static int	n_kept_slots = 0;
static Oid	kept_for_extension = InvalidOid;
static uint64 type_generation = 1;
static uint64 checked_generation = 0;

static void
types_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	type_generation++;
}

void
crm_triggers_init(void)
{
	CacheRegisterSyscacheCallback(TYPEOID, types_changed, (Datum) 0);
}

/* Frees every kept plan when crm_ext is not the installation they were made for. */
void
crm_kept_plans_check(void)
{
	Oid			extension;
	int			i;

	if (checked_generation == type_generation)
		return;
	checked_generation = type_generation;
	extension = get_extension_oid("crm_ext", true);
	if (extension == kept_for_extension)
		return;
	for (i = 0; i < n_kept_slots; i++)
		if (*kept_slots[i] != NULL)
		{
			SPI_freeplan(*kept_slots[i]);
			*kept_slots[i] = NULL;
		}
	kept_for_extension = extension;
}

/*
 * The plan in *slot, prepared and kept on first use.  cursor_options choose
 * generic or custom planning (CURSOR_OPT_GENERIC_PLAN: re-planning for every
 * call would cost more than the work).  The caller is connected to SPI.
 * Callers that test their slots for NULL themselves call
 * crm_kept_plans_check() at their entry.
 */
SPIPlanPtr
crm_prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	SPIPlanPtr	plan;
	int			i;

	crm_kept_plans_check();
	if (*slot != NULL)
		return *slot;
	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	for (i = 0; i < n_kept_slots && kept_slots[i] != slot; i++)
		;
	if (i == n_kept_slots)
	{
		if (n_kept_slots == MAX_KEPT_PLANS)
			elog(ERROR, "more than %d kept plans", MAX_KEPT_PLANS);
		kept_slots[n_kept_slots++] = slot;
	}
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	*slot = plan;
	return plan;
}

/* Refuse to run unless called as a BEFORE ROW trigger on INSERT or UPDATE. */
static void
check_origin_trigger_call(FunctionCallInfo fcinfo)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() was not called by the trigger manager")));
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() must be a BEFORE INSERT OR UPDATE row trigger")));
	if (trigdata->tg_trigger->tgnargs > 1 ||
		(trigdata->tg_trigger->tgnargs == 1 && strcmp(trigdata->tg_trigger->tgargs[0], "to_golden") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() takes no argument or 'to_golden'")));
}

/*
 * Attribute number of a column that trigger function fn needs on rel, or an
 * ERROR naming both (the function was attached to a table it is not for).
 */
int
crm_trigger_attnum(Relation rel, const char *name, const char *fn)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs column \"%s\" on table \"%s\"",
						fn, name, RelationGetRelationName(rel))));
	return attnum;
}

static int
required_attnum(Relation rel, const char *name)
{
	return crm_trigger_attnum(rel, name, "crm.fill_origin_customer()");
}

/* Column positions, looked up once per trigger and query (fn_extra). */
typedef struct OriginColumns
{
	Oid			relid;
	int			cust_att;
	int			origin_att;
	/* to_golden: crm.customer, its primary key and merged-record index */
	bool		to_golden;
	bool		any_merged_checked;
	bool		any_merged;		/* checked at the statement's first row */
	Oid			customer_relid;
	Oid			pkey_oid;
	Oid			merged_idx_oid;
	AttrNumber	merged_att;
} OriginColumns;

static void
find_customer_indexes(OriginColumns *cols)
{
	Oid			nsp = get_namespace_oid("crm", false);
	Relation	crel;

	cols->customer_relid = get_relname_relid("customer", nsp);
	cols->merged_idx_oid = get_relname_relid("customer_merged_into_idx", nsp);
	if (!OidIsValid(cols->customer_relid) || !OidIsValid(cols->merged_idx_oid))
		elog(ERROR, "crm.customer or its index customer_merged_into_idx is missing");
	crel = table_open(cols->customer_relid, AccessShareLock);
	cols->pkey_oid = RelationGetPrimaryKeyIndex(crel);
	cols->merged_att = required_attnum(crel, "merged_into");
	table_close(crel, AccessShareLock);
	cols->any_merged_checked = false;
}

/*
 * A copy of the first row of rel through its index idx, with one int8
 * equality key on the index's first column when key is not NULL, or NULL
 * when there is none; t_self of the copy is the row's ctid.  Read with the
 * active snapshot and without the executor: lookups in triggers, where an
 * SPI query would cost several times as much.
 */
HeapTuple
crm_row_by_index(Relation rel, Oid idx, const Datum *key)
{
	Relation	irel = index_open(idx, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan = index_beginscan(rel, irel, GetActiveSnapshot(), key ? 1 : 0, 0);
	ScanKeyData skey;
	HeapTuple	tup = NULL;

	if (key)
		ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_INT8EQ, *key);
	index_rescan(scan, key ? &skey : NULL, key ? 1 : 0, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
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
 * The golden customer of record cust: its merged_into, or cust itself.  The
 * first row of a statement checks whether any record is merged at all, so
 * loads into a database without merges pay no lookup per row.
 */
static Datum
golden_of(OriginColumns *cols, Datum cust)
{
	Datum		merged_into;
	bool		isnull;

	/* fn_extra is new for each statement */
	if (!cols->any_merged_checked)
	{
		cols->any_merged = crm_first_row_by_index(cols->customer_relid, cols->merged_idx_oid, NULL,
												cols->merged_att, &merged_into, &isnull);
		cols->any_merged_checked = true;
	}
	if (!cols->any_merged)
		return cust;
	if (crm_first_row_by_index(cols->customer_relid, cols->pkey_oid, &cust, cols->merged_att,
							   &merged_into, &isnull) && !isnull)
		return merged_into;
	return cust;
}

static OriginColumns *
origin_columns(FunctionCallInfo fcinfo, Relation rel)
{
	OriginColumns *cols = (OriginColumns *) fcinfo->flinfo->fn_extra;

	if (cols == NULL || cols->relid != RelationGetRelid(rel))
	{
		cols = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(OriginColumns));
		cols->relid = RelationGetRelid(rel);
		cols->cust_att = required_attnum(rel, "customer_id");
		cols->origin_att = required_attnum(rel, "origin_customer_id");
		cols->to_golden = ((TriggerData *) fcinfo->context)->tg_trigger->tgnargs == 1;
		if (cols->to_golden)
			find_customer_indexes(cols);
		fcinfo->flinfo->fn_extra = cols;
	}
	return cols;
}

PG_FUNCTION_INFO_V1(crm_fill_origin_customer);

/*
 * crm.fill_origin_customer() RETURNS trigger
 *		INSERT: a NULL origin_customer_id becomes customer_id.
 *		UPDATE: origin_customer_id may not change.
 */
Datum
crm_fill_origin_customer(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	int			cust_att;
	int			origin_att;
	bool		isnull;
	Datum		origin;

	check_origin_trigger_call(fcinfo);
	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	cust_att = origin_columns(fcinfo, rel)->cust_att;
	origin_att = origin_columns(fcinfo, rel)->origin_att;

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		HeapTuple	oldtup = trigdata->tg_trigtuple;
		HeapTuple	newtup = trigdata->tg_newtuple;
		bool		oldnull;
		Datum		oldval = heap_getattr(oldtup, origin_att, tupdesc, &oldnull);

		origin = heap_getattr(newtup, origin_att, tupdesc, &isnull);
		if (isnull != oldnull ||
			(!isnull && DatumGetInt64(origin) != DatumGetInt64(oldval)))
			ereport(ERROR,
					(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
					 errmsg("origin_customer_id of \"%s\" cannot change",
							RelationGetRelationName(rel)),
					 errdetail("It records the customer the row arrived on; merges change customer_id only.")));
		return PointerGetDatum(newtup);
	}

	{
		OriginColumns *oc = origin_columns(fcinfo, rel);
		bool		origin_null;
		bool		cust_null;
		Datum		cust = heap_getattr(trigdata->tg_trigtuple, cust_att, tupdesc, &cust_null);
		Datum		golden = cust;
		int			cols[2] = {origin_att, cust_att};
		Datum		vals[2];
		bool		nulls[2];

		origin = heap_getattr(trigdata->tg_trigtuple, origin_att, tupdesc, &origin_null);
		if (oc->to_golden && !cust_null)
			golden = golden_of(oc, cust);
		if (!origin_null && golden == cust)
			return PointerGetDatum(trigdata->tg_trigtuple);
		/* A NULL customer_id stays NULL here and fails its NOT NULL check. */
		vals[0] = origin_null ? cust : origin;
		nulls[0] = origin_null ? cust_null : false;
		vals[1] = golden;
		nulls[1] = cust_null;
		return PointerGetDatum(heap_modify_tuple_by_cols(trigdata->tg_trigtuple, tupdesc,
														 2, cols, vals, nulls));
	}
}
