-- The member programme: earning rules, tiers, refunds and clawback, debt,
-- redemption and its errors, adjustments, expiry and downgrade in crm.tick,
-- the append-only journal, configuration changes.  One transaction, rolled
-- back.
\i sql/include/expect_error.sql
SET TimeZone = 'America/Los_Angeles';
BEGIN;
-- The story happens in 2025: lots count as expired by that clock, not the
-- wall clock's (redemptions never spend lots expired by crm.loyalty_now()).
SET LOCAL crm.loyalty_now = '2025-01-01 00:00+00';
INSERT INTO crm.store (store_id, name) VALUES (1, 'Downtown');
INSERT INTO crm.customer (customer_id, name, birthday) VALUES
	(1, 'Ann', '1990-03-15'), (2, 'Bob', '1988-02-29'), (3, 'Cat', NULL),
	(4, 'Dan', '1970-12-01'), (5, 'Eve', '1985-07-04'), (6, 'Fay', NULL), (7, 'Gus', NULL);

-- The shipped configuration.
SELECT tier, rank, threshold, multiplier FROM crm.tier ORDER BY rank;
SELECT rule, points_per_unit, category_bonus, birthday_multiplier, member_day, member_day_multiplier FROM crm.earn_rule ORDER BY rule;
SELECT time_zone, expiry_months, expiry_rounding, tier_hold_months FROM crm.loyalty_program;

CREATE FUNCTION pg_temp.journal(c bigint) RETURNS TABLE (kind text, points bigint, debt bigint, order_id bigint, lots crm.loyalty_ledger, reason text)
LANGUAGE sql AS $$
	SELECT j.kind, j.points, j.debt, j.order_id, j.lots, j.reason FROM crm.points_journal j
	WHERE j.customer_id = c ORDER BY j.journal_id
$$;

-- ---------------------------------------------------------------------------
-- Earning: base points per unit of net amount, floor; member day (the 8th)
-- and birthday month multiply; multipliers stack.
-- ---------------------------------------------------------------------------
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(101, 3, 'web', '2025-05-05 10:00+00', 123.45),	-- 123
	(102, 3, 'web', '2025-05-08 10:00+00', 50.00),	-- member day: 100
	(103, 1, 'web', '2025-03-08 10:00+00', 10.00),	-- birthday month and member day: 40
	(104, 1, 'web', '2025-04-10 10:00+00', 10.99),	-- 10
	(105, 2, 'web', '2025-02-14 10:00+00', 20.00),	-- Feb 29 birthday, non-leap year: 40
	(106, 2, 'web', '2024-02-14 10:00+00', 20.00),	-- leap year: 40
	(107, 2, 'web', '2025-03-01 10:00+00', 20.00),	-- 20
	(108, 3, 'web', '2025-05-06 10:00+00', 0.00);	-- nothing
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, status) VALUES
	(109, 3, 'web', '2025-05-07 10:00+00', 80.00, 'refunded');	-- inserted refunded: nothing
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, refunded_amount) VALUES
	(110, 3, 'web', '2025-05-09 10:00+00', 80.00, 30.00);	-- net 50
SELECT customer_id, kind, points, order_id, lots FROM crm.points_journal ORDER BY order_id;
SELECT customer_id, crm.points_balance(customer_id, '2025-06-01+00') AS balance, tier, qualifying_spend
FROM crm.loyalty_account ORDER BY customer_id;
-- member day and birthday month are counted in the programme time zone
-- (UTC): 2025-05-08 01:00 in Los Angeles is the 8th there, the 8th in UTC too;
-- 2025-05-07 20:00 in Los Angeles is already the 8th in UTC.
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(111, 6, 'web', '2025-05-07 20:00-07', 10.00);
SELECT order_id, points FROM crm.points_journal WHERE order_id = 111;
UPDATE crm.loyalty_program SET time_zone = 'America/Los_Angeles';
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(112, 6, 'web', '2025-05-07 20:00-07', 10.00);
SELECT order_id, points FROM crm.points_journal WHERE order_id = 112;
UPDATE crm.loyalty_program SET time_zone = 'UTC';

