-- Lifecycle stages and time-dependent tags over simulated time (explicit
-- times through crm.as_of and crm.tick(at); never the wall clock), and
-- stats, stages and tags following merges.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');
-- a prospect: no stats row, stage prospect in the 360 view
SELECT customer_id, stage, orders, tags FROM crm.v_customer_360 ORDER BY customer_id;

-- day 0: first order -> new
SET LOCAL crm.as_of = '2025-01-01 12:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'app', '2025-01-01 10:00+00', 40);
SELECT stage, stage_since FROM crm.customer_stats WHERE customer_id = 1;
-- ticks move customers whose stage depends on elapsed time
SELECT * FROM crm.tick('2025-01-20 00:00+00') WHERE task = 'segmentation';
SELECT * FROM crm.tick('2025-01-20 00:00+00') WHERE task = 'segmentation';      -- idempotent
SELECT * FROM crm.tick('2025-03-15 00:00+00') WHERE task = 'segmentation';      -- 73 days: no longer new, not yet declining
SELECT stage FROM crm.customer_stats WHERE customer_id = 1;
-- orders every 10 days: growing (3+ in 90 days, more than the 90 days before)
SET LOCAL crm.as_of = '2025-03-20 00:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT 1, 'app', '2025-03-01 10:00+00'::timestamptz + k * interval '6 days', 50 FROM generate_series(0, 3) k;
SELECT stage, orders FROM crm.customer_stats WHERE customer_id = 1;
-- a steady customer with 12 orders becomes mature once growth stops
SET LOCAL crm.as_of = '2025-09-01 00:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT 1, 'app', '2025-04-01 10:00+00'::timestamptz + k * interval '21 days', 30 FROM generate_series(0, 6) k;
SELECT stage, orders FROM crm.customer_stats WHERE customer_id = 1;
-- silence: declining after 90 days, dormant tag after 180, churned after 365
SELECT * FROM crm.tick('2026-01-01 00:00+00') WHERE task = 'segmentation';
SELECT stage FROM crm.customer_stats WHERE customer_id = 1;
SELECT * FROM crm.tick('2026-03-10 00:00+00') WHERE task = 'segmentation';
SELECT stage, (SELECT array_agg(t.name ORDER BY t.name) FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = 1) AS tags
FROM crm.customer_stats WHERE customer_id = 1;
SELECT * FROM crm.tick('2026-09-10 00:00+00') WHERE task = 'segmentation';
SELECT stage FROM crm.customer_stats WHERE customer_id = 1;
-- a new order brings them back
SET LOCAL crm.as_of = '2026-09-11 00:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2026-09-10 18:00+00', 25);
SELECT stage FROM crm.customer_stats WHERE customer_id = 1;
SELECT from_stage, to_stage, at FROM crm.lifecycle_transition WHERE customer_id = 1 ORDER BY at, transition_id;

-- configurable thresholds: a shorter "new" period
UPDATE crm.segment_setting SET value = '0' WHERE key = 'lifecycle_new_days';
SET LOCAL crm.as_of = '2026-09-12 00:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (2, 'web', '2026-09-10 18:00+00', 25);
SELECT stage FROM crm.customer_stats WHERE customer_id = 2;
UPDATE crm.segment_setting SET value = 'soon' WHERE key = 'lifecycle_new_days';
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (2, 'web', '2026-09-11 18:00+00', 25)$$);
UPDATE crm.segment_setting SET value = '60' WHERE key = 'lifecycle_new_days';

-- merges: the hook rebuilds both records from the orders, which the merge moved
INSERT INTO crm.tag (name, kind) VALUES ('vip', 'manual');
SELECT crm.tag_customer(3, 'vip', '2026-09-12 00:00+00'), crm.tag_customer(3, 'vip', '2026-09-12 00:00+00');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (3, 'web', '2026-09-01 18:00+00', 2000);
SELECT customer_id, orders, spend, stage FROM crm.customer_stats ORDER BY customer_id;
UPDATE crm.customer SET merged_into = 2 WHERE customer_id = 3;
UPDATE crm.orders SET customer_id = 2 WHERE customer_id = 3;
SELECT crm.run_customer_hooks('merge', 2, 3);
SELECT customer_id, orders, spend, stage FROM crm.customer_stats ORDER BY customer_id;
SELECT ct.customer_id, t.name FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) ORDER BY 1, 2;
-- and unmerge puts them back
UPDATE crm.orders SET customer_id = origin_customer_id WHERE origin_customer_id = 3;
UPDATE crm.customer SET merged_into = NULL WHERE customer_id = 3;
SELECT crm.run_customer_hooks('unmerge', 2, 3);
SELECT customer_id, orders, spend, stage FROM crm.customer_stats ORDER BY customer_id;
SELECT customer_id, stage, tags FROM crm.v_customer_360 ORDER BY customer_id;
SELECT * FROM crm.verify();
ROLLBACK;
