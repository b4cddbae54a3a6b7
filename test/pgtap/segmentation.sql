-- pgTAP: the segmentation objects, their wiring (triggers, tick task,
-- customer hooks, configuration cache triggers) and the default tags.
BEGIN;
SELECT plan(41);

SELECT has_type('crm', 'rfm_score', 'type crm.rfm_score exists');
SELECT is((SELECT t.typlen::int FROM pg_catalog.pg_type t WHERE t.oid = 'crm.rfm_score'::regtype), 4, 'rfm_score is fixed-size (4 bytes)');
SELECT ok((SELECT t.typbyval FROM pg_catalog.pg_type t WHERE t.oid = 'crm.rfm_score'::regtype), 'rfm_score is passed by value');
SELECT ok(EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c WHERE c.opcintype = 'crm.rfm_score'::regtype AND c.opcdefault
	AND c.opcmethod = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'btree')), 'rfm_score has a default btree opclass');
SELECT ok(EXISTS (SELECT 1 FROM pg_catalog.pg_opclass c WHERE c.opcintype = 'crm.rfm_score'::regtype AND c.opcdefault
	AND c.opcmethod = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'hash')), 'rfm_score has a default hash opclass');

SELECT has_view('crm', 'customer_rfm', 'view crm.customer_rfm');
SELECT has_table('crm', 'rfm_snapshot', 'table crm.rfm_snapshot');
SELECT has_table('crm', 'rfm_refresh', 'table crm.rfm_refresh');
SELECT has_table('crm', 'rfm_segment_map', 'table crm.rfm_segment_map');
SELECT has_table('crm', 'rfm_threshold', 'table crm.rfm_threshold');
SELECT has_table('crm', 'customer_stats', 'table crm.customer_stats');
SELECT has_table('crm', 'tag', 'table crm.tag');
SELECT has_table('crm', 'customer_tag', 'table crm.customer_tag');
SELECT has_table('crm', 'customer_tag_history', 'table crm.customer_tag_history');
SELECT has_table('crm', 'lifecycle_transition', 'table crm.lifecycle_transition');
SELECT has_table('crm', 'segment', 'table crm.segment');
SELECT has_table('crm', 'segment_setting', 'table crm.segment_setting');
SELECT has_view('crm', 'v_customer_360', 'view crm.v_customer_360');
SELECT has_view('crm', 'v_segment_sizes', 'view crm.v_segment_sizes');
SELECT has_view('crm', 'v_rfm_grid', 'view crm.v_rfm_grid');

SELECT has_function('crm', 'rfm', ARRAY['timestamp with time zone', 'integer', 'text'], 'crm.rfm(as_of, bins, method)');
SELECT has_function('crm', 'refresh_rfm', ARRAY['timestamp with time zone', 'integer', 'text'], 'crm.refresh_rfm');
SELECT has_function('crm', 'rfm_segment', ARRAY['crm.rfm_score'], 'crm.rfm_segment(rfm_score)');
SELECT has_function('crm', 'segment_members', ARRAY['text'], 'crm.segment_members(name)');
SELECT has_function('crm', 'segment_count', ARRAY['text'], 'crm.segment_count(name)');
SELECT function_lang_is('crm', 'rfm', ARRAY['timestamp with time zone', 'integer', 'text'], 'c', 'crm.rfm is written in C');
SELECT function_lang_is('crm', 'customer_stats_trigger', ARRAY[]::text[], 'c', 'the stats trigger is written in C');

