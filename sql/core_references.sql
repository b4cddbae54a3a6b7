-- Issue 14, item 2: orders, order_line and event reference their customers,
-- stores and orders through crm's triggers instead of FOREIGN KEY
-- constraints (src/common/references.c), with the same guarantees and the
-- same messages: a missing parent is 23503 naming the constraint the foreign
-- key had; a referenced store or order cannot be deleted or re-keyed
-- (restrict), deleting an order deletes its lines (cascade); TRUNCATE of a
-- parent needs its referencing tables in the same command.  Parents inserted
-- by the same statement (a CTE) count.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.store (store_id, name, city) VALUES (1, 'Downtown', 'Shanghai'), (2, 'Airport', 'Shanghai'), (3, 'Unused', 'Beijing');
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO crm.orders (order_id, customer_id, channel, store_id, ordered_at, amount) VALUES
	(101, 1, 'pos', 1, '2026-01-10 10:00+00', 30.00),
	(102, 2, 'pos', 1, '2026-01-11 10:00+00', 20.00);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(101, 1, 'FRE-0001', 'fresh', 1, 10.00), (101, 2, 'FRE-0002', 'fresh', 2, 20.00), (102, 1, 'DAI-0001', 'dairy', 1, 20.00);
INSERT INTO crm.event (customer_id, kind, at, channel, store_id) VALUES (1, 'store_visit', '2026-01-10 09:00+00', 'pos', 2);

-- inserting or updating a row whose parent is missing
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (99, 'web', '2026-01-12 10:00+00', 1.00)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, store_id, ordered_at, amount) VALUES (1, 'pos', 99, '2026-01-12 10:00+00', 1.00)$$);
SELECT pg_temp.expect_error($$UPDATE crm.orders SET store_id = 98 WHERE order_id = 101$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (97, 'browse', '2026-01-12 10:00+00')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at, store_id) VALUES (1, 'browse', '2026-01-12 10:00+00', 96)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (999, 1, 'X', 'fresh', 1, 1.00)$$);
SELECT pg_temp.expect_error($$UPDATE crm.order_line SET order_id = 998 WHERE order_id = 102$$);
-- a good row and a bad one in one statement: the statement fails whole
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (101, 3, 'X', 'fresh', 1, 1.00), (997, 1, 'X', 'fresh', 1, 1.00)$$);
SELECT count(*) AS lines_of_101 FROM crm.order_line WHERE order_id = 101;

-- parents inserted by the same statement: a new shopper's first order, an
-- order with its lines
WITH c AS (INSERT INTO crm.customer (customer_id, name) VALUES (3, 'Cy') RETURNING customer_id)
INSERT INTO crm.orders (order_id, customer_id, channel, store_id, ordered_at, amount)
SELECT 103, customer_id, 'pos', 3, '2026-01-12 10:00+00', 15.00 FROM c;
WITH o AS (INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
	VALUES (104, 2, 'web', '2026-01-13 10:00+00', 8.00) RETURNING order_id)
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) SELECT order_id, 1, 'SNK-0001', 'snacks', 1, 8.00 FROM o;
SELECT o.order_id, o.customer_id, o.store_id, count(l.*) AS lines
FROM crm.orders o LEFT JOIN crm.order_line l USING (order_id) GROUP BY 1, 2, 3 ORDER BY 1;

-- the parent's side: restrict
SELECT pg_temp.expect_error($$DELETE FROM crm.store WHERE store_id = 1$$);
SELECT pg_temp.expect_error($$DELETE FROM crm.store WHERE store_id = 2$$);
SELECT pg_temp.expect_error($$UPDATE crm.store SET store_id = 11 WHERE store_id = 3$$);
SELECT pg_temp.expect_error($$UPDATE crm.orders SET order_id = 201 WHERE order_id = 101$$);
-- a store nothing references can go; a key update to the same value is no change
UPDATE crm.store SET store_id = 2 WHERE store_id = 2;
INSERT INTO crm.store (store_id, name, city) VALUES (4, 'Pop-up', 'Beijing');
DELETE FROM crm.store WHERE store_id = 4;
-- an order without lines may change its key
UPDATE crm.orders SET order_id = 203 WHERE order_id = 103;

-- cascade: deleting an order deletes its lines, and its points and stats go
SELECT crm.points_balance(2, '2026-02-01+00') AS bob_points_before;
DELETE FROM crm.orders WHERE order_id = 104;
SELECT count(*) AS lines_of_104 FROM crm.order_line WHERE order_id = 104;
SELECT crm.points_balance(2, '2026-02-01+00') AS bob_points_after;

-- TRUNCATE of a parent alone is refused while its referencing table has rows
SELECT pg_temp.expect_error($$TRUNCATE crm.orders$$);
SELECT pg_temp.expect_error($$TRUNCATE crm.store$$);
SELECT * FROM crm.verify();
ROLLBACK;
