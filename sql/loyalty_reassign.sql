-- crm.reassign_order: an order recorded for the wrong shopper (issue 13,
-- defect 5).  Before it, the only way was a refund and a new order; a direct
-- UPDATE of customer_id is refused (core_reassign).  The order moves with
-- its points (what it still holds: clawed back from the old customer, debt
-- where they were spent, reinstated on the new one), qualifying spend,
-- tiers, stats and rule tags; lines follow the order; the move is journaled
-- and logged.  One transaction, rolled back.
\i sql/include/expect_error.sql
-- Sequences are not rolled back: remember them (other files print ids).
CREATE TEMP TABLE seq_before AS
	SELECT format('%I.%I', schemaname, sequencename) AS seq, start_value, last_value
	FROM pg_sequences WHERE schemaname = 'crm';
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.loyalty_now = '2025-03-01 00:00+00';
SET LOCAL crm.as_of = '2025-03-01 00:00+00';
SET LOCAL crm.stitch_on_insert = off;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'Ann', '2025-01-01+00'), (2, 'Bob', '2025-01-02+00'),
	(3, 'Cid (pos)', '2025-01-05+00'), (4, 'Cid', '2025-01-03+00'), (5, 'Eve', '2025-01-04+00');
INSERT INTO crm.tag (name, rule) VALUES ('regular', 'orders >= 2');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(10, 2, 'web', '2025-02-01 10:00+00', 1000.00),	-- Bob's card, Ann's purchase: 1000 points, silver
	(11, 1, 'web', '2025-01-15 10:00+00', 200.00),	-- Ann: 200 points
	(12, 4, 'web', '2025-01-20 10:00+00', 50.00);	-- Cid: 50 points
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(10, 1, 'TV-1', 'electronics', 1, 900.00), (10, 2, 'HDMI', 'electronics', 2, 100.00);
-- Bob spends 900 of the points, then 100.00 of the order is refunded.
SELECT crm.redeem_points(2, 900, 'bob-spend', '2025-02-10+00') AS bob_left;
UPDATE crm.orders SET refunded_amount = 100.00 WHERE order_id = 10;
CREATE TEMP VIEW accounts AS
	SELECT a.customer_id, crm.points_balance(a.customer_id, '2025-03-01+00') AS balance, a.debt, a.tier,
	       a.qualifying_spend, a.spend_month
	FROM crm.loyalty_account a;
CREATE TEMP VIEW stats AS
	SELECT c.customer_id, s.orders, s.spend, s.line_spend,
	       (SELECT string_agg(t.name, ',' ORDER BY t.name) FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id)
	        WHERE ct.customer_id = c.customer_id) AS tags
	FROM crm.customer c LEFT JOIN crm.customer_stats s USING (customer_id);
CREATE TEMP VIEW journal AS
	SELECT journal_id - (SELECT min(journal_id) FROM crm.points_journal) + 1 AS n, customer_id, origin_customer_id,
	       kind, points, debt, order_id, reason
	FROM crm.points_journal;
SELECT * FROM accounts ORDER BY customer_id;
SELECT * FROM stats ORDER BY customer_id;

-- 1. Order 10 goes to Ann: the 900 points it still holds leave Bob, who
--    spent them (debt 900), and are reinstated on Ann with the order's own
--    expiry; its 900.00 net spend moves (Ann reaches silver; Bob keeps the
--    silver he reached this month, as after a refund: tier_hold_months);
--    both customers' stats and rule tags are rebuilt; lines follow.
SELECT crm.reassign_order(10, 1, 'cashier scanned the wrong card') IS NOT NULL AS logged;
SELECT order_id, customer_id, origin_customer_id, net_amount FROM crm.orders ORDER BY order_id;
SELECT o.customer_id, count(*) AS lines, sum(l.amount) AS amount
FROM crm.order_line l JOIN crm.orders o USING (order_id) GROUP BY 1 ORDER BY 1;
SELECT * FROM accounts ORDER BY customer_id;
SELECT * FROM journal ORDER BY n;
SELECT customer_id, from_tier, to_tier, reason, order_id FROM crm.tier_history ORDER BY tier_history_id;
SELECT * FROM stats ORDER BY customer_id;
SELECT order_id, from_customer, from_golden, to_customer, to_golden, reason, reassigned_by = current_user AS by_me
FROM crm.order_reassignment ORDER BY reassignment_id;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();

-- 2. A later refund claws back from Ann only, by the same proportion.
UPDATE crm.orders SET refunded_amount = 300.00 WHERE order_id = 10;
SELECT * FROM accounts ORDER BY customer_id;
SELECT * FROM journal WHERE n > 6 ORDER BY n;

-- 3. Same record again: nothing to do, nothing logged (a retry is harmless).
SELECT crm.reassign_order(10, 1, 'retry') IS NULL AS no_op;
SELECT count(*) AS log_rows FROM crm.order_reassignment;

-- 4. To a merged record: the order goes to its golden customer and keeps
--    the record as its origin, so an unmerge takes it along.
SELECT crm.merge_customers(3, 4, 'same shopper') IS NOT NULL AS merged;
SELECT crm.reassign_order(11, 3, 'Cid''s purchase') IS NOT NULL AS logged;
SELECT order_id, customer_id, origin_customer_id FROM crm.orders ORDER BY order_id;
SELECT * FROM accounts ORDER BY customer_id;
SELECT crm.unmerge(merge_id) IS NOT NULL AS undone FROM crm.merge_log WHERE undone_at IS NULL;
SELECT order_id, customer_id, origin_customer_id FROM crm.orders ORDER BY order_id;
SELECT * FROM accounts ORDER BY customer_id;
SELECT * FROM stats ORDER BY customer_id;
SELECT order_id, from_customer, from_golden, to_customer, to_golden, reason
FROM crm.order_reassignment ORDER BY reassignment_id;
SELECT * FROM crm.verify();

-- 5. A fully refunded order moves without points or spend (it holds none);
--    reversing the refund later pays the new customer.
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 12;
SELECT crm.reassign_order(12, 2, 'wrong card') IS NOT NULL AS logged;
SELECT * FROM accounts ORDER BY customer_id;
UPDATE crm.orders SET status = 'paid' WHERE order_id = 12;
SELECT * FROM accounts ORDER BY customer_id;
SELECT * FROM journal WHERE order_id = 12 ORDER BY n;

-- 6. Bad input: nothing moves.
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(999, 1, 'x')$$) AS unknown_order;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(10, 999, 'x')$$) AS unknown_customer;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(10, NULL, 'x')$$) AS null_customer;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(NULL, 1, 'x')$$) AS null_order;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(10, 2, NULL)$$) AS null_reason;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(10, 2, '  ')$$) AS blank_reason;
UPDATE crm.customer SET forgotten_at = '2025-02-20+00' WHERE customer_id = 5;
SELECT pg_temp.expect_error($$SELECT crm.reassign_order(10, 5, 'x')$$) AS forgotten;
-- the internal steps cannot change an origin on their own
SELECT pg_temp.expect_error($$SELECT crm.reassign_order_steps(10, 2, 'x')$$) AS steps_alone;
SELECT order_id, customer_id, origin_customer_id FROM crm.orders ORDER BY order_id;
SELECT count(*) AS log_rows FROM crm.order_reassignment;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
SELECT bool_and(CASE WHEN b.last_value IS NULL THEN setval(b.seq, b.start_value, false)
                     ELSE setval(b.seq, b.last_value) END IS NOT NULL) AS sequences_restored
FROM seq_before b;
