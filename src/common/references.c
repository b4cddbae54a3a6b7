/*
 * references.c
 *		The foreign keys of the order path (orders, order_line, event), checked
 *		without a query per row (issue 14).
 *
 * PostgreSQL checks a foreign key with one SPI query per inserted row and
 * key ("SELECT 1 FROM parent WHERE key = $1 FOR KEY SHARE"): on crm.orders,
 * three of them per order made a bulk load cost about three times the
 * table's own writes.  crm_ext checks the same references itself, with the
 * guarantees and messages of the foreign keys they replace:
 *
 *	- Inserting or updating a row: the referenced row is found through the
 *	  parent's primary key and locked FOR KEY SHARE without the executor
 *	  (crm_lock_parent), so a concurrent DELETE or key change of the parent
 *	  waits for us, or we wait for it and fail.  A key locked once by this
 *	  (sub)transaction and statement is remembered (crm_reference_require):
 *	  the lock holds until the transaction ends, so a load of a million
 *	  orders from fifty stores looks up fifty store rows.  The customer
 *	  columns are checked where the row trigger locks the golden customer
 *	  anyway (src/core/origin.c), the order of a line where
 *	  crm.lock_line_orders locks it (src/core/order_line.c).
 *	- Deleting a parent or changing its key: crm.referenced_row(), an AFTER
 *	  ROW trigger, refuses it ('restrict') or deletes the referencing rows
 *	  ('cascade'), with the query and snapshot rules of PostgreSQL's own
 *	  RI triggers (ri_triggers.c): under REPEATABLE READ a referencing row
 *	  committed after our snapshot is seen (the latest snapshot, with ours
 *	  as crosscheck, so that it is a serialization failure rather than an
 *	  orphan), and the query runs as the referencing table's owner, without
 *	  row security.  An AFTER TRUNCATE trigger refuses to empty a parent
 *	  whose referencing table keeps rows, as TRUNCATE does for a foreign key.
 *
 * Violations are SQLSTATE 23503 (0A000 for TRUNCATE) with the messages and
 * constraint names the foreign keys had.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "crm_ext.h"

typedef struct LockedKey
{
	int64		key;			/* hash key */
	char		status;			/* simplehash */
} LockedKey;

#define SH_PREFIX lockedkey
#define SH_ELEMENT_TYPE LockedKey
#define SH_KEY key
#include "int64_hash.h"

struct CrmReference
{
	char	   *child;			/* referencing table (crm.<child>), for messages */
	char	   *column;			/* its column */
	char	   *parent;			/* crm.<parent> */
	Oid			parent_relid;
	Oid			parent_pkey;	/* its primary key: one integer or bigint column */
	AttrNumber	parent_att;
	bool		int4_key;
	lockedkey_hash *locked;		/* keys locked by this (sub)transaction */
	LocalTransactionId lxid;
	SubTransactionId subxid;
};

/* The single column of relation rel's primary key (index *pkey). */
static AttrNumber
primary_key_column(Relation rel, Oid *pkey)
{
	Relation	irel;
	AttrNumber	att;

	*pkey = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(*pkey))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("table \"%s\" has no primary key to reference", RelationGetRelationName(rel))));
	irel = index_open(*pkey, AccessShareLock);
	att = irel->rd_index->indkey.values[0];
	index_close(irel, AccessShareLock);
	return att;
}

/* A reference from crm.<child>.<column> to crm.<parent>, allocated in cxt. */
CrmReference *
crm_reference_new(MemoryContext cxt, const char *child, const char *column, const char *parent)
{
	CrmReference *ref = MemoryContextAllocZero(cxt, sizeof(CrmReference));
	Relation	prel;

	ref->child = MemoryContextStrdup(cxt, child);
	ref->column = MemoryContextStrdup(cxt, column);
	ref->parent = MemoryContextStrdup(cxt, parent);
	ref->parent_relid = crm_relid(parent);
	prel = table_open(ref->parent_relid, AccessShareLock);
	ref->parent_att = primary_key_column(prel, &ref->parent_pkey);
	ref->int4_key = TupleDescAttr(RelationGetDescr(prel), ref->parent_att - 1)->atttypid == INT4OID;
	table_close(prel, AccessShareLock);
	ref->locked = lockedkey_create(cxt, 16, NULL);
	return ref;
}

