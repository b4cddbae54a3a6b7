/*
 * crm_ext.h
 *		The plumbing every feature of crm_ext shares (src/common/), its
 *		SQLSTATEs, and the features' load-time entry points.  Include
 *		postgres.h first, as every C file does.
 */
#ifndef CRM_EXT_H
#define CRM_EXT_H

#include "access/attnum.h"
#include "access/htup.h"
#include "access/sdir.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "utils/guc.h"
#include "executor/spi.h"
#include "nodes/lockoptions.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "storage/itemptr.h"

/*
 * The extension's own SQLSTATEs, class "CR" (documented in README.md,
 * "Errors").  Generic conditions use PostgreSQL's standard codes instead.
 */
#define ERRCODE_CRM_INSUFFICIENT_POINTS		MAKE_SQLSTATE('C','R','0','0','1')
#define ERRCODE_CRM_IDEMPOTENCY_CONFLICT	MAKE_SQLSTATE('C','R','0','0','2')
#define ERRCODE_CRM_COUPON_UNAVAILABLE		MAKE_SQLSTATE('C','R','0','0','3')
#define ERRCODE_CRM_MERGE_REFUSED			MAKE_SQLSTATE('C','R','0','0','4')
#define ERRCODE_CRM_SAMPLE_NOT_EMPTY		MAKE_SQLSTATE('C','R','0','0','5')
#define ERRCODE_CRM_MODEL_NOT_CONVERGED		MAKE_SQLSTATE('C','R','0','0','6')
#define ERRCODE_CRM_INSUFFICIENT_DATA		MAKE_SQLSTATE('C','R','0','0','7')

/* Each feature's load-time set-up, called by _PG_init (crm_ext.c). */
extern void crm_origin_init(void);		/* core/origin.c */
extern void crm_loyalty_init(void);		/* loyalty/loyalty_config.c */
extern void crm_identity_init(void);	/* identity/identity.c */
extern void crm_seg_config_init(void);	/* segmentation/seg_config.c */
extern void crm_prediction_init(void);	/* prediction/clv.c */

/* kept_plans.c: SPI plans kept across statements, freed on reinstall */
extern void crm_kept_plans_init(void);
extern void crm_kept_plans_check(void);
extern SPIPlanPtr crm_prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes,
								   int cursor_options);
extern SPIPlanPtr crm_prepare_kept_text(const char *sql, int nargs, Oid *argtypes, int cursor_options);
extern void crm_kept_plans_switch(uint64 from, uint64 to);

/* shard.c: triggers on Citus shards work on the co-located shards */
extern void crm_shard_init(void);
extern Datum crm_on_shard(FunctionCallInfo fcinfo, PGFunction body);
/*
 * Defines the C trigger function name as name_body (static, defined after
 * it) run through crm_on_shard: on a Citus shard, with the co-located shards.
 * (It ends as PG_FUNCTION_INFO_V1 does, so a semicolon may follow.)
 */
