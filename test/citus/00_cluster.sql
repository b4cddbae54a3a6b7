-- The test bed itself: a coordinator with two active workers, and crm_ext
-- created on the coordinator is created on every worker at the same version
-- (Citus propagates CREATE EXTENSION).
BEGIN;
SELECT plan(4);

SELECT is((SELECT count(*)::int FROM pg_catalog.citus_get_active_worker_nodes()), 2,
	'two active workers');
SELECT is((SELECT count(*)::int FROM pg_catalog.pg_dist_node WHERE groupid = 0), 1,
	'the coordinator is in the metadata (reference tables need it)');
SELECT is(
	(SELECT array_agg(result ORDER BY nodename) FROM run_command_on_workers(
		$$SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'crm_ext'$$)),
	(SELECT array_fill(extversion, ARRAY[2]) FROM pg_catalog.pg_extension WHERE extname = 'crm_ext'),
	'crm_ext is on both workers at the coordinator''s version');
SELECT is(
	(SELECT array_agg(success ORDER BY nodename) FROM run_command_on_workers(
		$$SELECT count(*) FROM crm.tier$$)),
	ARRAY[true, true],
	'the workers answer queries on crm tables');

SELECT * FROM finish();
ROLLBACK;