/* The foreign-key violation of a missing parent row, as PostgreSQL words it. */
void
crm_report_missing_parent(Relation child, const char *column, const char *parent, int64 key)
{
	char	   *conname = psprintf("%s_%s_fkey", crm_table_name(child), column);

	ereport(ERROR,
			(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
			 errmsg("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
					crm_table_name(child), conname),
			 errdetail("Key (%s)=(" INT64_FORMAT ") is not present in table \"%s\".", column, key, parent),
			 errtableconstraint(child, conname)));
}

/*
 * The row of rel whose primary key (index pkey) is key, as a foreign key's
 * check finds it: in READ COMMITTED every committed row and every row of
 * this transaction, also one this very statement inserted (as a CTE or an
 * earlier row of the same INSERT); under REPEATABLE READ what the snapshot
 * sees, and this transaction's rows.  A copy, or NULL.
 */
static HeapTuple
referenced_row(Relation rel, Oid pkey, Datum key)
{
	HeapTuple	tup;

	if (!IsolationUsesXactSnapshot())
		return crm_row_by_index_at(rel, pkey, &key, ForwardScanDirection, SnapshotSelf);
	tup = crm_row_by_index_at(rel, pkey, &key, ForwardScanDirection, GetActiveSnapshot());
	if (tup == NULL)
	{
		tup = crm_row_by_index_at(rel, pkey, &key, ForwardScanDirection, SnapshotSelf);
		if (tup != NULL && !TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(tup->t_data)))
		{
			heap_freetuple(tup);	/* committed after our snapshot: not ours to see */
			tup = NULL;
		}
	}
	return tup;
}

/* Whether rel has a row with primary key key that this transaction wrote (this statement included). */
bool
crm_own_row_exists(Relation rel, Oid pkey, Datum key)
{
	HeapTuple	tup = crm_row_by_index_at(rel, pkey, &key, ForwardScanDirection, SnapshotSelf);
	bool		ours = tup != NULL && TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(tup->t_data));

	if (tup != NULL)
		heap_freetuple(tup);
	return ours;
}

/*
 * Lock the row of prel whose primary key (index pkey, column key_att) equals
 * key, in mode.  CRM_PARENT_OURS when this transaction wrote the row (no
 * other can delete it before we commit); CRM_PARENT_MISSING when there is
 * none, or it was deleted or re-keyed while we waited (READ COMMITTED: the
 * newest version is locked and left in slot, as SELECT ... FOR KEY SHARE
 * does).  Under REPEATABLE READ or SERIALIZABLE a row changed since the
 * snapshot is a serialization failure, as for a foreign key's check.  When
 * seen is not NULL it gets a copy of the version found before locking.
 */
CrmParentLock
crm_lock_parent(Relation prel, Oid pkey, AttrNumber key_att, Datum key, LockTupleMode mode,
				TupleTableSlot *slot, HeapTuple *seen)
{
	HeapTuple	tup = referenced_row(prel, pkey, key);
	ItemPointerData tid;
	TM_FailureData tmfd;
	TM_Result	res;
	bool		isnull;
	Datum		now;

	if (seen != NULL)
		*seen = tup;
	if (tup == NULL)
		return CRM_PARENT_MISSING;
	if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(tup->t_data)))
	{
		if (seen == NULL)
			heap_freetuple(tup);
		return CRM_PARENT_OURS;
	}
	tid = tup->t_self;
	if (seen == NULL)
		heap_freetuple(tup);
	res = table_tuple_lock(prel, &tid, GetActiveSnapshot(), slot, GetCurrentCommandId(false), mode, LockWaitBlock,
						   IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
	switch (res)
	{
		case TM_Ok:
			break;
		case TM_SelfModified:
			return CRM_PARENT_OURS;
		case TM_Updated:
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent %s of a row of \"%s\"",
								res == TM_Deleted ? "delete" : "update", RelationGetRelationName(prel))));
			return CRM_PARENT_MISSING;
		default:
			elog(ERROR, "unexpected result %d locking a row of \"%s\"", (int) res, RelationGetRelationName(prel));
	}
	now = slot_getattr(slot, key_att, &isnull);
	return !isnull && now == key ? CRM_PARENT_LOCKED : CRM_PARENT_MISSING;
}

/*
 * The row of the parent that key (of the parent key's type) names exists and
 * is locked FOR KEY SHARE until this transaction ends; a foreign-key
 * violation (23503) for child when there is none.
 */
