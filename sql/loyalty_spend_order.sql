-- Rolling qualifying spend whatever order the orders arrive in (issue 13,
-- defect 2).  An order may be dated up to crm.max_future (default a day)
-- after now(), so into next month on a month's last day: the account's
-- monthly buckets then move to next month and must still hold every month
-- that counts now.  Old orders may arrive late.  Ann's orders arrive in time
-- order, Bob's the same orders the other way round; "now" is 2026-06-30
-- 23:00 UTC (crm.loyalty_now), the tomorrow order 2026-07-01 10:00 UTC.
-- Rolling spend as of June 2026 counts July 2025 .. June 2026:
--   2025-06-20   500.00  (counts no more in June 2026)
--   2025-07-15  4000.00  (the oldest month that still counts)
--   2026-03-10  1000.00
--   2026-06-05   300.00
--   2026-07-01   200.00  (tomorrow, next month: counts from July on)
-- so 5300.00 (gold) as of now, and 1500.00 (silver) from July, when July
-- 2025 drops out.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.loyalty_now = '2026-06-30 23:00+00';
SELECT crm.loyalty_now() AS simulated_now;
SHOW crm.max_future;
-- the tier may be lowered one month after it was reached
UPDATE crm.loyalty_program SET time_zone = 'UTC', tier_hold_months = 1;
SELECT tier, threshold FROM crm.tier ORDER BY rank;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Bob'), (3, 'Cy'), (4, 'Di');

-- the tomorrow order lies within the margin of the simulated now
SELECT '2026-07-01 10:00+00'::timestamptz - crm.loyalty_now() AS ahead_of_now,
	'2026-07-01 10:00+00'::timestamptz - crm.loyalty_now() <= current_setting('crm.max_future')::interval AS within_max_future,
	crm.loyalty_month('2026-07-01 10:00+00') - crm.loyalty_month(crm.loyalty_now()) AS months_ahead;