-- statement-level triggers with transition tables on orders, lines, events
SELECT results_eq($$
	SELECT pg_catalog.format('%s %s statement=%s old=%s new=%s', t.tgrelid::regclass, t.tgname, (t.tgtype & 1) = 0,
	       t.tgoldtable IS NOT NULL, t.tgnewtable IS NOT NULL) COLLATE "default"
	FROM pg_catalog.pg_trigger t WHERE t.tgfoid = 'crm.customer_stats_trigger'::regproc ORDER BY 1$$,
	$$VALUES ('crm.event event_stats_insert statement=t old=f new=t'),
	         ('crm.order_line order_line_stats_delete statement=t old=t new=f'),
	         ('crm.order_line order_line_stats_insert statement=t old=f new=t'),
	         ('crm.order_line order_line_stats_update statement=t old=t new=t'),
	         ('crm.orders orders_stats_delete statement=t old=t new=f'),
	         ('crm.orders orders_stats_insert statement=t old=f new=t'),
	         ('crm.orders orders_stats_update statement=t old=t new=t')$$,
	'the stats trigger is a statement trigger with transition tables on orders, lines and events');
SELECT results_eq($$SELECT t.tgrelid::regclass::text FROM pg_catalog.pg_trigger t
	WHERE t.tgfoid = 'crm.config_changed'::regproc ORDER BY 1$$,
	$$VALUES ('crm.earn_rule'), ('crm.loyalty_program'), ('crm.rfm_segment_map'), ('crm.rfm_threshold'), ('crm.segment_setting'),
	         ('crm.tag'), ('crm.tier')$$,
	'every configuration table invalidates the per-backend cache');

-- wiring into crm.tick and the customer hooks
SELECT results_eq($$SELECT task, fn::text FROM crm.tick_task WHERE task = 'segmentation'$$,
	$$VALUES ('segmentation'::text, 'crm.segmentation_tick(timestamp with time zone)'::text)$$, 'segmentation is a tick task');
SELECT results_eq($$SELECT event, fn::text FROM crm.customer_hook WHERE hook = 'segmentation' ORDER BY 1$$,
	$$VALUES ('merge'::text, 'crm.segmentation_on_merge(bigint,bigint)'::text), ('unmerge', 'crm.segmentation_on_unmerge(bigint,bigint)')$$,
	'segmentation follows merges and unmerges');

-- shipped configuration
SELECT results_eq($$SELECT name FROM crm.tag WHERE builtin ORDER BY name$$,
	$$VALUES ('at_risk'::text), ('dormant'), ('frequent'), ('fresh_lover'), ('high_value'), ('new'), ('wednesday_organic')$$,
	'the seven default tags');
SELECT is((SELECT count(*)::int FROM crm.tag WHERE builtin AND compiled IS NULL), 0, 'default tags are compiled');
SELECT results_eq($$SELECT name FROM crm.tag WHERE builtin AND time_dependent ORDER BY name$$,
	$$VALUES ('at_risk'::text), ('dormant'), ('frequent'), ('high_value'), ('new')$$,
	'time-dependent default tags are flagged for crm.tick');
SELECT is((SELECT count(DISTINCT segment)::int FROM crm.rfm_segment_map WHERE builtin), 11, 'the 11 standard RFM segments');
SELECT is(crm.rfm_segment('R9F9M9'), 'Others', 'no match is Others');
SELECT is((SELECT count(*)::int FROM crm.segment WHERE builtin), 3, 'three example audiences');

-- behaviour on a tiny data set
SET LOCAL crm.as_of = '2026-01-10 00:00+00';
INSERT INTO crm.customer (customer_id, name) VALUES (9001, 'tap');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (9001, 'web', '2026-01-09 10:00+00', 1200);
SELECT is((SELECT stage FROM crm.customer_stats WHERE customer_id = 9001), 'new', 'a first order makes a customer new');
SELECT is((SELECT tags FROM crm.v_customer_360 WHERE customer_id = 9001), ARRAY['high_value', 'new'], 'and tags them in the same statement');
SELECT is(crm.audience_count('high_value and new'), 1::bigint, 'audiences see the tags at once');
SELECT throws_ok($$SELECT crm.tag_rule_explain('orders >')$$, '42601', NULL, 'a bad rule is a syntax error');

SELECT * FROM finish();
ROLLBACK;