void
crm_reference_require(CrmReference *ref, Relation child, Datum key)
{
	int64		k = ref->int4_key ? DatumGetInt32(key) : DatumGetInt64(key);
	bool		found;
	Relation	prel;
	TupleTableSlot *slot;
	CrmParentLock res;

	/* a (sub)transaction rolled back gives its row locks back: forget them */
	if (ref->lxid != MyProc->lxid || ref->subxid != GetCurrentSubTransactionId())
	{
		lockedkey_reset(ref->locked);
		ref->lxid = MyProc->lxid;
		ref->subxid = GetCurrentSubTransactionId();
	}
	if (lockedkey_lookup(ref->locked, k) != NULL)
		return;
	prel = table_open(ref->parent_relid, RowShareLock);
	slot = table_slot_create(prel, NULL);
	res = crm_lock_parent(prel, ref->parent_pkey, ref->parent_att, key, LockTupleKeyShare, slot, NULL);
	ExecDropSingleTupleTableSlot(slot);
	table_close(prel, NoLock);
	if (res == CRM_PARENT_MISSING)
		crm_report_missing_parent(child, ref->column, ref->parent, k);
	(void) lockedkey_insert(ref->locked, k, &found);
}

/* ------------------------------------------------------------------------
 * The parent's side: crm.referenced_row()
 * ------------------------------------------------------------------------
 */

/* One referencing column, from a trigger argument 'table.column'. */
typedef struct Referencing
{
	char	   *table;
	char	   *column;
} Referencing;

static Referencing
parse_referencing(const char *arg, const char *fn)
{
	Referencing r;
	const char *dot = strchr(arg, '.');

	if (dot == NULL || dot == arg || dot[1] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s: argument \"%s\" is not table.column", fn, arg)));
	r.table = pnstrdup(arg, dot - arg);
	r.column = pstrdup(dot + 1);
	return r;
}

/*
 * Run plan (one parameter: key) as ref's table owner, without row security,
 * with the snapshots of PostgreSQL's RI checks; SPI_processed rows.
 */
static uint64
run_as_owner(SPIPlanPtr plan, const char *table, Datum key, long limit)
{
	Relation	rel = table_open(crm_relid(table), AccessShareLock);
	Oid			owner = RelationGetForm(rel)->relowner;
	Oid			save_userid;
	int			save_sec_context;
	Snapshot	test = InvalidSnapshot;
	Snapshot	crosscheck = InvalidSnapshot;
	int			ret;

	table_close(rel, NoLock);
	if (IsolationUsesXactSnapshot())
	{
		CommandCounterIncrement();	/* our own work is visible */
		test = GetLatestSnapshot();
		crosscheck = GetTransactionSnapshot();
	}
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	ret = SPI_execute_snapshot(plan, &key, NULL, test, crosscheck, false, false, limit);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (ret < 0)
		elog(ERROR, "SPI_execute_snapshot failed on crm.%s: %s", table, SPI_result_code_string(ret));
	return SPI_processed;
}

/*
 * The plan deleting (cascade) or finding and locking (restrict) r's rows for
 * key $1.  origin_customer_id is indexed only where it differs from
 * customer_id (orders_origin_idx, event_origin_idx): the other rows are
 * found through customer_id, checked by the same trigger.
 */
static SPIPlanPtr
referencing_plan(Referencing r, bool cascade, Oid keytype)
{
	const char *also = strcmp(r.column, "origin_customer_id") == 0 ?
		" AND x.origin_customer_id OPERATOR(pg_catalog.<>) x.customer_id" : "";
	const char *sql = cascade ?
		psprintf("DELETE FROM crm.%s x WHERE x.%s OPERATOR(pg_catalog.=) $1%s",
				 quote_identifier(r.table), quote_identifier(r.column), also) :
		psprintf("SELECT 1 FROM ONLY crm.%s x WHERE x.%s OPERATOR(pg_catalog.=) $1%s FOR KEY SHARE OF x",
				 quote_identifier(r.table), quote_identifier(r.column), also);

	return crm_prepare_kept_text(sql, 1, &keytype, CURSOR_OPT_GENERIC_PLAN);
}

static void
report_still_referenced(Relation prel, Referencing r, const char *keyname, Datum key, Oid keytype)
{
	char	   *conname = psprintf("%s_%s_fkey", r.table, r.column);
	int64		k = keytype == INT4OID ? DatumGetInt32(key) : DatumGetInt64(key);

	ereport(ERROR,
			(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
			 errmsg("update or delete on table \"%s\" violates foreign key constraint \"%s\" on table \"%s\"",
					RelationGetRelationName(prel), conname, r.table),
			 errdetail("Key (%s)=(" INT64_FORMAT ") is still referenced from table \"%s\".", keyname, k, r.table),
			 errtableconstraint(prel, conname)));
}