-- Ann: in time order, one statement each
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (11, 1, 'web', '2025-06-20 12:00+00', 500.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (12, 1, 'web', '2025-07-15 12:00+00', 4000.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (13, 1, 'web', '2026-03-10 12:00+00', 1000.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (14, 1, 'web', '2026-06-05 12:00+00', 300.00);
SELECT crm.qualifying_spend(1, crm.loyalty_now()) AS ann_before_tomorrow_order;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (15, 1, 'app', '2026-07-01 10:00+00', 200.00);
-- Bob: the same orders, newest first, the tomorrow order before the rest
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (25, 2, 'app', '2026-07-01 10:00+00', 200.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (22, 2, 'web', '2025-07-15 12:00+00', 4000.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (24, 2, 'web', '2026-06-05 12:00+00', 300.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (23, 2, 'web', '2026-03-10 12:00+00', 1000.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (21, 2, 'web', '2025-06-20 12:00+00', 500.00);
-- Cy: all five in one statement, in no particular order
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(34, 3, 'web', '2026-06-05 12:00+00', 300.00),
	(35, 3, 'app', '2026-07-01 10:00+00', 200.00),
	(31, 3, 'web', '2025-06-20 12:00+00', 500.00),
	(33, 3, 'web', '2026-03-10 12:00+00', 1000.00),
	(32, 3, 'web', '2025-07-15 12:00+00', 4000.00);

-- As of now: 5300.00 and gold for all three; the buckets run from July 2026
-- (element 1) back to July 2025 (element 13), the same whichever way the
-- orders came and the same as rebuilt from the orders
SELECT a.customer_id, crm.qualifying_spend(a.customer_id, crm.loyalty_now()) AS spend_now,
	crm.qualifying_spend(a.customer_id, '2026-07-01 00:00+00') AS spend_july,
	a.tier, a.tier_since, a.qualifying_spend AS spend_of_newest_month,
	a.spend_month = crm.loyalty_month('2026-07-01 10:00+00') AS newest_is_july, a.spend_cents,
	(b.spend_month, b.spend_cents, b.qualifying_spend) = (a.spend_month, a.spend_cents, a.qualifying_spend) AS rebuilt_same
FROM crm.loyalty_account a,
	LATERAL (SELECT s.* FROM (SELECT array_agg(o.ordered_at) AS t, array_agg(o.net_amount) AS n FROM crm.orders o
	                          WHERE o.customer_id = a.customer_id) o, crm.spend_buckets(o.t, o.n) s) b
WHERE a.customer_id IN (1, 2, 3)
ORDER BY a.customer_id;
SELECT customer_id, from_tier, to_tier, changed_at, reason, order_id, qualifying_spend
FROM crm.tier_history WHERE customer_id IN (1, 2, 3) ORDER BY customer_id, changed_at, to_tier;

-- A refund of the oldest month that counts, arriving after the tomorrow
-- order: it still comes off (Ann: 5300.00 - 1000.00)
UPDATE crm.orders SET refunded_amount = 1000.00 WHERE order_id = 12;
SELECT crm.qualifying_spend(1, crm.loyalty_now()) AS ann_after_refund;
UPDATE crm.orders SET refunded_amount = 0 WHERE order_id = 12;
SELECT crm.qualifying_spend(1, crm.loyalty_now()) AS ann_refund_reversed;

-- crm.tick as of now keeps gold (5300.00 reaches it); the next tick, in
-- July, lowers all three to silver (1500.00)
SELECT * FROM crm.tick(crm.loyalty_now()) WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT customer_id, tier FROM crm.loyalty_account WHERE customer_id IN (1, 2, 3) ORDER BY customer_id;
SELECT * FROM crm.tick('2026-07-01 00:00+00') WHERE task LIKE 'loyalty%' ORDER BY task;
SELECT a.customer_id, a.tier, a.tier_since, crm.qualifying_spend(a.customer_id, '2026-07-01 00:00+00') AS spend_july
FROM crm.loyalty_account a WHERE a.customer_id IN (1, 2, 3) ORDER BY a.customer_id;
SELECT customer_id, from_tier, to_tier, changed_at, reason, qualifying_spend
FROM crm.tier_history WHERE customer_id IN (1, 2, 3) AND reason = 'downgrade' ORDER BY customer_id, changed_at;

-- The window never moves past next month (of now(), the wall clock
-- crm.max_future measures from): an order dated further ahead, possible
-- only with a crm.max_future over a month, counts in next month's bucket,
-- and every month that counts now stays.  Di's orders are dated from now()
-- so the check holds on any day; an order dated after now() + crm.max_future
-- is refused.
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (4, 'web', '2099-01-01 00:00+00', 1.00)$$) AS beyond_max_future;
SET LOCAL crm.max_future = '100 years';
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(41, 4, 'web', now() - interval '300 days', 700.00),
	(42, 4, 'web', now() - interval '1 day', 50.00);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (43, 4, 'web', '2099-01-01 00:00+00', 9.99);
SELECT crm.qualifying_spend(4, now()) AS di_spend_now,
	a.spend_month = crm.loyalty_month(now()) + 1 AS newest_is_next_month, a.spend_cents[1] AS next_month_cents
FROM crm.loyalty_account a WHERE a.customer_id = 4;
RESET crm.max_future;

-- Accounts written before 0.2.0 hold 12 months (the 13th counts 0: here
-- Ann's July 2025, 4000.00, goes); the triggers write 13; other lengths
-- are refused
UPDATE crm.loyalty_account SET spend_cents = spend_cents[1:12] WHERE customer_id = 1;
SELECT crm.qualifying_spend(1, crm.loyalty_now()) AS ann_twelve_months;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (16, 1, 'web', '2026-06-30 20:00+00', 0.50);
SELECT array_length(spend_cents, 1) AS months_kept, crm.qualifying_spend(1, crm.loyalty_now()) AS ann_spend
FROM crm.loyalty_account WHERE customer_id = 1;
SELECT pg_temp.expect_error($$UPDATE crm.loyalty_account SET spend_cents = spend_cents[1:11] WHERE customer_id = 1$$) AS eleven;
SELECT pg_temp.expect_error($$UPDATE crm.loyalty_account SET spend_cents = spend_cents || 0::bigint WHERE customer_id = 1$$) AS fourteen;
SELECT * FROM crm.verify();
ROLLBACK;
