-- Order lines inserted without line numbers are numbered after the order's
-- highest line, within one statement and across statements; explicit numbers
-- are kept.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(101, 1, 'web', '2026-01-10 10:00+00', 30.00),
	(102, 1, 'web', '2026-01-11 10:00+00', 20.00),
	(103, 1, 'web', '2026-01-12 10:00+00', 10.00);
-- three lines of one order, no numbers
INSERT INTO crm.order_line (order_id, sku, category, qty, amount) VALUES
	(101, 'FRE-0001', 'fresh', 1, 10.00), (101, 'FRE-0002', 'fresh', 1, 10.00), (101, 'BAK-0001', 'bakery', 1, 10.00);
-- two orders interleaved in one statement, one of them with an explicit number
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(102, NULL, 'DAI-0001', 'dairy', 1, 5.00), (103, 7, 'DAI-0002', 'dairy', 1, 5.00),
	(102, NULL, 'DAI-0003', 'dairy', 1, 5.00), (103, NULL, 'DAI-0004', 'dairy', 1, 5.00),
	(102, NULL, 'DAI-0005', 'dairy', 1, 10.00);
-- a later statement continues after the highest line
INSERT INTO crm.order_line (order_id, sku, category, qty, amount) VALUES (101, 'FRE-0003', 'fresh', 2, 0.00);
INSERT INTO crm.order_line (order_id, sku, category, qty, amount)
SELECT 103, 'SNK-000' || i, 'snacks', 1, 0.00 FROM generate_series(1, 3) i;
SELECT order_id, line_no, sku FROM crm.order_line ORDER BY 1, 2;
-- an order counts once per category, also when its lines arrive in
-- several statements (order 101's fresh lines: 2 statements, 1 order)
SELECT c.category, c.orders, c.spend
FROM crm.customer_stats s, crm.stats_categories(s.categories) c WHERE s.customer_id = 1 ORDER BY 1;
-- an explicit number that is taken is still a key violation
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (101, 2, 'X', 'fresh', 1, 1.00)$$);
-- no order: the foreign key says so, not the numbering
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, sku, category, qty, amount) VALUES (999, 'X', 'fresh', 1, 1.00)$$);
SELECT order_id, count(*), max(line_no) FROM crm.order_line GROUP BY 1 ORDER BY 1;
SELECT * FROM crm.verify();
ROLLBACK;
