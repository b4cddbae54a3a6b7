/*
 * identity.c
 *		Online identity stitching: crm.identity_stitch_trigger(), an AFTER
 *		INSERT row trigger on crm.identity, and the setting
 *		crm.stitch_on_insert that turns it off.
 *
 * The hot path is an insert of an identifier nobody else holds: one cached
 * generic plan probes the (kind, value, customer_id) unique index and the
 * customer's merged_into, and the trigger returns.  When somebody else
 * holds the value, crm_identity_may_link (identity_policy.c) checks the
 * policy (blocklist, weak kinds' limit, strong kinds' hubs); only when the value may link or is a
 * hub to review (or the row is on a merged-away customer) does the trigger call
 * crm.stitch_identity(identity_id), which merges (src/identity/identity.sql).
 * A row inserted for a merged-away record arrives here on its golden already
 * (crm.fill_origin_customer('stitch'), src/core/origin.c), unless the golden
 * holds the value and it stays parked on its record.
 *
 * When no merge was made, the row's golden customer is locked FOR SHARE at
 * the end (src/common/customer.c): a merge of the row's customer that was in
 * flight did not see the new row and left it on the merged record, so once
 * the lock is granted the row follows the merge (crm.stitch_identity moves
 * it).  Not up front: two inserts sharing a value would each hold the lock
 * the other's merge needs.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "storage/lmgr.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/builtins.h"
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
	(void) crm_check_trigger(fcinfo, "crm.identity_stitch_trigger()", CRM_TG_AFTER, CRM_TG_ROW, CRM_TG_INSERT, 0);
}

static int
stitch_attnum(Relation rel, const char *name)
{
	return crm_trigger_attnum(rel, name, "crm.identity_stitch_trigger()");
}

/* Always the generic plan: re-planning on every row would cost more. */
static SPIPlanPtr
prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return crm_prepare_kept(slot, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/*
 * Another transaction may be inserting the same (kind, value) for another
 * customer right now; neither would see the other's row and the link would
 * be lost.  Look with a dirty snapshot (as unique checks do): when an older
 * transaction holds an uncommitted row of this value, wait for it to end and
 * return true, so the caller probes again.  Only the younger of two such
 * transactions waits, so they cannot deadlock.
 */
static bool
waited_for_concurrent_holder(Relation rel, Datum kind, Datum value)
{
	Oid			indexoid = crm_table_index(rel, "identity_unique_per_customer");
	Relation	idx;
	SnapshotData dirty;
	ScanKeyData keys[2];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	TransactionId xwait = InvalidTransactionId;
	TransactionId mine = GetTopTransactionIdIfAny();
	ItemPointerData tid;

	if (!OidIsValid(indexoid))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.identity_stitch_trigger() needs index \"identity_unique_per_customer\" on table \"%s\"",
						RelationGetRelationName(rel))));
	idx = index_open(indexoid, AccessShareLock);
	InitDirtySnapshot(dirty);
	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ, kind);
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ, value);
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, &dirty, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		TransactionId other = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;

		if (TransactionIdIsValid(other) && TransactionIdIsValid(mine) &&
			TransactionIdPrecedes(other, mine))
		{
			xwait = other;
			tid = slot->tts_tid;
			break;
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);

	if (!TransactionIdIsValid(xwait))
		return false;
	XactLockTableWait(xwait, rel, &tid, XLTW_InsertIndex);
	return true;
}

/* crm.stitch_identity(identity_id): the number of merges it made. */
static int
run_stitch(Datum identity_id)
{
	Datum		idarg[1] = {identity_id};
	char		idnull[1] = {' '};
	bool		isnull;
	int			ret;
	Datum		n;

	if (stitch_plan == NULL)
	{
		Oid			types[1] = {INT8OID};

		prepare_kept(&stitch_plan, "SELECT crm.stitch_identity($1)", 1, types);
	}
	ret = SPI_execute_plan(stitch_plan, idarg, idnull, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "crm.stitch_identity failed: %s", SPI_result_code_string(ret));
	n = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt32(n);
}

PG_FUNCTION_INFO_V1(crm_identity_stitch_trigger);

