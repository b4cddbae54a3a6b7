-- Inputs that used to succeed silently on the core tables (issue 11, item 6):
-- order and event times outside 1900-01-01 .. now() + crm.max_future.
-- Times near now() are written relative to now(), so no output depends on
-- the wall clock.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'a'), (2, 'b');

-- 1. Order times: not before 1900-01-01 UTC, not more than crm.max_future
--    (default 1 day) after now().
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '200000-01-01 00:00+00', 10)$$) AS year_200000;
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '9999-12-31 00:00+00', 10)$$) AS year_9999;
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '4713-01-01 00:00+00 BC', 10)$$) AS bc_4713;
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '1899-12-31 23:59:59.999999+00', 10)$$) AS just_before_floor;
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', now() + interval '25 hours', 10)$$) AS day_and_an_hour_ahead;
SHOW crm.max_future;
-- one bad row fails the whole statement
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-01-01 00:00+00', 10), (1, 'web', '3025-01-01 00:00+00', 10)$$) AS multi_row;
-- infinity is still the isfinite CHECK's business
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', 'infinity', 10)$$) AS infinite;
-- the edges are accepted
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES
	(1, 'web', '1900-01-01 00:00+00', 10, 'floor'),
	(1, 'web', now() + interval '23 hours', 10, 'tomorrow');
SELECT external_ref, ordered_at = '1900-01-01 00:00+00' AS at_floor FROM crm.orders ORDER BY order_id;
-- no order dated beyond the limit earned points
SELECT count(*) AS journal_rows_beyond_limit FROM crm.points_journal WHERE at > now() + interval '1 day';

-- updates pass the same check when they change the time, not otherwise
SELECT pg_temp.expect_error($$UPDATE crm.orders SET ordered_at = '9999-12-31' WHERE external_ref = 'floor'$$) AS update_to_future;
SELECT pg_temp.expect_error($$UPDATE crm.orders SET ordered_at = '1000-01-01' WHERE external_ref = 'floor'$$) AS update_to_past;
-- a row from before the check (loaded with the trigger off) can still be refunded
ALTER TABLE crm.orders DISABLE TRIGGER orders_fill_origin;
INSERT INTO crm.orders (customer_id, origin_customer_id, channel, ordered_at, amount, external_ref) VALUES (2, 2, 'web', '1800-01-01 00:00+00', 10, 'legacy');
ALTER TABLE crm.orders ENABLE TRIGGER orders_fill_origin;
UPDATE crm.orders SET status = 'refunded' WHERE external_ref = 'legacy';
SELECT external_ref, status FROM crm.orders WHERE external_ref = 'legacy';

-- 2. Event times: the same range.
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'browse', '9999-12-31 00:00+00')$$) AS event_future;
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'browse', '0001-01-01 00:00+00')$$) AS event_past;
INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'browse', now() + interval '1 hour');
SELECT pg_temp.expect_error($$UPDATE crm.event SET at = now() + interval '2 days'$$) AS event_update;
SELECT count(*) AS events FROM crm.event;

-- 3. crm.max_future: a superuser may change it (here for the transaction)
SET LOCAL crm.max_future = '30 days';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (1, 'web', now() + interval '29 days', 10, 'preorder');
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', now() + interval '31 days', 10)$$) AS beyond_30_days;
SET LOCAL crm.max_future = '0';
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', now() + interval '1 second', 10)$$) AS zero_margin;
SELECT pg_temp.expect_error($$SET LOCAL crm.max_future = 'soon'$$) AS not_an_interval;
SELECT pg_temp.expect_error($$SET LOCAL crm.max_future = '-1 day'$$) AS negative;
SELECT pg_temp.expect_error($$SET LOCAL crm.max_future = '101 years'$$) AS too_long;
SELECT pg_temp.expect_error($$SET LOCAL crm.max_future = 'infinity'$$) AS infinite_interval;
SET LOCAL crm.max_future = 'P2D';
SHOW crm.max_future;
RESET crm.max_future;
-- a session of an ordinary role cannot widen it
CREATE ROLE crm_bad_input_user;
SET LOCAL ROLE crm_bad_input_user;
SELECT pg_temp.expect_error($$SET crm.max_future = '100 years'$$) AS not_superuser;
RESET ROLE;
SELECT * FROM crm.verify();
ROLLBACK;