#define CRM_SHARD_TRIGGER(name) \
	static Datum name##_body(PG_FUNCTION_ARGS); \
	Datum name(PG_FUNCTION_ARGS) { return crm_on_shard(fcinfo, name##_body); } \
	extern int no_such_variable
extern bool crm_shard_active(void);
extern uint64 crm_shard_context_id(void);
extern Oid	crm_shard_relid(Oid logical);
extern char *crm_shard_sql(const char *sql);
extern char *crm_config_sql(const char *sql);
extern const char *crm_table_name(Relation rel);
extern Oid	crm_table_index(Relation rel, const char *name);
extern bool crm_is_reference_shard(Relation rel);
extern bool crm_distributed_outside_shard(void);
extern Oid	crm_shard_index(Oid logical_index);
extern void crm_refuse_on_citus(const char *what);
extern int64 crm_sum_on_shards(const char *fn, TimestampTz at);
extern void crm_require_shard(Oid shard, const char *caller);

/* references.c: the foreign keys of the order path, checked without a query per row */
typedef struct CrmReference CrmReference;
typedef enum CrmParentLock
{
	CRM_PARENT_LOCKED,			/* locked; the slot holds its newest version */
	CRM_PARENT_OURS,			/* written by this transaction: no lock needed */
	CRM_PARENT_MISSING			/* none, or deleted or re-keyed meanwhile */
} CrmParentLock;
extern CrmReference *crm_reference_new(MemoryContext cxt, const char *child, const char *column,
									   const char *parent);
extern void crm_reference_require(CrmReference *ref, Relation child, Datum key);
extern void crm_report_missing_parent(Relation child, const char *column, const char *parent,
									  int64 key) pg_attribute_noreturn();
extern CrmParentLock crm_lock_parent(Relation prel, Oid pkey, AttrNumber key_att, Datum key,
									 LockTupleMode mode, TupleTableSlot *slot, HeapTuple *seen);
extern bool crm_own_row_exists(Relation rel, Oid pkey, Datum key);

/* config_cache.c: caches of configuration tables, crm.config_changed() */
extern void crm_config_cache_init(void);
extern uint64 crm_config_generation(void);
extern Oid	crm_relid(const char *relname);

/* trigger_check.c: how a C trigger was called (misuse is 39P01) */
#define CRM_TG_BEFORE		1
#define CRM_TG_AFTER		2
#define CRM_TG_ROW			1
#define CRM_TG_STATEMENT	2
#define CRM_TG_INSERT		0x01
#define CRM_TG_UPDATE		0x02
#define CRM_TG_DELETE		0x04
#define CRM_TG_TRUNCATE		0x08
#define CRM_TG_ANY_EVENT	0x0F
extern TriggerData *crm_check_trigger(FunctionCallInfo fcinfo, const char *fn, int timing,
									  int level, int events, int max_nargs);
extern int	crm_trigger_attnum(Relation rel, const char *name, const char *fn);

/* rows.c: reading rows by index without the executor; a query's rows a batch at a time */
extern HeapTuple crm_row_by_index(Relation rel, Oid idx, const Datum *key);
extern HeapTuple crm_row_by_index_in(Relation rel, Oid idx, const Datum *key, ScanDirection direction);
extern HeapTuple crm_row_by_index_at(Relation rel, Oid idx, const Datum *key, ScanDirection direction,
									 Snapshot snap);
extern bool crm_first_row_by_index(Oid relid, Oid idx, const Datum *key, AttrNumber att,
								   Datum *value, bool *isnull);
typedef void (*CrmRowFn) (HeapTuple tup, TupleDesc desc, void *arg);
extern void crm_each_row(const char *sql, int nargs, Oid *types, Datum *args, CrmRowFn each_row, void *arg);
#define CRM_MERGE_WALK_LIMIT	1000	/* longest chain of merged_into links walked */
/* What a walk of crm.customer.merged_into needs: the table, its primary key, the column. */
typedef struct CrmCustomerKeys
{
	Oid			relid;
	Oid			pkey;
	AttrNumber	merged_att;
} CrmCustomerKeys;
extern void crm_customer_keys(CrmCustomerKeys *keys, const char *fn);
extern int64 crm_merge_walk(const CrmCustomerKeys *keys, int64 record, int64 target);
extern int64 crm_merge_walk_at(const CrmCustomerKeys *keys, int64 record, int64 target,
							   Snapshot snap, ItemPointer last_tid);

/* customer.c: a customer id at an entry point means its golden customer (DEVELOPER.md, "Lock order") */
extern bool crm_resolve_customer(int64 id, bool lock, int64 *golden);
extern bool crm_resolve_customer_keyed(const CrmCustomerKeys *keys, int64 id, bool lock, int64 *golden);
extern int64 crm_golden_customer_of(int64 id, bool lock);

/* money.c: numeric <-> int64 cents (values with more than 2 decimals are rounded) */
extern int64 crm_numeric_to_cents(Datum num);
extern Datum crm_cents_to_numeric(int64 cents);

/* settings.c: what settings share */
extern void crm_settings_init(void);
extern bool crm_parse_timestamptz_quietly(const char *str, TimestampTz *out);
extern bool crm_check_time_setting(char **newval, void **extra, GucSource source);
extern TimestampTz crm_time_setting(const char *value);

/* int64_util.c */
extern void crm_sort_int64(int64 *a, size_t n);
extern int	crm_cmp_int64(const void *a, const void *b);

/*
 * splitmix64's finaliser: a bijective 64-bit mix with good avalanche, for
 * hashing ids (consecutive ids spread over a table) and deterministic draws.
 */
static inline uint64
crm_mix64(uint64 z)
{
	z = (z ^ (z >> 30)) * UINT64CONST(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64CONST(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

#endif							/* CRM_EXT_H */