-- ---------------------------------------------------------------------------
-- Expiry policy at exact boundaries, in a programme time zone that is not
-- the session's, across leap years.
-- ---------------------------------------------------------------------------
UPDATE crm.loyalty_program SET time_zone = 'Asia/Shanghai';
SELECT e AS earned, crm.loyalty_expires_at(e) AT TIME ZONE 'Asia/Shanghai' AS expires_shanghai_local,
       crm.loyalty_expires_at(e) AS expires_session_tz
FROM unnest(ARRAY['2025-01-31 23:59:59.999999+08', '2025-02-01 00:00:00+08', '2024-02-29 12:00+08',
                  '2025-12-31 23:30+08']::timestamptz[]) e ORDER BY e;
UPDATE crm.loyalty_program SET expiry_rounding = 'exact';
SELECT e AS earned, crm.loyalty_expires_at(e) AT TIME ZONE 'Asia/Shanghai' AS expires_shanghai_local
FROM unnest(ARRAY['2024-02-29 12:00+08', '2025-01-31 09:15+08', '2023-03-31 23:59:59+08']::timestamptz[]) e ORDER BY e;
UPDATE crm.loyalty_program SET expiry_months = 48;
SELECT crm.loyalty_expires_at('2024-02-29 12:00+08') AT TIME ZONE 'Asia/Shanghai' AS leap_to_leap;
UPDATE crm.loyalty_program SET time_zone = 'America/New_York', expiry_months = 1;
-- across the spring-forward gap: 2026-03-08 02:30 does not exist in New York
SELECT crm.loyalty_expires_at('2026-02-08 02:30-05') AS exact_into_dst_gap;
UPDATE crm.loyalty_program SET time_zone = 'UTC', expiry_rounding = 'month_end', expiry_months = 12;
-- an order at the last instant of a month in the programme zone
UPDATE crm.loyalty_program SET time_zone = 'Asia/Shanghai';
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(120, 6, 'web', '2025-01-31 23:59:59+08', 10.00), (121, 6, 'web', '2025-02-01 00:00:00+08', 10.00);
SELECT order_id, lots FROM crm.points_journal WHERE order_id IN (120, 121) ORDER BY order_id;
SELECT crm.points_balance(6, '2026-01-31 23:59:59.999999+08') - crm.points_balance(6, '2026-02-01 00:00:00+08') AS lost_at_shanghai_midnight;
UPDATE crm.loyalty_program SET time_zone = 'UTC';

-- ---------------------------------------------------------------------------
-- Tiers: crossing a threshold upgrades at once; the crossing order earns at
-- the old tier, the next at the new multiplier.
-- ---------------------------------------------------------------------------
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(201, 4, 'web', '2025-01-02 10:00+00', 900.00),		-- bronze: 900
	(202, 4, 'web', '2025-01-03 10:00+00', 200.00),		-- bronze: 200, then silver
	(203, 4, 'web', '2025-01-04 10:00+00', 100.00),		-- silver x1.25: 125
	(204, 4, 'web', '2025-01-05 10:00+00', 3800.00),	-- silver: 4750, then gold
	(205, 4, 'web', '2025-01-06 10:00+00', 10.01);		-- gold x1.5: 15
SELECT order_id, points FROM crm.points_journal WHERE customer_id = 4 ORDER BY order_id;
SELECT customer_id, from_tier, to_tier, changed_at, reason, order_id, qualifying_spend FROM crm.tier_history ORDER BY tier_history_id;
SELECT tier, tier_since, qualifying_spend, crm.qualifying_spend(4, '2025-01-31+00') AS rolling_jan,
       crm.qualifying_spend(4, '2025-12-31+00') AS rolling_dec, crm.qualifying_spend(4, '2026-01-01+00') AS rolling_next_jan
