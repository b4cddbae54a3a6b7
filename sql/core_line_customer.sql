-- Issue 15: order lines may carry their order's customer_id (on Citus it is
-- what places a line on its order's shard).  On one node it is optional;
-- when given it must be the order's customer (23503, as a foreign key
-- (order_id, customer_id) -> orders would say), and it follows the order
-- when a merge, an unmerge or crm.reassign_order moves the order.  Lines
-- without it keep NULL.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Bob'), (3, 'Cy');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(101, 1, 'web', '2026-01-10 10:00+00', 30.00),
	(102, 2, 'web', '2026-01-11 10:00+00', 20.00),
	(103, 2, 'web', '2026-01-12 10:00+00', 5.00);
-- with the order's customer, and without one
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id) VALUES
	(101, 1, 'FRE-0001', 'fresh', 1, 10.00, 1), (101, 2, 'FRE-0002', 'fresh', 2, 20.00, 1),
	(102, 1, 'DAI-0001', 'dairy', 1, 20.00, 2);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (103, 1, 'SNK-0001', 'snacks', 1, 5.00);

-- another customer's id on a line: refused, also in a statement with good lines
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id) VALUES (101, 3, 'X', 'fresh', 1, 1.00, 2)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id) VALUES (102, 2, 'X', 'dairy', 1, 1.00, 2), (101, 3, 'X', 'fresh', 1, 1.00, 3)$$);
SELECT pg_temp.expect_error($$UPDATE crm.order_line SET customer_id = 3 WHERE order_id = 102$$);
-- an order inserted with its lines in one statement
WITH o AS (INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
	VALUES (104, 3, 'web', '2026-01-13 10:00+00', 8.00) RETURNING order_id, customer_id)
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id)
SELECT order_id, 1, 'SNK-0002', 'snacks', 1, 8.00, customer_id FROM o;
SELECT order_id, line_no, customer_id FROM crm.order_line ORDER BY 1, 2;

-- a merge moves Bob's orders to Ann: the lines that carry a customer follow
SELECT crm.merge_customers(1, 2, 'same shopper') AS merge_id \gset
SELECT l.order_id, l.line_no, l.customer_id AS line_customer, o.customer_id AS order_customer
FROM crm.order_line l JOIN crm.orders o USING (order_id) ORDER BY 1, 2;
SELECT * FROM crm.verify();
-- the unmerge moves them back
SELECT crm.unmerge(:merge_id) IS NOT NULL AS unmerged;
SELECT l.order_id, l.line_no, l.customer_id AS line_customer, o.customer_id AS order_customer
FROM crm.order_line l JOIN crm.orders o USING (order_id) ORDER BY 1, 2;
-- re-assigning an order recorded for the wrong shopper moves its lines too
SELECT crm.reassign_order(101, 3, 'wrong card') IS NOT NULL AS reassigned;
SELECT order_id, line_no, customer_id FROM crm.order_line WHERE order_id = 101 ORDER BY 1, 2;
-- the stats and points followed as before
SELECT customer_id, orders, spend FROM crm.customer_stats ORDER BY 1;
-- a line whose customer_id was changed with the triggers off is what verify reports
ALTER TABLE crm.order_line DISABLE TRIGGER USER;
UPDATE crm.order_line SET customer_id = 1 WHERE order_id = 104;
ALTER TABLE crm.order_line ENABLE TRIGGER USER;
SELECT * FROM crm.verify() WHERE invariant = 'rows sit on their origin''s golden customer';
ROLLBACK;
