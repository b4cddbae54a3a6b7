/*
 * triggers.c
 *		Row triggers of the core data model.
 *
 * crm.fill_origin_customer keeps origin_customer_id, the customer a row
 * arrived on, beside customer_id, the golden customer it belongs to now.
 * Merges rewrite customer_id; origin_customer_id never changes, which is what
 * lets an unmerge put every row back exactly.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "crm_ext.h"

/* Nothing to set up per backend yet; later concepts hook in here. */
void
crm_triggers_init(void)
{
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
	if (trigdata->tg_trigger->tgnargs != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() takes no arguments")));
}

/* Attribute number of a column the trigger needs, or an ERROR naming it. */
static int
required_attnum(Relation rel, const char *name)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() needs column \"%s\" on table \"%s\"",
						name, RelationGetRelationName(rel))));
	return attnum;
}

/* Column positions, looked up once per trigger and query (fn_extra). */
typedef struct OriginColumns
{
	Oid			relid;
	int			cust_att;
	int			origin_att;
} OriginColumns;

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

	origin = heap_getattr(trigdata->tg_trigtuple, origin_att, tupdesc, &isnull);
	if (!isnull)
		return PointerGetDatum(trigdata->tg_trigtuple);
	else
	{
		Datum		cust = heap_getattr(trigdata->tg_trigtuple, cust_att, tupdesc, &isnull);
		int			cols[1] = {origin_att};
		Datum		vals[1] = {cust};
		bool		nulls[1] = {isnull};

		/* A NULL customer_id stays NULL here and fails its NOT NULL check. */
		return PointerGetDatum(heap_modify_tuple_by_cols(trigdata->tg_trigtuple, tupdesc,
														 1, cols, vals, nulls));
	}
}
