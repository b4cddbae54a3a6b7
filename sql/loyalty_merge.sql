-- Loyalty merge and unmerge hooks (crm.customer_hook).  The core rows are
-- moved here by hand, as crm.merge_customers / crm.unmerge will do, then the
-- hooks run through crm.run_customer_hooks.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'Europe/Berlin';
BEGIN;
-- The story happens in 2025: lots count as expired by that clock, not the
-- wall clock's (redemptions never spend lots expired by crm.loyalty_now()).
SET LOCAL crm.loyalty_now = '2025-01-01 00:00+00';
INSERT INTO crm.customer (customer_id, name) VALUES (11, 'Ann (app)'), (12, 'Ann (pos)'), (13, 'Solo');
SELECT event, hook, run_order, fn FROM crm.customer_hook WHERE hook = 'loyalty' ORDER BY event;

INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 11, 'web', '2025-01-10 10:00+00', 100.00),		-- 11: 100, expires 2026-02-01
	(2, 12, 'web', '2025-01-12 10:00+00', 50.00),		-- 12: 50, expires 2026-02-01
	(3, 12, 'web', '2025-02-12 10:00+00', 1000.00);		-- 12: 1000, expires 2026-03-01; silver
SELECT customer_id, ledger, tier, qualifying_spend FROM crm.loyalty_account ORDER BY customer_id;

-- merge 12 into 11
UPDATE crm.customer SET merged_into = 11 WHERE customer_id = 12;
UPDATE crm.orders SET customer_id = 11 WHERE customer_id = 12;
SELECT crm.run_customer_hooks('merge', 11, 12) >= 1 AS hooks_ran;  -- loyalty's and any other feature's
SELECT customer_id, ledger, debt, tier, qualifying_spend FROM crm.loyalty_account ORDER BY customer_id;
SELECT customer_id, origin_customer_id, kind, points, order_id, reason FROM crm.points_journal ORDER BY journal_id;
SELECT customer_id, from_tier, to_tier, reason FROM crm.tier_history ORDER BY tier_history_id;
SELECT * FROM crm.verify_ledgers();

-- While merged: the survivor spends points earned on both records, and an
-- order of the merged record is partly refunded.
SELECT crm.redeem_points(11, 300, 'merged-spend', '2025-03-01+00') AS left_after_spend;
UPDATE crm.orders SET refunded_amount = 500.00 WHERE order_id = 3;
SELECT customer_id, origin_customer_id, kind, points, lots, order_id FROM crm.points_journal
WHERE kind IN ('spend', 'clawback') ORDER BY journal_id;
SELECT * FROM crm.verify_ledgers();

-- unmerge: rows go back to the record they were earned or spent on; the
-- survivor spent 200 points of 12's lots (50 of January, 150 of February),
-- which are charged to 12: 11 ends with 0, 12 with 1000 - 500 - 150 = 350.
UPDATE crm.customer SET merged_into = NULL WHERE customer_id = 12;
UPDATE crm.orders SET customer_id = origin_customer_id WHERE origin_customer_id = 12;
SELECT crm.run_customer_hooks('unmerge', 11, 12) >= 1 AS hooks_ran;  -- loyalty's and any other feature's
SELECT customer_id, ledger, debt, tier, qualifying_spend FROM crm.loyalty_account ORDER BY customer_id;
SELECT customer_id, origin_customer_id, kind, points, lots, reason FROM crm.points_journal
WHERE kind = 'merge' ORDER BY journal_id;
SELECT crm.points_balance(11, '2025-03-02+00') AS survivor, crm.points_balance(12, '2025-03-02+00') AS restored;
SELECT * FROM crm.verify_ledgers();

-- merging a record without an account changes nothing; bad calls
SELECT crm.run_customer_hooks('merge', 11, 13) >= 1 AS hooks_ran;  -- loyalty's and any other feature's
SELECT count(*) AS accounts FROM crm.loyalty_account WHERE customer_id = 13;
SELECT pg_temp.expect_error($$SELECT crm.loyalty_merge(11, 11)$$);
SELECT pg_temp.expect_error($$SELECT crm.run_customer_hooks('merge', 11, NULL)$$);
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
