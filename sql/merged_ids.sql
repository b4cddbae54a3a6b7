-- Issue 13, defect 1: every entry point that takes a customer id resolves a
-- merged record to its golden customer and acts on the golden; an unknown
-- id is SQLSTATE 23503.  Stitching merges 63 into 62 (they share a phone;
-- 62 is older), as on the sample data.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.loyalty_now = '2025-03-01 00:00+00';
SET LOCAL crm.stitch_on_insert = off;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(62, 'Ann (app)', '2024-01-01+00'), (63, 'Ann (pos)', '2024-02-01+00');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000062', 62), ('phone', '13900000062', 63);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 62, 'web', '2025-01-10 10:00+00', 100.00),
	(2, 63, 'web', '2025-01-12 10:00+00', 50.00);
SELECT merges FROM crm.stitch_identities();
SELECT customer_id, merged_into FROM crm.customer ORDER BY customer_id;

-- reads: the merged record's id answers with the golden's numbers
SELECT crm.points_balance(63, '2025-03-01+00') AS balance_63, crm.points_balance(62, '2025-03-01+00') AS balance_62,
	crm.points_expiring(63, '1 year', '2025-03-01+00') AS expiring_63,
	crm.qualifying_spend(63, '2025-03-01+00') AS spend_63, crm.qualifying_spend(62, '2025-03-01+00') AS spend_62;
SELECT * FROM crm.customer_window(63, '2025-01-31+00', 31);

-- writes: a redemption through 63 spends the golden's points; an adjustment
-- through 63 is journaled on the golden (origin 63, so an unmerge gives it back)
SELECT crm.redeem_points(63, 120, 'defect-1-spend', '2025-03-01+00') AS left_after_redeem;
SELECT crm.adjust_points(63, 50, 'goodwill', 'defect-1-adjust', '2025-03-01+00') AS left_after_adjust;
SELECT customer_id, origin_customer_id, kind, points, balance_after FROM crm.points_journal
WHERE kind IN ('spend', 'adjust') ORDER BY journal_id;
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account ORDER BY customer_id;
SELECT crm.points_balance(63, '2025-03-01+00') AS balance_63, crm.points_balance(62, '2025-03-01+00') AS balance_62;
-- a retry through the same id and key answers with the first result
SELECT crm.redeem_points(63, 120, 'defect-1-spend', '2025-03-01+00') AS retried;

-- orders and events inserted for 63 go to 62 (origin 63); tags too
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (3, 63, 'web', '2025-02-01 10:00+00', 10.00);
INSERT INTO crm.event (customer_id, kind, at) VALUES (63, 'browse', '2025-02-01 10:00+00');
SELECT order_id, customer_id, origin_customer_id FROM crm.orders ORDER BY order_id;
SELECT customer_id, origin_customer_id FROM crm.event ORDER BY event_id;
INSERT INTO crm.tag (name, kind) VALUES ('vip', 'manual');
SELECT crm.tag_customer(63, 'vip', '2025-02-01+00') AS tagged;
SELECT ct.customer_id, t.name FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE t.kind = 'manual';
SELECT crm.untag_customer(63, 'vip', '2025-02-02+00') AS untagged;
SELECT customer_id, orders, spend FROM crm.customer_stats ORDER BY customer_id;
SELECT * FROM crm.verify_ledgers();

-- the one owner of the rule, callable from SQL
SELECT crm.resolve_customer(63) AS resolved, crm.resolve_customer(62) AS golden, crm.lock_customer(63) AS locked;

-- an unknown customer is an error at every entry point, not a 0
SELECT pg_temp.expect_error($$SELECT crm.points_balance(999)$$) AS points_balance;
SELECT pg_temp.expect_error($$SELECT crm.points_expiring(999)$$) AS points_expiring;
SELECT pg_temp.expect_error($$SELECT crm.qualifying_spend(999)$$) AS qualifying_spend;
SELECT pg_temp.expect_error($$SELECT crm.redeem_points(999, 1, 'unknown-1')$$) AS redeem_points;
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(999, 1, 'x')$$) AS adjust_points;
SELECT pg_temp.expect_error($$SELECT * FROM crm.customer_window(999, '2025-01-31+00', 31)$$) AS customer_window;
SELECT pg_temp.expect_error($$SELECT crm.tag_customer(999, 'vip')$$) AS tag_customer;
SELECT pg_temp.expect_error($$SELECT crm.untag_customer(999, 'vip')$$) AS untag_customer;
SELECT pg_temp.expect_error($$SELECT * FROM crm.recommend(999)$$) AS recommend;
SELECT pg_temp.expect_error($$SELECT crm.merge_customers(62, 999)$$) AS merge_customers;
SELECT pg_temp.expect_error($$SELECT crm.resolve_customer(999)$$) AS resolve_customer;
SELECT pg_temp.expect_error($$SELECT crm.lock_customer(999)$$) AS lock_customer;
SELECT * FROM crm.verify();
ROLLBACK;
