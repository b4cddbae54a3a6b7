/*
 * customer.c
 *		The one owner of "which customer does this id mean": every entry point
 *		that takes a customer id resolves a merged record to its golden
 *		customer (merged_into followed to its end) and acts on the golden; an
 *		unknown id is an error (23503).
 *
 * Writers also lock the golden customer's row FOR SHARE (DEVELOPER.md, "Lock
 * order", step 1): merges and unmerges take it FOR NO KEY UPDATE, so a merge
 * waits for the orders, redemptions and tag changes in flight on either
 * customer, and they wait for a merge in flight.  FOR SHARE does not conflict
 * with the foreign-key checks' FOR KEY SHARE nor with other writers of the
 * same customer.  After the lock is granted the chain is walked again with a
 * fresh snapshot: if a merge or unmerge committed meanwhile, the new golden
 * is locked instead, so the row or the points land where the shopper is.
 * Rows are read and locked through crm.customer's primary key, without SPI:
 * the order insert path runs this for every row.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "crm_ext.h"

/* Most attempts at locking a golden that keeps moving (merges keep chains one link long). */
#define RESOLVE_WALK_LIMIT	1000

/* crm.customer open, with its keys (looked up per call). */
typedef struct CustomerRel
{
	Relation	rel;
	CrmCustomerKeys keys;
} CustomerRel;

static void
customer_rel_open(CustomerRel *c, const CrmCustomerKeys *keys, LOCKMODE mode)
{
	if (keys != NULL)
		c->keys = *keys;
	else
		crm_customer_keys(&c->keys, "crm_resolve_customer()");
	c->rel = table_open(c->keys.relid, mode);
}

/* What lock_share did. */
typedef enum ShareLockResult
{
	SHARE_LOCKED,				/* locked; slot holds the newest version */
	SHARE_OURS,					/* this command changed the row: ours already */
	SHARE_WOULD_BLOCK,			/* nowait: a merge or other writer holds the row */
	SHARE_GONE					/* the row was deleted */
} ShareLockResult;

/*
 * Lock the row in slot FOR SHARE, as SELECT ... FOR SHARE would: in READ
 * COMMITTED the newest version is locked and left in slot (a merge that
 * committed meanwhile is seen); under REPEATABLE READ or SERIALIZABLE a row
 * changed since the snapshot is a serialization failure.  With nowait,
 * SHARE_WOULD_BLOCK instead of waiting.  tid: the row's, as read.
 */
static ShareLockResult
lock_share(CustomerRel *c, TupleTableSlot *slot, ItemPointerData tid, bool nowait)
{
	TM_FailureData tmfd;
	int			flags = IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION;
	TM_Result	res = table_tuple_lock(c->rel, &tid, GetActiveSnapshot(), slot, GetCurrentCommandId(false),
									   LockTupleShare, nowait ? LockWaitSkip : LockWaitBlock, flags, &tmfd);

	switch (res)
	{
		case TM_Ok:
			slot_getallattrs(slot);
			return SHARE_LOCKED;
		case TM_SelfModified:
			return SHARE_OURS;
		case TM_WouldBlock:
			return SHARE_WOULD_BLOCK;
		case TM_Updated:
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent update of a customer")));
			return SHARE_GONE;
		default:
			elog(ERROR, "unexpected result %d locking a customer", (int) res);
	}
	return SHARE_GONE;
}

/*
 * The golden customer of record id (crm_merge_walk, in rows.c) as a snapshot
 * taken now sees it: what every committed merge left; *tid: its row's
 * ctid.  False when id is no customer.
 */
static bool
latest_golden(CustomerRel *c, int64 id, int64 *golden, ItemPointer tid)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());

	*golden = crm_merge_walk_at(&c->keys, id, 0, snap, tid);
	UnregisterSnapshot(snap);
	return *golden != 0;
}

/*
 * Whether the row locked in slot (golden g when walked to from id) is still
 * id's golden: not merged since, and id still under it.  Only merges and
 * unmerges change that, and they wait for the lock now.
 */
