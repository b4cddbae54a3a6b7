-- Campaigns (issue 17): sent once to an audience with a coupon, a control
-- group held out by a stable hash and recorded, and the measured effect
-- (conversion, uplift with its 95% confidence interval, revenue per
-- customer, incremental revenue) against a plain recount.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) SELECT k, 'c' || k, '2026-01-01' FROM generate_series(1, 200) k;
INSERT INTO crm.tag (name, kind) VALUES ('summer', 'manual');
SELECT count(crm.tag_customer(k, 'summer', '2026-06-01')) AS tagged FROM generate_series(1, 200) k WHERE k % 2 = 0 OR k <= 50;
SELECT count(crm.set_consent(k, 'sms', 'marketing', true, 'app', '2026-01-01')) AS consented FROM generate_series(1, 200) k;
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('summer 10', 'amount_off', 10.00, 14);
INSERT INTO crm.campaign (name, audience, channel, template, coupon_template, send_at, control_percent, measure_for)
SELECT 'summer_sale', 'summer', 'sms', 'summer sale: 10 off', template_id, '2026-06-10 09:00+00', 20, '14 days'
FROM crm.coupon_template WHERE name = 'summer 10';

-- 1. Sent by the tick once it is due, once.
SELECT changed FROM crm.tick('2026-06-09 00:00+00') WHERE task = 'campaigns';
SELECT changed FROM crm.tick('2026-06-10 09:00+00') WHERE task = 'campaigns';
SELECT changed FROM crm.tick('2026-06-11 00:00+00') WHERE task = 'campaigns';
SELECT crm.campaign_send(campaign_id) AS sent_again FROM crm.campaign;
SELECT count(*) AS members, count(*) FILTER (WHERE control) AS held_out,
       count(*) FILTER (WHERE control AND crm.held_out('campaign', 'summer_sale', customer_id, 20)) AS held_out_by_hash
FROM crm.campaign_member;
SELECT (SELECT count(*) FROM crm.outbox WHERE source = 'campaign:summer_sale') AS messages,
       (SELECT count(*) FROM crm.coupon k JOIN crm.coupon_template t USING (template_id) WHERE t.name = 'summer 10') AS coupons,
       (SELECT count(*) FROM crm.outbox o JOIN crm.campaign_member m ON m.customer_id = o.customer_id WHERE m.control) AS sent_to_control;
SELECT pg_temp.expect_error($$SELECT crm.campaign_send(99)$$) AS unknown_campaign;

-- 2. The effect: some treated and some control customers buy in the window
--    (and one after it, which does not count).
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
SELECT 5000 + m.customer_id, m.customer_id, 'web', '2026-06-12 10:00+00', 40.00 + m.customer_id % 7
FROM crm.campaign_member m WHERE (NOT m.control AND m.customer_id % 3 = 0) OR (m.control AND m.customer_id % 5 = 0);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (6000, 2, 'web', '2026-06-25 10:00+00', 99.00);
SELECT name, treated, control, treated_buyers, control_buyers, treated_rate, control_rate, uplift, uplift_low, uplift_high,
       treated_revenue_per_customer, control_revenue_per_customer, incremental_revenue
FROM crm.v_campaign_effect;
-- the same by a plain recount
WITH g AS (
	SELECT m.control, m.customer_id,
	       (SELECT coalesce(sum(o.net_amount), 0) FROM crm.orders o WHERE o.customer_id = m.customer_id AND o.status = 'paid'
	        AND o.ordered_at >= '2026-06-10 09:00+00' AND o.ordered_at < '2026-06-24 09:00+00') AS revenue
	FROM crm.campaign_member m)
SELECT control, count(*) AS customers, count(*) FILTER (WHERE revenue > 0) AS buyers,
       round(count(*) FILTER (WHERE revenue > 0)::numeric / count(*), 4) AS rate, round(avg(revenue), 2) AS revenue_per_customer
FROM g GROUP BY control ORDER BY control;
ROLLBACK;