FROM crm.loyalty_account WHERE customer_id = 4;

-- A rule with a validity window and a higher priority (configuration changes
-- reach the trigger at once).
INSERT INTO crm.earn_rule (rule, priority, valid_from, valid_to, points_per_unit, member_day)
VALUES ('june_triple', 10, '2025-06-01+00', '2025-07-01+00', 3, NULL);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(301, 6, 'web', '2025-05-31 23:59:59+00', 10.00),	-- standard: 10
	(302, 6, 'web', '2025-06-08 00:00:00+00', 10.00),	-- june_triple, no member day there: 30
	(303, 6, 'web', '2025-07-01 00:00:00+00', 10.00);	-- standard again: 10
SELECT order_id, points FROM crm.points_journal WHERE order_id BETWEEN 301 AND 303 ORDER BY order_id;
DELETE FROM crm.earn_rule WHERE rule = 'june_triple';

-- ---------------------------------------------------------------------------
-- Category bonus: lines arrive in a later statement; extra points per unit
-- of line amount, journaled as their own 'earn' entries (not multiplied).
-- ---------------------------------------------------------------------------
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(101, 1, 'BAB-0001', 'baby', 1, 40.50), (101, 2, 'FRE-0001', 'fresh', 1, 82.95),
	(102, 1, 'ORG-0001', 'organic', 2, 25.00), (102, 2, 'BAB-0002', 'baby', 1, 25.00),
	(109, 1, 'BAB-0003', 'baby', 1, 80.00),		-- refunded order: no bonus
	(110, 1, 'ORG-0002', 'organic', 1, 80.00);	-- 80 bonus, 30/80 refunded: keeps 50
SELECT order_id, kind, points, debt, reason FROM crm.points_journal WHERE order_id IN (101, 102, 109, 110) ORDER BY journal_id;

-- ---------------------------------------------------------------------------
-- Refunds claw back proportionally, the order's own lot first.
-- ---------------------------------------------------------------------------
-- order 101 earned 123 + 40 bonus = 163; refund 61.73 of 123.45 (net 61.72):
-- keeps floor(163 * 6172 / 12345) = 81, claws back 82
UPDATE crm.orders SET refunded_amount = 61.73 WHERE order_id = 101;
SELECT kind, points, debt, lots, reason FROM crm.points_journal WHERE order_id = 101 AND kind = 'clawback';
-- the rest of it, by status
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 101;
SELECT sum(points) AS net_points_of_order_101 FROM crm.points_journal WHERE order_id = 101;
-- an update that does not lower the net amount changes nothing
UPDATE crm.orders SET external_ref = 'R-1' WHERE order_id = 102;
SELECT count(*) AS clawbacks_of_102 FROM crm.points_journal WHERE order_id = 102 AND kind = 'clawback';
-- refunds lower qualifying spend
SELECT crm.qualifying_spend(3, '2025-05-31+00') AS cat_spend;

-- Spent points: the clawback takes other lots, then records a debt, which
-- the next points earned repay.
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(401, 5, 'web', '2025-09-01 10:00+00', 100.00),
	(402, 5, 'web', '2025-10-01 10:00+00', 30.00);
SELECT crm.redeem_points(5, 120, 'eve-1', '2025-10-02+00') AS eve_left;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 401;
SELECT ledger, debt FROM crm.loyalty_account WHERE customer_id = 5;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(403, 5, 'web', '2025-10-03 10:00+00', 150.00);
SELECT * FROM pg_temp.journal(5);
SELECT ledger, debt FROM crm.loyalty_account WHERE customer_id = 5;