static bool
still_golden(CustomerRel *c, int64 id, int64 g, TupleTableSlot *slot)
{
	bool		isnull;
	int64		again;
	ItemPointerData tid;

	(void) slot_getattr(slot, c->keys.merged_att, &isnull);
	if (!isnull)
		return false;
	return g == id || (latest_golden(c, id, &again, &tid) && again == g);
}

/*
 * One attempt that has to wait (a merge or unmerge holds the golden): wait
 * for the lock in a subtransaction, and give it back by rolling that back
 * when the golden changed meanwhile.  Keeping a lock on a customer that is
 * no longer the golden while locking the new one would take step 1 of the
 * lock order out of customer_id order.  Rare: the fast path takes no
 * subtransaction.
 */
static ShareLockResult
wait_for_golden(CustomerRel *c, int64 id, int64 g, ItemPointerData tid, TupleTableSlot *slot, bool *fresh)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ShareLockResult res;

	/* a buffer pin the slot holds belongs to the transaction: drop it first */
	ExecClearTuple(slot);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		res = lock_share(c, slot, tid, false);
		*fresh = res == SHARE_LOCKED && still_golden(c, id, g, slot);
	}
	PG_CATCH();
	{
		ExecClearTuple(slot);
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		PG_RE_THROW();
	}
	PG_END_TRY();
	/* the slot's buffer pin belongs to the subtransaction: drop it first */
	ExecClearTuple(slot);
	if (*fresh)
		ReleaseCurrentSubTransaction();
	else
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return res;
}

/*
 * Lock the golden customer of record id FOR SHARE; false when id is no
 * customer.  A merge or unmerge in flight is waited for; if it moved id
 * under another golden, that one is locked instead.
 */
static bool
lock_golden(CustomerRel *c, int64 id, TupleTableSlot *slot, int64 *golden)
{
	for (int attempt = 0; attempt < RESOLVE_WALK_LIMIT; attempt++)
	{
		int64		g;
		ItemPointerData tid;
		bool		fresh = false;
		ShareLockResult res;

		if (!latest_golden(c, id, &g, &tid))
			return false;
		res = lock_share(c, slot, tid, true);
		if (res == SHARE_OURS)
		{
			*golden = g;		/* nobody else can change it before we commit */
			return true;
		}
		if (res == SHARE_LOCKED)
			fresh = still_golden(c, id, g, slot);	/* a merge committed in between: rare */
		else if (res == SHARE_WOULD_BLOCK)
			res = wait_for_golden(c, id, g, tid, slot, &fresh);
		if (res == SHARE_LOCKED && fresh)
		{
			*golden = g;
			return true;
		}
	}
	elog(ERROR, "customer %lld moved between golden customers %d times", (long long) id, RESOLVE_WALK_LIMIT);
	return false;
}

/*
 * Within a trigger on a Citus shard: a record whose chain of merges leads to
 * a golden customer on another shard (merged before crm.distribute()) is
 * refused, as a row for it would sit on the wrong shard.
 */
static void
refuse_golden_elsewhere(CustomerRel *c, int64 id)
{
	ItemPointerData tid;
	int64		last = crm_merge_walk_at(&c->keys, id, 0, GetActiveSnapshot(), &tid);
	Datum		key = Int64GetDatum(last);
	HeapTuple	tup;
	bool		isnull = true;
	Datum		next = (Datum) 0;

	if (last == 0)
		return;					/* no such customer: the caller reports it */
	tup = crm_row_by_index(c->rel, c->keys.pkey, &key);
	if (tup != NULL)
	{
		next = heap_getattr(tup, c->keys.merged_att, RelationGetDescr(c->rel), &isnull);
		heap_freetuple(tup);
	}
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("customer %lld is merged into customer %lld, whose rows are on another shard of a distributed crm_ext",
						(long long) id, (long long) DatumGetInt64(next)),
				 errhint("Insert rows with customer_id = crm.golden_customer(%lld).", (long long) id)));
}

/*
 * crm_resolve_customer on a Citus coordinator (README, "Scaling out with
 * Citus"): the same walk up merged_into and the same lock, as statements
 * Citus sends to the customer's shard.
 */
