
-- ===========================================================================
-- common.sql: plumbing every feature shares (src/common/)
-- ===========================================================================

-- Every per-backend cache of a configuration table (loyalty programme, tiers,
-- earn rules, tag rules, RFM segment map and thresholds, segmentation
-- settings) is rebuilt after this trigger fired on the table
-- (src/common/config_cache.c).  Each configuration table gets it as an AFTER
-- statement trigger, ENABLE ALWAYS: a restore with session_replication_role =
-- replica changes configuration rows too.
CREATE FUNCTION crm.config_changed() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_config_changed';
COMMENT ON FUNCTION crm.config_changed() IS
	'AFTER statement trigger on every configuration table: every backend rebuilds its cached configuration';

-- A customer id at an entry point means its golden customer: one owner,
-- src/common/customer.c.  Readers resolve; writers lock the golden FOR SHARE
-- (DEVELOPER.md, "Lock order").  An unknown id is SQLSTATE 23503.
CREATE FUNCTION crm.resolve_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_resolve_customer_sql';
COMMENT ON FUNCTION crm.resolve_customer(bigint) IS
	'The golden customer a customer id means now (itself when not merged; merged_into followed to its end); SQLSTATE 23503 for an unknown id';
CREATE FUNCTION crm.lock_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_lock_customer_sql';
COMMENT ON FUNCTION crm.lock_customer(bigint) IS
	'crm.resolve_customer for writers: the golden customer, locked FOR SHARE until the transaction ends, so no merge or unmerge moves it meanwhile (a merge that committed while waiting is followed); SQLSTATE 23503 for an unknown id';

-- Work that spans customers refuses to run on a distributed crm_ext until it
-- has been made to (src/common/shard.c; README, "Scaling out with Citus").
CREATE FUNCTION crm.refuse_on_citus(what text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'crm_refuse_on_citus_sql';
COMMENT ON FUNCTION crm.refuse_on_citus(text) IS
	'Internal: SQLSTATE 0A000 naming "what" when crm_ext is distributed with Citus (crm.distribute()) and this is not a trigger on a shard; nothing otherwise';