-- Deleting an order gives back what it earned, as a full refund would
-- (journaled as a clawback with reason 'order deleted'), and its spend.
INSERT INTO crm.customer (customer_id, name) VALUES (8, 'Hal');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, refunded_amount) VALUES
	(501, 8, 'web', '2025-09-01 10:00+00', 100.00, 0),
	(502, 8, 'web', '2025-09-02 10:00+00', 50.00, 10.00),
	(503, 8, 'web', '2025-09-03 10:00+00', 20.00, 20.00);
SELECT crm.redeem_points(8, 130, 'hal-1', '2025-09-04+00') AS hal_left;
SELECT crm.qualifying_spend(8, '2025-09-30+00') AS hal_spend;
DELETE FROM crm.orders WHERE order_id IN (501, 503);
SELECT * FROM pg_temp.journal(8);
SELECT ledger, debt FROM crm.loyalty_account WHERE customer_id = 8;
SELECT crm.qualifying_spend(8, '2025-09-30+00') AS hal_spend;
DELETE FROM crm.orders WHERE order_id = 502;
SELECT kind, points, debt, reason FROM crm.points_journal WHERE order_id = 502 ORDER BY journal_id;
SELECT ledger, debt, qualifying_spend FROM crm.loyalty_account WHERE customer_id = 8;
SELECT count(*) AS ledger_mismatches FROM crm.verify_ledgers();

-- A refund reversed gives back what the net amount covers again, as a
-- 'reinstate' lot earned at the order's time and expiring with its lot;
-- debt is repaid from it first, qualifying spend returns, tiers upgrade.
INSERT INTO crm.customer (customer_id, name) VALUES (9, 'Ivy');
-- 1,200 with 700 refunded at once: earns 1,200, claws back 700, spend 500
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, refunded_amount) VALUES
	(601, 9, 'web', '2025-09-01 10:00+00', 1200.00, 700.00);
SELECT crm.points_balance(9, '2025-09-02+00') AS ivy, crm.qualifying_spend(9, '2025-09-30+00') AS ivy_spend,
       (SELECT tier FROM crm.loyalty_account WHERE customer_id = 9) AS ivy_tier;
-- 500 of the refund reversed: keeps floor(1200 * 1000 / 1200) = 1,000, so 500 come back;
-- spend 1,000 reaches silver
UPDATE crm.orders SET refunded_amount = 200.00 WHERE order_id = 601;
SELECT crm.points_balance(9, '2025-09-02+00') AS ivy, crm.qualifying_spend(9, '2025-09-30+00') AS ivy_spend,
       (SELECT tier FROM crm.loyalty_account WHERE customer_id = 9) AS ivy_tier;
SELECT from_tier, to_tier, reason, order_id, qualifying_spend FROM crm.tier_history WHERE customer_id = 9;
-- spend it all, refund all (debt 1,000), then the refund is reversed: the
-- points come back and repay the debt
SELECT crm.redeem_points(9, 1000, 'ivy-1', '2025-09-05+00') AS ivy_left;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 601;
SELECT ledger, debt FROM crm.loyalty_account WHERE customer_id = 9;
UPDATE crm.orders SET status = 'paid' WHERE order_id = 601;
SELECT ledger, debt FROM crm.loyalty_account WHERE customer_id = 9;
-- the last 200: the whole 1,200 kept
UPDATE crm.orders SET refunded_amount = 0 WHERE order_id = 601;
SELECT * FROM pg_temp.journal(9);
SELECT crm.points_balance(9, '2025-09-06+00') AS ivy, debt, qualifying_spend
FROM crm.loyalty_account WHERE customer_id = 9;
-- reinstated points expire with the order's own lot (2026-10-01)
SELECT crm.points_balance(9, '2026-11-01+00') AS ivy_after_expiry;
SELECT count(*) AS ledger_mismatches FROM crm.verify_ledgers();