/*
 * crm.identity_stitch_trigger() RETURNS trigger
 *		AFTER INSERT row trigger on crm.identity: links the new identifier's
 *		customer with the other customers holding the same (kind, value).
 */
CRM_SHARD_TRIGGER(crm_identity_stitch_trigger);

static Datum
crm_identity_stitch_trigger_body(PG_FUNCTION_ARGS)
{
	enum
	{
		PROBE_COL_HELD = 1,		/* another customer holds the value */
		PROBE_COL_MERGED		/* the row's customer is merged away */
	};
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	tup;
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull;
	bool		held;
	bool		merged;
	bool		found;
	int			ret;
	int			merges = 0;
	int64		golden;

	check_stitch_trigger_call(fcinfo);

	/*
	 * On a Citus shard the other holders of the value are on other shards,
	 * out of a trigger's reach: a distributed crm_ext stitches in batches
	 * on the coordinator (README, "Scaling out with Citus").
	 */
	if (!crm_stitch_on_insert || crm_shard_active())
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

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_kept_plans_check();
	if (probe_plan == NULL)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};

		prepare_kept(&probe_plan, "SELECT EXISTS (SELECT 1 FROM crm.identity i"
			"                WHERE i.kind OPERATOR(pg_catalog.=) $1"
			"                  AND i.value OPERATOR(pg_catalog.=) $2"
			"                  AND i.customer_id OPERATOR(pg_catalog.<>) $3),"
			"       EXISTS (SELECT 1 FROM crm.customer c"
			"                WHERE c.customer_id OPERATOR(pg_catalog.=) $3"
			"                  AND c.merged_into IS NOT NULL)",
			3, types);
	}
	for (;;)
	{
		/* A fresh snapshot each time (read_only = false). */
		ret = SPI_execute_plan(probe_plan, args, nulls, false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "identity probe failed: %s", SPI_result_code_string(ret));
		held = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, PROBE_COL_HELD, &isnull));
		merged = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, PROBE_COL_MERGED, &isnull));
		/* Nobody else holds it (as far as we can see): is somebody adding it? */
		if (held || !waited_for_concurrent_holder(rel, args[0], args[1]))
			break;
	}

	/*
	 * May the value link, or is it a hub to review?  The policy is
	 * identity_policy.c's.
	 */
	found = merged || (held && crm_identity_link_verdict(args[0], args[1], -1, false) != LINK_NONE);

	if (found)
	{
		Datum		id = heap_getattr(tup, stitch_attnum(rel, "identity_id"), tupdesc, &isnull);

		if (!isnull)
			merges = run_stitch(id);
	}
	/* A merge of the row's customer committed meanwhile: follow it. */
	if (merges == 0 && crm_resolve_customer(DatumGetInt64(args[2]), true, &golden) &&
		golden != DatumGetInt64(args[2]))
	{
		Datum		id = heap_getattr(tup, stitch_attnum(rel, "identity_id"), tupdesc, &isnull);

		if (!isnull)
			(void) run_stitch(id);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(crm_golden_customer);

/*
 * crm.golden_customer(customer_id bigint) RETURNS bigint
 *		The golden customer a record belongs to now: merged_into followed to
 *		its end through crm.customer's primary key (crm_merge_walk), without
 *		the executor, since every merge and entry point asks; NULL for an
 *		unknown id.
 */
Datum
crm_golden_customer(PG_FUNCTION_ARGS)
{
	/* crm.customer's keys, per FmgrInfo (fn_extra) */
	CrmCustomerKeys *keys = (CrmCustomerKeys *) fcinfo->flinfo->fn_extra;
	int64		golden;

	if (crm_distributed_outside_shard())
	{
		/* Citus: crm.customer's rows are in the shards (customer.c asks them) */
		if (!crm_resolve_customer(PG_GETARG_INT64(0), false, &golden))
			PG_RETURN_NULL();
		PG_RETURN_INT64(golden);
	}
	if (keys == NULL)
	{
		keys = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(CrmCustomerKeys));
		crm_customer_keys(keys, "crm.golden_customer()");
		fcinfo->flinfo->fn_extra = keys;
	}
	golden = crm_merge_walk(keys, PG_GETARG_INT64(0), 0);
	if (golden == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(golden);
}
