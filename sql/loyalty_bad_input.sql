-- Loyalty inputs that used to succeed silently (issue 11, item 6): backdated
-- redemptions spending lots that are gone now, unknown customers reading as
-- 0 points, and "at" outside the range orders must lie in.  Lots are dated
-- long before now() (or relative to it), so no output depends on the wall
-- clock.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');

-- 1. A backdated redemption cannot reach lots expired by now(): 100 points
--    earned 2024-01-15 expired at the end of January 2025; 50 earned now
--    are valid.  At 2024-06-01 all 150 were valid, but only 50 are now.
SELECT crm.adjust_points(1, 100, 'goodwill', NULL, '2024-01-15 12:00+00') AS old_lot_balance;
SELECT crm.adjust_points(1, 50, 'goodwill') AS balance;
SELECT crm.points_balance(1) AS now, crm.points_balance(1, '2024-06-01 00:00+00') AS then;
SELECT pg_temp.expect_error($$SELECT crm.redeem_points(1, 120, 'r-1', '2024-06-01 00:00+00')$$) AS backdated_over_live_lots;
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(1, -120, 'correction', NULL, '2024-06-01 00:00+00')$$) AS backdated_adjust;
SELECT crm.redeem_points(1, 30, 'r-2', '2024-06-01 00:00+00') AS left_now;
SELECT crm.redeem_points(1, 30, 'r-2', '2024-06-01 00:00+00') AS retry;
SELECT kind, points, balance_after, at FROM crm.points_journal WHERE customer_id = 1 AND kind = 'spend' ORDER BY journal_id;
-- the spend came out of the live lot; the expired lot waits for the sweep
SELECT points, expires_at < now() AS expired FROM crm.ledger_lots((SELECT ledger FROM crm.loyalty_account WHERE customer_id = 1)) ORDER BY expires_at;
SELECT crm.points_balance(1) AS now;
SELECT * FROM crm.verify_ledgers();

-- 2. Unknown customers are an error (23503) at every loyalty entry point;
--    a known customer without an account has 0.
SELECT pg_temp.expect_error($$SELECT crm.points_balance(-42)$$) AS points_balance;
SELECT pg_temp.expect_error($$SELECT crm.points_expiring(-42)$$) AS points_expiring;
SELECT pg_temp.expect_error($$SELECT crm.qualifying_spend(-42)$$) AS qualifying_spend;
SELECT pg_temp.expect_error($$SELECT crm.redeem_points(-42, 1, 'r-42')$$) AS redeem_points;
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(-42, 1, 'goodwill')$$) AS adjust_points;
SELECT crm.points_balance(2) AS balance, crm.points_expiring(2) AS expiring, crm.qualifying_spend(2) AS qualifying;
-- an account whose spend lies outside the window: 0.00, not an error
SELECT crm.qualifying_spend(1, '2020-01-01 00:00+00') AS qualifying_2020;

-- 3. "at" of redemptions and adjustments lies in the range orders must lie
--    in: a credit dated 9999-12-31 would never expire.
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(3, 10, 'goodwill', NULL, '9999-12-31 00:00+00')$$) AS adjust_far_future;
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(3, 10, 'goodwill', NULL, now() + interval '25 hours')$$) AS adjust_tomorrow_and_more;
SELECT pg_temp.expect_error($$SELECT crm.adjust_points(3, 10, 'goodwill', NULL, '1899-12-31 00:00+00')$$) AS adjust_before_1900;
SELECT pg_temp.expect_error($$SELECT crm.redeem_points(1, 1, 'r-3', '9999-12-31 00:00+00')$$) AS redeem_far_future;
SELECT crm.adjust_points(3, 10, 'goodwill', NULL, now() + interval '23 hours') AS within_margin;
SELECT count(*) AS accounts_with_far_lots FROM crm.loyalty_account WHERE crm.ledger_next_expiry(ledger) > now() + interval '20 years';

-- 4. Only a superuser may move the clock redemptions use (crm.loyalty_now,
--    for tests and replays of history): with it at 2024-05-01 the expired
--    lot of section 1 is spendable at 2024-06-01 again.
SELECT crm.loyalty_now() = now() AS default_is_now;
SELECT pg_temp.expect_error($$SET LOCAL crm.loyalty_now = 'yesterday-ish'$$) AS not_a_time;
SELECT pg_temp.expect_error($$SET LOCAL crm.loyalty_now = 'infinity'$$) AS infinite;
SET LOCAL crm.loyalty_now = '2024-05-01 00:00+00';
SELECT crm.loyalty_now() AS simulated_now;
SELECT crm.redeem_points(1, 110, 'r-4', '2024-06-01 00:00+00') AS left_then;
RESET crm.loyalty_now;
CREATE ROLE crm_loyalty_bad_input_user;
SET LOCAL ROLE crm_loyalty_bad_input_user;
SELECT pg_temp.expect_error($$SET crm.loyalty_now = '2024-05-01 00:00+00'$$) AS not_superuser;
RESET ROLE;
SELECT * FROM crm.verify();
ROLLBACK;
