-- Issue 15: crm.distribute() on an installation that holds data, merges
-- included: the rows move into the shards unchanged (order lines get their
-- order's customer), and afterwards a new row is inserted for its golden
-- customer.  This database is dropped with the cluster.
\set ON_ERROR_STOP 1
SET client_min_messages = error;
SELECT plan(10);

-- One node's data: two shoppers, one of them with two records merged.
INSERT INTO crm.store (store_id, name) VALUES (1, 'Downtown');
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Ann (app)'), (3, 'Bob');
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount) VALUES
	(101, 1, 1, 'pos', '2026-01-10 10:00+00', 30.00), (102, 2, NULL, 'app', '2026-01-11 10:00+00', 20.00),
	(103, 3, 1, 'pos', '2026-01-12 10:00+00', 55.00);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(101, 1, 'FRE-0001', 'fresh', 1, 30.00), (102, 1, 'DAI-0001', 'dairy', 1, 20.00), (103, 1, 'SNK-0001', 'snacks', 1, 55.00);
SELECT crm.merge_customers(1, 2, 'same shopper') IS NOT NULL AS merged;
CREATE TEMP TABLE before AS
SELECT 'stats' AS what, pg_catalog.md5(pg_catalog.string_agg(s::text, '|' ORDER BY s.customer_id)) AS digest FROM crm.customer_stats s
UNION ALL SELECT 'accounts', pg_catalog.md5(pg_catalog.string_agg(a::text, '|' ORDER BY a.customer_id)) FROM crm.loyalty_account a
UNION ALL SELECT 'journal', pg_catalog.md5(pg_catalog.string_agg(j::text, '|' ORDER BY j.journal_id)) FROM crm.points_journal j
UNION ALL SELECT 'orders', pg_catalog.md5(pg_catalog.string_agg(o::text, '|' ORDER BY o.order_id)) FROM crm.orders o;

SELECT is((SELECT pg_catalog.count(*)::int FROM crm.distribute(4) WHERE placement = 'distributed by customer_id'), 26,
	'a loaded installation distributes');
SELECT results_eq($$SELECT order_id, customer_id FROM crm.order_line ORDER BY 1$$,
	$$VALUES (101::bigint, 1::bigint), (102, 1), (103, 3)$$,
	'the lines got their order''s (golden) customer');
SELECT results_eq($$SELECT 'stats' AS what, pg_catalog.md5(pg_catalog.string_agg(s::text, '|' ORDER BY s.customer_id)) FROM crm.customer_stats s
	UNION ALL SELECT 'accounts', pg_catalog.md5(pg_catalog.string_agg(a::text, '|' ORDER BY a.customer_id)) FROM crm.loyalty_account a
	UNION ALL SELECT 'journal', pg_catalog.md5(pg_catalog.string_agg(j::text, '|' ORDER BY j.journal_id)) FROM crm.points_journal j$$,
	$$SELECT what, digest FROM before WHERE what <> 'orders'$$,
	'stats, accounts and journal moved into the shards unchanged');
SELECT is((SELECT pg_catalog.md5(pg_catalog.string_agg(o::text, '|' ORDER BY o.order_id)) FROM
	crm.orders o),
	(SELECT digest FROM before WHERE what = 'orders'), 'the orders too');
SELECT is(crm.golden_customer(2), 1::bigint, 'the merged record still means its golden customer');

-- New rows are inserted for the golden customer.
SELECT throws_ok($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (2, 'app', '2026-02-01 10:00+00', 10.00)$$,
	'0A000', NULL, 'an order for the merged record: 0A000 (it would land on the wrong shard)');
SELECT throws_ok($$INSERT INTO crm.orders (customer_id, origin_customer_id, channel, ordered_at, amount) VALUES (1, 2, 'app', '2026-02-01 10:00+00', 10.00)$$,
	'0A000', NULL, 'an order with an origin record apart from its golden customer: 0A000');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (104, 1, 'app', '2026-02-01 10:00+00', 10.00);
-- (read first: Citus would run a test function in a single-shard query on the worker)
SELECT orders AS golden_orders FROM crm.customer_stats WHERE customer_id = 1 \gset
SELECT is(:golden_orders, 3, 'an order for the golden customer counts for it');
SELECT is(crm.points_balance(2, '2026-02-02'), crm.points_balance(1, '2026-02-02'), 'the record''s balance is its golden''s');
SELECT throws_ok($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (104, 1, 'X', 'fresh', 1, 10.00)$$,
	'22004', NULL, 'a line without its customer cannot be placed: 22004');

SELECT * FROM finish();