static bool
resolve_through_citus(int64 id, bool lock, int64 *golden)
{
	Oid			types[1] = {INT8OID};
	static SPIPlanPtr walk = NULL;
	static SPIPlanPtr lock_plan = NULL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_prepare_kept(&walk, "SELECT c.merged_into FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) $1",
					 1, types, CURSOR_OPT_GENERIC_PLAN);
	crm_prepare_kept(&lock_plan, "SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) $1 "
					 "AND c.merged_into IS NULL FOR SHARE OF c",
					 1, types, CURSOR_OPT_GENERIC_PLAN);
	for (int attempt = 0; attempt < RESOLVE_WALK_LIMIT; attempt++)
	{
		Datum		at = Int64GetDatum(id);
		bool		isnull = true;

		for (int depth = 0; depth <= CRM_MERGE_WALK_LIMIT; depth++)
		{
			if (SPI_execute_plan(walk, &at, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "reading crm.customer failed");
			if (SPI_processed == 0)
			{
				SPI_finish();
				return false;
			}
			{
				Datum		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

				if (isnull)
					break;
				at = next;
			}
		}
		*golden = DatumGetInt64(at);
		if (!lock)
			break;
		/* still golden once locked: else a merge moved it, walk again */
		if (SPI_execute_plan(lock_plan, &at, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "locking a customer failed");
		if (SPI_processed == 1)
			break;
		if (attempt == RESOLVE_WALK_LIMIT - 1)
			elog(ERROR, "customer %lld moved between golden customers %d times", (long long) id, RESOLVE_WALK_LIMIT);
	}
	SPI_finish();
	return true;
}

/*
 * The golden customer of record id, in *golden; false when id is no
 * customer.  With lock, the golden's row is locked FOR SHARE and stays the
 * golden until this transaction ends (merges and unmerges wait for it).
 */
bool
crm_resolve_customer(int64 id, bool lock, int64 *golden)
{
	return crm_resolve_customer_keyed(NULL, id, lock, golden);
}

/*
 * crm_resolve_customer with crm.customer's keys looked up already (NULL:
 * look them up): a row trigger resolves every row, and finding the table,
 * its primary key and merged_into again for each costs more than the probe.
 */
bool
crm_resolve_customer_keyed(const CrmCustomerKeys *keys, int64 id, bool lock, int64 *golden)
{
	CustomerRel c;
	TupleTableSlot *slot;
	bool		found;

	if (crm_distributed_outside_shard())
		return resolve_through_citus(id, lock, golden);
	customer_rel_open(&c, keys, lock ? RowShareLock : AccessShareLock);
	if (crm_shard_active())
		refuse_golden_elsewhere(&c, id);
	if (lock)
	{
		slot = table_slot_create(c.rel, NULL);
		found = lock_golden(&c, id, slot, golden);
		ExecDropSingleTupleTableSlot(slot);
	}
	else
		found = (*golden = crm_merge_walk(&c.keys, id, 0)) != 0;
	table_close(c.rel, NoLock);
	return found;
}

/* crm_resolve_customer for an entry point: an unknown id is an error (23503). */
int64
crm_golden_customer_of(int64 id, bool lock)
{
	int64		golden;

	if (!crm_resolve_customer(id, lock, &golden))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("customer %lld does not exist", (long long) id),
				 errhint("Pass a crm.customer.customer_id; the id of a merged record works too and means its golden customer.")));
	return golden;
}

PG_FUNCTION_INFO_V1(crm_resolve_customer_sql);

/*
 * crm.resolve_customer(customer_id bigint) RETURNS bigint: the golden
 * customer of a record (itself when not merged); 23503 for an unknown id.
 */
Datum
crm_resolve_customer_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(crm_golden_customer_of(PG_GETARG_INT64(0), false));
}

PG_FUNCTION_INFO_V1(crm_lock_customer_sql);

/*
 * crm.lock_customer(customer_id bigint) RETURNS bigint: the same, with the
 * golden locked FOR SHARE until the transaction ends (writers' step 1 of
 * the lock order).
 */
Datum
crm_lock_customer_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(crm_golden_customer_of(PG_GETARG_INT64(0), true));
}
