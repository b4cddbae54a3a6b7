/*
 * identity.c
 *		Online identity stitching: crm.identity_stitch_trigger(), an AFTER
 *		INSERT row trigger on crm.identity, and the setting
 *		crm.stitch_on_insert that turns it off.
 *
 * The hot path is an insert of an identifier nobody else holds: one cached
 * plan probes the (kind, value, customer_id) unique index and the customer's
 * merged_into, and the trigger returns.  Only when another customer holds
 * the value (or the row was inserted for a merged-away customer) does it
 * call crm.stitch_identity(identity_id), which applies the kind's policy and
 * merges (src/identity.sql).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/rel.h"

#include "crm_ext.h"
#include "identity.h"

bool		crm_stitch_on_insert = true;

static SPIPlanPtr probe_plan = NULL;
static SPIPlanPtr stitch_plan = NULL;

void
crm_identity_init(void)
{
	DefineCustomBoolVariable("crm.stitch_on_insert",
							 "Stitch identities as they are inserted into crm.identity.",
							 "When off, inserted identifiers are not linked until crm.stitch_identities() runs.",
							 &crm_stitch_on_insert,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

static void
check_stitch_trigger_call(FunctionCallInfo fcinfo)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.identity_stitch_trigger() was not called by the trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.identity_stitch_trigger() must be an AFTER INSERT row trigger")));
	if (trigdata->tg_trigger->tgnargs != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.identity_stitch_trigger() takes no arguments")));
}

static int
stitch_attnum(Relation rel, const char *name)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.identity_stitch_trigger() needs column \"%s\" on table \"%s\"",
						name, RelationGetRelationName(rel))));
	return attnum;
}

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

PG_FUNCTION_INFO_V1(crm_identity_stitch_trigger);

/*
 * crm.identity_stitch_trigger() RETURNS trigger
 *		AFTER INSERT row trigger on crm.identity: links the new identifier's
 *		customer with the other customers holding the same (kind, value).
 */
Datum
crm_identity_stitch_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	tup;
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull;
	bool		found;
	int			ret;

	check_stitch_trigger_call(fcinfo);
	if (!crm_stitch_on_insert)
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	tup = trigdata->tg_trigtuple;
	args[0] = heap_getattr(tup, stitch_attnum(rel, "kind"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	args[1] = heap_getattr(tup, stitch_attnum(rel, "value"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	args[2] = heap_getattr(tup, stitch_attnum(rel, "customer_id"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);

	/*
	 * Two sessions inserting the same (kind, value) for different customers
	 * would not see each other's row: serialize them on the value, so the
	 * second one finds the first's committed row and links to it.
	 */
	{
		text	   *k = DatumGetTextPP(args[0]);
		text	   *v = DatumGetTextPP(args[1]);
		uint32		hk = hash_any((unsigned char *) VARDATA_ANY(k), VARSIZE_ANY_EXHDR(k));
		uint32		hv = hash_any((unsigned char *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v));

		DirectFunctionCall2(pg_advisory_xact_lock_int4,
							Int32GetDatum((int32) (hk ^ 0x43524d49)),	/* "CRMI" */
							Int32GetDatum((int32) hv));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (probe_plan == NULL)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};

		probe_plan = prepare_kept(
			"SELECT EXISTS (SELECT 1 FROM crm.identity i"
			"                WHERE i.kind OPERATOR(pg_catalog.=) $1"
			"                  AND i.value OPERATOR(pg_catalog.=) $2"
			"                  AND i.customer_id OPERATOR(pg_catalog.<>) $3)"
			"    OR EXISTS (SELECT 1 FROM crm.customer c"
			"                WHERE c.customer_id OPERATOR(pg_catalog.=) $3"
			"                  AND c.merged_into IS NOT NULL)",
			3, types);
	}
	ret = SPI_execute_plan(probe_plan, args, nulls, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "identity probe failed: %s", SPI_result_code_string(ret));
	found = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	if (found && !isnull)
	{
		Datum		idarg[1];
		char		idnull[1] = {' '};

		idarg[0] = heap_getattr(tup, stitch_attnum(rel, "identity_id"), tupdesc, &isnull);
		if (!isnull)
		{
			if (stitch_plan == NULL)
			{
				Oid			types[1] = {INT8OID};

				stitch_plan = prepare_kept("SELECT crm.stitch_identity($1)", 1, types);
			}
			ret = SPI_execute_plan(stitch_plan, idarg, idnull, false, 1);
			if (ret != SPI_OK_SELECT)
				elog(ERROR, "crm.stitch_identity failed: %s", SPI_result_code_string(ret));
		}
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
