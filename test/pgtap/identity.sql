-- pgTAP: the identity resolution objects, their labels, and one online
-- merge with its undo seen through the public functions.
BEGIN;
SELECT plan(23);

SELECT has_type('crm', 'id_merge', 'type crm.id_merge exists');
SELECT has_function('crm', 'id_merge_agg', ARRAY['bigint', 'bigint'], 'aggregate crm.id_merge_agg(bigint, bigint)');
SELECT is((SELECT a.aggcombinefn::text FROM pg_aggregate a WHERE a.aggfnoid = 'crm.id_merge_agg(bigint,bigint)'::regprocedure),
	'crm.id_merge_agg_combine', 'id_merge_agg has a combine function');
SELECT is((SELECT p.proparallel FROM pg_proc p WHERE p.oid = 'crm.id_merge_agg(bigint,bigint)'::regprocedure)::text,
	's', 'id_merge_agg is PARALLEL SAFE');
SELECT has_function('crm', 'id_merge_groups', ARRAY['crm.id_merge'], 'crm.id_merge_groups(id_merge)');
SELECT has_function('crm', 'id_merge_golden', ARRAY['crm.id_merge', 'bigint'], 'crm.id_merge_golden(id_merge, bigint)');
SELECT has_function('crm', 'merge_customers', ARRAY['bigint', 'bigint', 'text'], 'crm.merge_customers(bigint, bigint, text)');
SELECT has_function('crm', 'unmerge', ARRAY['bigint', 'boolean'], 'crm.unmerge(bigint, boolean)');
SELECT has_function('crm', 'stitch_identities', 'crm.stitch_identities()');
SELECT has_table('crm', 'merge_log', 'table crm.merge_log');
SELECT has_table('crm', 'identity_review', 'table crm.identity_review');
SELECT has_table('crm', 'identity_blocklist', 'table crm.identity_blocklist');
SELECT has_trigger('crm', 'identity', 'identity_stitch', 'crm.identity has the stitching trigger');
SELECT is(crm.id_merge_golden('{{2,1},{3}}', 2), 1::bigint, 'id_merge_golden reads a value (and loads the library)');
SELECT is(current_setting('crm.stitch_on_insert'), 'on', 'online stitching is on by default');
SELECT ok(crm.identity_blocked('phone', '00000000000'), 'the junk phone is blocklisted');

-- one online merge and its undo
INSERT INTO crm.customer (customer_id, created_at) VALUES (901, '2025-01-01'), (902, '2025-01-02');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('openid', 'o-tap', 901), ('openid', 'o-tap', 902);
SELECT is(crm.golden_customer(902), 901::bigint, 'a shared openid merged 902 into the older 901');
SELECT results_eq($$SELECT survivor, merged, source FROM crm.merge_log WHERE merged = 902$$,
	$$VALUES (901::bigint, 902::bigint, 'online'::text)$$, 'the merge is logged');
SELECT throws_ok($$SELECT crm.merge_customers(901, 902)$$, 'CR004', NULL, 'merging them again is refused with CR004');
SELECT is(crm.unmerge((SELECT merge_id FROM crm.merge_log WHERE merged = 902)), 1::bigint, 'unmerge undoes one merge');
SELECT is(crm.golden_customer(902), 902::bigint, '902 is its own golden customer again');
SELECT is((SELECT customer_id FROM crm.identity WHERE value = 'o-tap' AND origin_customer_id = 902), 902::bigint,
	'its identifier went back with it');
SELECT is((SELECT merges FROM crm.stitch_identities()), 0::bigint, 'batch stitching respects the kept-apart pair');

SELECT * FROM finish();
ROLLBACK;