-- ---------------------------------------------------------------------------
-- Redemption: exactly once per key; errors.
-- ---------------------------------------------------------------------------
SELECT crm.points_balance(4, '2025-02-01+00') AS dan;
SELECT crm.redeem_points(4, 1000, 'dan-1', '2025-02-01+00') AS first;
SELECT crm.redeem_points(4, 1000, 'dan-1', '2025-02-01+00') AS retry_same_result;
SELECT crm.redeem_points(4, 10, 'dan-2', '2025-02-01+00') AS second;
SELECT crm.redeem_points(4, 1000, 'dan-1', '2025-02-02+00') AS retry_later_still_first_result;
SELECT count(*) AS spends FROM crm.points_journal WHERE customer_id = 4 AND kind = 'spend';
SELECT q, pg_temp.expect_error(q) FROM unnest(ARRAY[
	$$SELECT crm.redeem_points(4, 999, 'dan-1', '2025-02-01+00')$$,
	$$SELECT crm.redeem_points(3, 1000, 'dan-1', '2025-02-01+00')$$,
	$$SELECT crm.redeem_points(4, 1000000, 'dan-3', '2025-02-01+00')$$,
	$$SELECT crm.redeem_points(7, 1, 'gus-1')$$,
	$$SELECT crm.redeem_points(4, 0, 'dan-4')$$,
	$$SELECT crm.redeem_points(4, -5, 'dan-4')$$,
	$$SELECT crm.redeem_points(4, 5, NULL)$$,
	$$SELECT crm.redeem_points(4, 5, '   ')$$,
	$$SELECT crm.redeem_points(4, 5, repeat('k', 201))$$,
	$$SELECT crm.redeem_points(NULL, 5, 'dan-4')$$,
	$$SELECT crm.redeem_points(4, NULL, 'dan-4')$$,
	$$SELECT crm.redeem_points(4, 5, 'dan-4', NULL)$$,
	$$SELECT crm.redeem_points(4, 5, 'dan-4', 'infinity')$$,
	$$SELECT crm.redeem_points(999, 5, 'dan-4')$$,
	$$SELECT crm.adjust_points(4, 5, 'welcome', 'dan-1')$$,
	$$SELECT crm.adjust_points(4, 0, 'nothing')$$,
	$$SELECT crm.adjust_points(4, 5, '  ')$$,
	$$SELECT crm.adjust_points(4, 5, NULL)$$,
	$$SELECT crm.adjust_points(4, -100000, 'too much', NULL, '2025-02-01+00')$$,
	$$SELECT crm.adjust_points(4, 9223372036854775807, 'overflow', NULL, '2025-02-01+00')$$
]) q;
-- adjustments: audited (reason, role), idempotent with a key
SELECT crm.adjust_points(6, 500, 'goodwill: late delivery', 'fay-adj-1', '2025-08-15 10:00+00') AS fay_after_credit;
SELECT crm.adjust_points(6, 500, 'goodwill: late delivery', 'fay-adj-1', '2025-08-15 10:00+00') AS fay_retry;
SELECT crm.adjust_points(6, -20, 'correction', NULL, '2025-08-16 10:00+00') AS fay_after_debit;
SELECT kind, points, lots, reason, created_by = current_user AS by_me FROM crm.points_journal
WHERE customer_id = 6 AND kind = 'adjust' ORDER BY journal_id;
SELECT crm.points_expiring(6, '1 month', '2026-08-01+00') AS fay_expiring_aug,
       crm.points_expiring(6, '1 month', '2026-06-01+00') AS fay_expiring_jun,
       crm.points_balance(6, '2026-09-01+00') AS fay_after_all_expired;
SELECT pg_temp.expect_error($$SELECT crm.points_balance(999)$$) AS unknown_customer;

