/*
 * config_cache.c
 *		One mechanism for every per-backend cache of crm's configuration
 *		tables (loyalty programme, tiers, earn rules, tag rules, RFM segment
 *		map and thresholds, segmentation settings).
 *
 * A cache remembers the crm_config_generation() it was built at and is
 * rebuilt when the value moves on.  A relcache callback moves it when a
 * configuration table changes: PostgreSQL sends a relcache invalidation to
 * every backend when a table's definition changes or CacheInvalidateRelcache
 * is called on it, and a whole-cache reset as InvalidOid.  The statement
 * trigger crm.config_changed() on each configuration table calls it, so a
 * backend rebuilds its caches on the next use after a commit that changed
 * them, and its own uncommitted changes are seen at the next statement.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "crm_ext.h"

static const char *const config_tables[] = {
	"loyalty_program", "tier", "earn_rule",
	"tag", "rfm_segment_map", "rfm_threshold", "segment_setting"
};
#define N_CONFIG_TABLES lengthof(config_tables)
static Oid	config_relids[N_CONFIG_TABLES];
static bool config_relids_valid = false;
static uint64 config_generation = 1;

static void
config_relcache_cb(Datum arg, Oid relid)
{
	if (relid == InvalidOid || !config_relids_valid)
	{
		config_generation++;
		config_relids_valid = false;
		return;
	}
	for (int i = 0; i < N_CONFIG_TABLES; i++)
		if (config_relids[i] == relid)
		{
			config_generation++;
			return;
		}
}

void
crm_config_cache_init(void)
{
	CacheRegisterRelcacheCallback(config_relcache_cb, (Datum) 0);
}

/*
 * The generation caches compare with.  Until the configuration tables have
 * been looked up, every relcache invalidation counts as a change.
 */
uint64
crm_config_generation(void)
{
	if (!config_relids_valid)
	{
		Oid			nsp = get_namespace_oid("crm", true);

		for (int i = 0; i < N_CONFIG_TABLES; i++)
			config_relids[i] = OidIsValid(nsp) ? get_relname_relid(config_tables[i], nsp) : InvalidOid;
		config_relids_valid = OidIsValid(nsp);
	}
	return config_generation;
}

/*
 * OID of relation (table, index, view) crm.<relname>, or an ERROR if crm_ext
 * is not installed right.  Within a trigger on a Citus shard, the co-located
 * shard of the table (shard.c).
 */
Oid
crm_relid(const char *relname)
{
	Oid			relid = get_relname_relid(relname, get_namespace_oid("crm", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation crm.%s does not exist", relname),
				 errhint("crm_ext is not installed completely: reinstall it.")));
	return crm_shard_relid(relid);
}

/*
 * The body of crm.config_changed(): every backend's caches of the table's
 * contents are stale from now on (this backend's at once).
 */
static Datum
config_changed(FunctionCallInfo fcinfo, const char *fn)
{
	TriggerData *td = crm_check_trigger(fcinfo, fn, CRM_TG_AFTER, CRM_TG_STATEMENT, CRM_TG_ANY_EVENT, 0);

	CacheInvalidateRelcache(td->tg_relation);
	/* On Citus it fired on this node's copy of a reference table: the caches know the table. */
	if (crm_is_reference_shard(td->tg_relation))
		CacheInvalidateRelcacheByRelid(get_relname_relid(crm_table_name(td->tg_relation),
														 RelationGetNamespace(td->tg_relation)));
	config_generation++;
	PG_RETURN_POINTER(NULL);
}

PG_FUNCTION_INFO_V1(crm_config_changed);

/* crm.config_changed(): AFTER statement trigger on each configuration table. */
Datum
crm_config_changed(PG_FUNCTION_ARGS)
{
	return config_changed(fcinfo, "crm.config_changed()");
}

/*
 * The 0.1.0 names of the same trigger function: 0.1.0's install script
 * (src/updates/crm_ext--0.1.0.sql) must still find them in this library.
 */
PG_FUNCTION_INFO_V1(crm_loyalty_config_changed);
Datum
crm_loyalty_config_changed(PG_FUNCTION_ARGS)
{
	return config_changed(fcinfo, "crm.loyalty_config_changed()");
}

PG_FUNCTION_INFO_V1(crm_seg_config_changed);
Datum
crm_seg_config_changed(PG_FUNCTION_ARGS)
{
	return config_changed(fcinfo, "crm.seg_config_changed()");
}
