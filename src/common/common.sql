
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