-- ---------------------------------------------------------------------------
-- Tiers in crm.tick.
-- ---------------------------------------------------------------------------
-- Downgrade policy: a tier held 12 months (tier_hold_months) drops to what the
-- rolling 12-month spend reaches.  Dan reached gold on 2025-01-05.
SELECT * FROM crm.tick('2026-01-04 00:00+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT tier FROM crm.loyalty_account WHERE customer_id = 4;
SELECT * FROM crm.tick('2026-01-06 00:00+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT tier, tier_since FROM crm.loyalty_account WHERE customer_id = 4;
SELECT from_tier, to_tier, changed_at, reason, qualifying_spend FROM crm.tier_history WHERE customer_id = 4 ORDER BY tier_history_id;


-- ---------------------------------------------------------------------------
-- Expiry by crm.tick: journaled, at the exact boundary, idempotent; spends
-- are never subtracted twice (balances do not collapse).
-- ---------------------------------------------------------------------------
-- Ann: 40 points of March 2025 (expire 2026-04-01) and 10 of April (2026-05-01)
SELECT crm.redeem_points(1, 30, 'ann-1', '2025-05-01+00') AS ann_left;
SELECT crm.points_balance(1, '2026-03-31 23:59:59.999999+00') AS before_expiry,
       crm.points_balance(1, '2026-04-01 00:00:00+00') AS at_expiry;
-- an expired lot cannot be spent before tick removes it
SELECT pg_temp.expect_error($$SELECT crm.redeem_points(1, 11, 'ann-2', '2026-04-01+00')$$);
SELECT * FROM crm.tick('2026-03-31 23:59:59.999999+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT * FROM crm.tick('2026-04-01 00:00:00+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT * FROM crm.tick('2026-04-01 00:00:00+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT kind, points, lots FROM crm.points_journal WHERE customer_id = 1 AND kind = 'expire';
SELECT crm.points_balance(1, '2026-04-01+00') AS ann_after_expiry, ledger FROM crm.loyalty_account WHERE customer_id = 1;

-- ---------------------------------------------------------------------------
-- The journal is append-only.
-- ---------------------------------------------------------------------------
SELECT pg_temp.expect_error($$UPDATE crm.points_journal SET points = points + 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.points_journal SET customer_id = 1 WHERE customer_id = 2$$);
SELECT pg_temp.expect_error($$DELETE FROM crm.points_journal$$);
SELECT pg_temp.expect_error($$TRUNCATE crm.points_journal$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, at) VALUES (1, 1, 'earn', 5, '{}', now())$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, at) VALUES (1, 1, 'gift', 0, '{}', now())$$);
-- The journal's row rule (crm.points_journal_entry_valid, its CHECK), case by case.
SELECT k.kind, k.points, k.lots, k.debt,
       crm.points_journal_entry_valid(k.kind, k.points, k.lots::crm.loyalty_ledger, k.debt, '2026-05-01+00', NULL) AS valid
FROM (VALUES ('earn', 5::bigint, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0::bigint),
             ('earn', 5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 1),
             ('earn', 0, '{}', 0),
             ('earn', 4, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('spend', -5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('spend', 5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('spend', -5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 2),
             ('expire', -5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('expire', 0, '{}', 0),
             ('clawback', 0, '{}', 7),
             ('clawback', -5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', -5),
             ('clawback', 5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('adjust', 5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('adjust', -5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('adjust', -6, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0),
             ('merge', 0, '{}', 0),
             ('adjust', -9223372036854775808, '{}', 0),
             ('gift', 0, '{}', 0),
             ('Earn', 5, '{(5,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,)}', 0)) AS k(kind, points, lots, debt);
-- the time and the idempotency key
SELECT k.at, pg_catalog.length(k.key) AS key_length,
       crm.points_journal_entry_valid('adjust', 0, '{}', 0, k.at, k.key) AS valid
FROM (VALUES ('2026-05-01+00'::timestamptz, NULL::text), ('infinity', NULL), ('-infinity', NULL),
             ('2026-05-01+00', 'k-1'), ('2026-05-01+00', ''), ('2026-05-01+00', '   '),
             ('2026-05-01+00', pg_catalog.repeat('é', 200)), ('2026-05-01+00', pg_catalog.repeat('é', 201))) AS k(at, key);
SELECT crm.points_journal_entry_valid('earn', NULL, '{}', 0, now(), NULL) IS NULL AS null_left_to_not_null;
SELECT pg_temp.expect_error(q) FROM unnest(ARRAY[
	$$UPDATE crm.loyalty_account SET debt = -1 WHERE customer_id = 1$$,
	$$UPDATE crm.loyalty_account SET spend_cents = spend_cents[1:11] WHERE customer_id = 1$$,
	$$UPDATE crm.loyalty_account SET spend_cents = '{{0,0,0,0,0,0},{0,0,0,0,0,0}}' WHERE customer_id = 1$$,
	$$UPDATE crm.loyalty_account SET spend_cents[12] = NULL WHERE customer_id = 1$$
]) q;

-- Configuration is checked.
SELECT pg_temp.expect_error(q) FROM unnest(ARRAY[
	$$UPDATE crm.loyalty_program SET time_zone = 'Mars/Olympus'$$,
	$$UPDATE crm.loyalty_program SET expiry_months = 0$$,
	$$INSERT INTO crm.loyalty_program (program) VALUES ('second')$$,
	$$UPDATE crm.earn_rule SET category_bonus = '{"baby": "lots"}'$$,
	$$UPDATE crm.earn_rule SET category_bonus = '{"baby": -1}'$$,
	$$UPDATE crm.earn_rule SET points_per_unit = 'NaN'$$,
	$$UPDATE crm.earn_rule SET valid_to = valid_from$$,
	$$INSERT INTO crm.tier (tier, rank, threshold) VALUES ('Gold Plus', 9, 1)$$,
	$$INSERT INTO crm.tier (tier, rank, threshold) VALUES ('platinum', 4, 1)$$,
	$$UPDATE crm.tier SET threshold = -1 WHERE tier = 'gold'$$
]) q;
-- without a tier of threshold 0 no order can be placed
UPDATE crm.tier SET threshold = 1 WHERE tier = 'bronze';
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (6, 'web', now(), 1)$$);
UPDATE crm.tier SET threshold = 0 WHERE tier = 'bronze';
-- trigger functions refuse other uses
CREATE TEMP TABLE t (customer_id bigint);
CREATE TRIGGER t_bad AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION crm.loyalty_orders_insert();
SELECT pg_temp.expect_error($$INSERT INTO t VALUES (1)$$);
DROP TRIGGER t_bad ON t;
CREATE TRIGGER t_bad AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_orders_insert();
SELECT pg_temp.expect_error($$INSERT INTO t VALUES (1)$$);
DROP TRIGGER t_bad ON t;
CREATE TRIGGER t_bad AFTER INSERT ON t REFERENCING NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_orders_insert();
SELECT pg_temp.expect_error($$INSERT INTO t VALUES (1)$$);

-- The ledgers agree with the journal; a corrupted cache would show.
SELECT * FROM crm.verify_ledgers();
-- crm.ledger_agg rebuilds the same points per expiry (earned_at and source of
-- a coalesced lot are informational and may differ after a lot was emptied)
SELECT j.customer_id,
       ARRAY(SELECT (x.points, x.expires_at) FROM crm.ledger_lots(crm.ledger_agg(j.lots, j.points)) x)
       = ARRAY(SELECT (x.points, x.expires_at) FROM crm.loyalty_account a, crm.ledger_lots(a.ledger) x WHERE a.customer_id = j.customer_id) AS agg_matches
FROM crm.points_journal j GROUP BY j.customer_id ORDER BY j.customer_id;
SELECT * FROM crm.verify();
UPDATE crm.loyalty_account SET ledger = crm.ledger_earn(ledger, 7, '2025-01-01+00', '2027-01-01+00'), debt = debt + 1 WHERE customer_id = 6;
SELECT * FROM crm.verify_ledgers();
ROLLBACK;