/* AFTER TRUNCATE: a referencing table that keeps rows makes the TRUNCATE fail. */
static void
refuse_truncate(Relation prel, Referencing r)
{
	char	   *sql = psprintf("SELECT 1 FROM ONLY crm.%s x LIMIT 1", quote_identifier(r.table));

	if (SPI_execute(crm_shard_sql(sql), true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.%s", r.table);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot truncate a table referenced in a foreign key constraint"),
				 errdetail("Table \"%s\" references \"%s\".", r.table, RelationGetRelationName(prel)),
				 errhint("Truncate table \"%s\" at the same time, or use TRUNCATE ... CASCADE.", r.table)));
}

PG_FUNCTION_INFO_V1(crm_referenced_row);

/*
 * crm.referenced_row() RETURNS trigger
 *		AFTER DELETE OR UPDATE ROW trigger on a parent table (crm.customer,
 *		crm.store, crm.orders) with arguments 'restrict' or 'cascade', then
 *		the referencing columns as 'table.column'.  A deleted row's key, or
 *		an updated row's old key when it changed, must not be referenced
 *		('restrict'; an UPDATE always restricts), or its referencing rows
 *		are deleted ('cascade').  Also an AFTER TRUNCATE STATEMENT trigger:
 *		the referencing tables must be empty then.
 */
CRM_SHARD_TRIGGER(crm_referenced_row);

static Datum
crm_referenced_row_body(PG_FUNCTION_ARGS)
{
	const char *fn = "crm.referenced_row()";
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	prel;
	Trigger    *tg;
	bool		truncating;
	bool		cascade;
	Oid			pkey;
	AttrNumber	key_att;
	Oid			keytype;
	bool		isnull;
	Datum		key = (Datum) 0;

	truncating = CALLED_AS_TRIGGER(fcinfo) && TRIGGER_FIRED_BY_TRUNCATE(td->tg_event);
	td = truncating ? crm_check_trigger(fcinfo, fn, CRM_TG_AFTER, CRM_TG_STATEMENT, CRM_TG_TRUNCATE, -1) :
		crm_check_trigger(fcinfo, fn, CRM_TG_AFTER, CRM_TG_ROW, CRM_TG_UPDATE | CRM_TG_DELETE, -1);
	prel = td->tg_relation;
	tg = td->tg_trigger;
	if (crm_is_reference_shard(prel))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot delete, re-key or truncate rows of crm.%s on a distributed crm_ext", crm_table_name(prel)),
				 errdetail("crm.%s is a reference table: the rows of the distributed tables that reference it are on every worker, and are not checked across them yet.",
						   crm_table_name(prel)),
				 errhint("Keep the row; mark it out of use in a column of your own instead.")));
	if (tg->tgnargs < 2 || (strcmp(tg->tgargs[0], "restrict") != 0 && strcmp(tg->tgargs[0], "cascade") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs 'restrict' or 'cascade' and at least one 'table.column'", fn)));
	key_att = primary_key_column(prel, &pkey);
	keytype = TupleDescAttr(RelationGetDescr(prel), key_att - 1)->atttypid;
	if (!truncating)
	{
		key = heap_getattr(td->tg_trigtuple, key_att, RelationGetDescr(prel), &isnull);
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		{
			bool		newnull;
			Datum		newkey = heap_getattr(td->tg_newtuple, key_att, RelationGetDescr(prel), &newnull);

			if (isnull == newnull && (isnull || newkey == key))
				return PointerGetDatum(NULL);	/* the key did not change */
		}
		if (isnull)
			return PointerGetDatum(NULL);
	}
	cascade = strcmp(tg->tgargs[0], "cascade") == 0 && TRIGGER_FIRED_BY_DELETE(td->tg_event);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (int i = 1; i < tg->tgnargs; i++)
	{
		Referencing r = parse_referencing(tg->tgargs[i], fn);

		if (truncating)
			refuse_truncate(prel, r);
		else if (run_as_owner(referencing_plan(r, cascade, keytype), r.table, key, cascade ? 0 : 1) > 0 &&
				 !cascade)
			report_still_referenced(prel, r, NameStr(TupleDescAttr(RelationGetDescr(prel), key_att - 1)->attname),
									key, keytype);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
