-- pgTAP: the loyalty programme's schema, registrations and invariants.
BEGIN;
SELECT plan(37);

SELECT has_type('crm', 'loyalty_ledger', 'type crm.loyalty_ledger exists');
SELECT has_table('crm', t, 'table crm.' || t) FROM unnest(ARRAY['loyalty_program', 'tier', 'earn_rule',
	'loyalty_account', 'points_journal', 'tier_history']) t;
SELECT col_is_pk('crm', 'loyalty_account', 'customer_id', 'loyalty_account keyed by customer');
SELECT fk_ok('crm', 'loyalty_account', 'customer_id', 'crm', 'customer', 'customer_id', 'account belongs to a customer');
SELECT fk_ok('crm', 'loyalty_account', 'tier', 'crm', 'tier', 'tier', 'account tier is a configured tier');
SELECT col_type_is('crm', 'loyalty_account', 'ledger', 'crm.loyalty_ledger', 'account ledger is a loyalty_ledger');
SELECT index_is_unique('crm', 'points_journal', 'points_journal_idempotency_key_unique', 'journal idempotency key is unique');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = 'crm.points_journal_idempotency_key_unique'::regclass),
	'(idempotency_key IS NOT NULL)', 'only journal rows with a key are in the key index');
SELECT col_not_null('crm', 'points_journal', 'origin_customer_id', 'journal rows keep their origin customer');
SELECT has_index('crm', 'points_journal', 'points_journal_customer_idx', ARRAY['customer_id'], 'journal indexed by customer');
SELECT has_trigger('crm', 'orders', t, 'orders trigger ' || t) FROM unnest(ARRAY['orders_loyalty_insert', 'orders_loyalty_update']) t;
SELECT has_trigger('crm', 'order_line', 'order_line_loyalty_insert', 'order_line bonus trigger');
SELECT has_trigger('crm', 'points_journal', t, 'journal guard ' || t) FROM unnest(ARRAY['points_journal_append_only', 'points_journal_no_truncate']) t;
SELECT is((SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
           WHERE p.oid = 'crm.loyalty_orders_insert()'::regprocedure), 'c', 'the orders trigger is written in C');
SELECT is((SELECT tgtype & 1 FROM pg_trigger WHERE tgname = 'orders_loyalty_insert')::integer, 0, 'the orders trigger is statement-level');
SELECT results_eq($$SELECT task, run_order, fn::text FROM crm.tick_task WHERE task LIKE 'loyalty%' ORDER BY run_order$$,
	$$VALUES ('loyalty_expire_points'::text, 100, 'crm.loyalty_expire_points(timestamp with time zone)'::text),
	         ('loyalty_downgrade_tiers', 110, 'crm.loyalty_downgrade_tiers(timestamp with time zone)')$$,
	'expiry and downgrade are crm.tick tasks');
SELECT results_eq($$SELECT event, fn::text FROM crm.customer_hook WHERE hook = 'loyalty' ORDER BY event$$,
	$$VALUES ('merge'::text, 'crm.loyalty_merge(bigint,bigint)'::text), ('unmerge', 'crm.loyalty_unmerge(bigint,bigint)')$$,
	'merge and unmerge hooks are registered');
SELECT has_function('crm', f, 'entry point crm.' || f) FROM unnest(ARRAY['redeem_points', 'points_balance',
	'points_expiring', 'adjust_points', 'verify_ledgers', 'ledger_agg']) f;
SELECT ok(NOT has_table_privilege('public', 'crm.points_journal', 'UPDATE')
          AND NOT has_table_privilege('public', 'crm.points_journal', 'DELETE'), 'PUBLIC cannot update or delete journal rows');
SELECT is((SELECT count(*)::integer FROM crm.tier WHERE builtin), 4, 'four shipped tiers');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'verify_ledgers is empty on a fresh install');

-- an order earns, a redemption spends, and the ledger matches the journal
INSERT INTO crm.customer (customer_id, name) VALUES (900001, 'Tap');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (900001, 'web', now() - interval '1 day', 42.00);
SELECT is(crm.points_balance(900001), 42::bigint, 'a paid order of 42.00 earns 42 points');
SELECT is(crm.redeem_points(900001, 40, 'tap-1'), 2::bigint, 'redeeming 40 leaves 2');
SELECT throws_ok($$SELECT crm.redeem_points(900001, 3, 'tap-2')$$, 'CR001', 'insufficient points: 2 available, 3 requested',
	'redeeming more than the balance fails with CR001');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'verify_ledgers is empty after earning and spending');

SELECT * FROM finish();
ROLLBACK;
