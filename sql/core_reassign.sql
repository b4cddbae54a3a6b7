-- Re-assigning rows by hand (issue 13, item 5).
--
-- Before the fix, UPDATE crm.orders SET customer_id = 2 WHERE order_id = 1
-- (an order of customer 1) succeeded: customer_stats moved the order's
-- spend to customer 2, but the points it earned stayed on customer 1's
-- account and journal, and origin_customer_id kept naming customer 1, which
-- is not merged into 2, so no unmerge could ever account for the row.  The
-- same UPDATE on crm.event and crm.identity succeeded too.  Now the origin
-- trigger (crm.fill_origin_customer) lets customer_id change only along the
-- merges of the row's origin record: to the origin itself, or to a record
-- the origin is merged into (directly or through others), which is what
-- merges, unmerges and stitching do; anything else is 55000 with a hint
-- naming the supported way (for orders crm.reassign_order, tested in
-- loyalty_reassign).  One transaction, rolled back.
\i sql/include/expect_error.sql
-- pg_temp.error_hint(sql): the SQLSTATE, message and hint of the error sql raises.
CREATE FUNCTION pg_temp.error_hint(sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	st text;
	msg text;
	hint text;
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
	RETURN st || ': ' || msg || E'\nHINT: ' || hint;
END
$$;
-- Sequences are not rolled back: remember them, so that later files see
-- the ids they expect (identity_stitch prints merge ids).
CREATE TEMP TABLE seq_before AS
	SELECT format('%I.%I', schemaname, sequencename) AS seq, start_value, last_value
	FROM pg_sequences WHERE schemaname = 'crm';
\pset format unaligned
BEGIN;
SET LOCAL crm.stitch_on_insert = off;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'Ann (app)', '2025-01-01+00'), (2, 'Bob', '2025-01-02+00'), (3, 'Ann (pos)', '2025-01-03+00');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 1, 'web', '2025-02-01 10:00+00', 100.00),
	(2, 3, 'web', '2025-02-02 10:00+00', 40.00);
INSERT INTO crm.event (event_id, customer_id, kind, at) VALUES
	(1, 1, 'sign_in', '2025-02-01 09:00+00'),
	(2, 3, 'sign_in', '2025-02-02 09:00+00');
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES
	(1, 'email', 'ann@example.com', 1),
	(2, 'member_no', 'M0000000003', 3);
CREATE TEMP VIEW state AS
	SELECT 'order' AS what, order_id AS id, customer_id, origin_customer_id FROM crm.orders
	UNION ALL SELECT 'event', event_id, customer_id, origin_customer_id FROM crm.event
	UNION ALL SELECT 'identity', identity_id, customer_id, origin_customer_id FROM crm.identity;
CREATE TEMP VIEW money AS
	SELECT c.customer_id, s.orders, s.spend, crm.points_balance(c.customer_id, '2025-03-01+00') AS points
	FROM crm.customer c LEFT JOIN crm.customer_stats s USING (customer_id);
SELECT * FROM state ORDER BY what, id;
SELECT * FROM money ORDER BY customer_id;

-- 1. A direct change of customer_id is refused on every table, with the
--    supported way in the hint; nothing moved.
SELECT pg_temp.error_hint($$UPDATE crm.orders SET customer_id = 2 WHERE order_id = 1$$) AS orders;
SELECT pg_temp.error_hint($$UPDATE crm.event SET customer_id = 2 WHERE event_id = 1$$) AS event;
SELECT pg_temp.error_hint($$UPDATE crm.identity SET customer_id = 2 WHERE identity_id = 1$$) AS identity;
-- also as part of a wider update, and to a record the origin is not merged into
SELECT pg_temp.expect_error($$UPDATE crm.orders SET customer_id = 3, refunded_amount = 1 WHERE order_id = 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.orders SET customer_id = customer_id + 1$$);
SELECT * FROM state ORDER BY what, id;
SELECT * FROM money ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();
-- updates that leave customer_id alone (or set it to itself) are not checked
UPDATE crm.orders SET customer_id = customer_id, refunded_amount = 10.00 WHERE order_id = 1;
UPDATE crm.event SET props = '{"app": "ios"}' WHERE event_id = 1;
UPDATE crm.identity SET value = 'ann@shop.example' WHERE identity_id = 1;

-- 2. Refunding an order and inserting it again for the right customer
--    also works (points and stats follow).
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 1;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (3, 2, 'web', '2025-02-01 10:00+00', 100.00);
SELECT * FROM money ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();

-- 3. A merge moves rows (3 into 1: the older survives); so does an unmerge.
SELECT crm.merge_customers(3, 1, 'same shopper') AS merge_id \gset
SELECT * FROM state ORDER BY what, id;
SELECT * FROM money ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();
-- while merged, rows of record 3 still cannot go to another customer
SELECT pg_temp.expect_error($$UPDATE crm.orders SET customer_id = 2 WHERE order_id = 2$$);
SELECT pg_temp.expect_error($$UPDATE crm.identity SET customer_id = 2 WHERE identity_id = 2$$);
SELECT crm.unmerge(:merge_id) AS undone;
SELECT * FROM state ORDER BY what, id;
SELECT * FROM money ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();

-- 4. Stitching moves rows too: batch (a shared phone), then online.
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (4, 'Cid', '2025-01-04+00'), (5, 'Cid (pos)', '2025-01-05+00');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (4, 5, 'web', '2025-02-05 10:00+00', 30.00);
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES
	(3, 'phone', '13900000004', 4), (4, 'phone', '13900000004', 5);
SELECT merges FROM crm.stitch_identities();
SET LOCAL crm.stitch_on_insert = on;
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES (5, 'phone', '13900000004', 2);
SELECT customer_id, merged_into FROM crm.customer ORDER BY customer_id;
SELECT * FROM state ORDER BY what, id;
SELECT * FROM money ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();
-- undo both, newest first
SELECT crm.unmerge(merge_id, true) AS undone FROM crm.merge_log WHERE undone_at IS NULL ORDER BY merge_id LIMIT 1;
SELECT customer_id, merged_into FROM crm.customer ORDER BY customer_id;
SELECT * FROM state ORDER BY what, id;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
SELECT bool_and(CASE WHEN b.last_value IS NULL THEN setval(b.seq, b.start_value, false)
                     ELSE setval(b.seq, b.last_value) END IS NOT NULL) AS sequences_restored
FROM seq_before b;
