-- Journeys (issue 17): every entry kind and step, once per occasion; the
-- first purchase entering and a purchase ending a win-back journey inside
-- the order's own transaction; the audience; the control group; re-entry;
-- merges.  Times are fixed (crm.tick(at)).
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, birthday, created_at) VALUES
	(1, 'ann', '1990-06-20', '2025-01-01'), (2, 'bob', NULL, '2025-01-01'), (3, 'cy', NULL, '2025-01-01'),
	(4, 'di', '1985-07-30', '2025-01-01'), (5, 'ed', NULL, '2025-01-01'), (6, 'flo', NULL, '2025-01-01');
SELECT crm.set_consent(c, 'sms', 'marketing', true, 'app', '2025-01-01') IS NOT NULL FROM generate_series(1, 6) c;
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('welcome back 5', 'amount_off', 5.00, 30);
CREATE FUNCTION pg_temp.sent() RETURNS TABLE (customer_id bigint, template text, source text, status text, available_at timestamptz)
LANGUAGE sql AS $$
	SELECT o.customer_id, o.template, o.source, o.status, o.available_at FROM crm.outbox o ORDER BY o.message_id
$$;
CREATE FUNCTION pg_temp.enrolled() RETURNS TABLE (journey text, customer_id bigint, occasion text, status text, next_step integer,
	next_at timestamptz, end_reason text)
LANGUAGE sql AS $$
	SELECT j.name, e.customer_id, e.occasion, e.status, e.next_step, e.next_at, e.end_reason
	FROM crm.journey_enrollment e JOIN crm.journey j USING (journey_id) ORDER BY e.enrollment_id
$$;

-- A journey's entry parameters must fit its entry kind.
SELECT pg_temp.expect_error($$INSERT INTO crm.journey (name, entry) VALUES ('x', 'dormant')$$) AS dormant_without_days;
SELECT pg_temp.expect_error($$INSERT INTO crm.journey (name, entry, entry_days) VALUES ('x', 'cart_abandoned', 3)$$) AS cart_with_days;
SELECT pg_temp.expect_error($$INSERT INTO crm.journey_step (journey_id, step_no, kind) VALUES (1, 1, 'send')$$) AS send_without_template;

-- 1. Welcome: the first paid order enters, in its own transaction; the
--    steps run at the tick; a purchase since entry ends it at the branch,
--    otherwise a reminder and a coupon follow.
INSERT INTO crm.journey (name, entry) VALUES ('welcome', 'first_purchase');
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template, wait, if_purchased_goto, coupon_template)
SELECT j.journey_id, s.step_no, s.kind, s.channel, s.template, s.wait::interval, s.goto::integer, s.coupon::integer
FROM crm.journey j, (VALUES (1, 'send', 'sms', 'welcome', NULL, NULL, NULL),
                            (2, 'wait', NULL, NULL, '3 days', NULL, NULL),
                            (3, 'branch_purchased', NULL, NULL, NULL, NULL, NULL),
                            (4, 'send', 'sms', 'come back', NULL, NULL, NULL),
                            (5, 'coupon', NULL, NULL, NULL, NULL, (SELECT template_id FROM crm.coupon_template WHERE name = 'welcome back 5'))) s(step_no, kind, channel, template, wait, goto, coupon)
WHERE j.name = 'welcome';
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(101, 1, 'web', '2026-06-01 10:00+00', 30.00), (201, 2, 'web', '2026-06-01 11:00+00', 40.00);
SELECT * FROM pg_temp.enrolled();
SELECT changed FROM crm.tick('2026-06-01 12:00+00') WHERE task = 'journeys';
SELECT changed FROM crm.tick('2026-06-01 12:00+00') WHERE task = 'journeys';
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (102, 1, 'web', '2026-06-02 10:00+00', 25.00);
SELECT count(*) AS still_one_entry FROM crm.journey_enrollment WHERE customer_id = 1;
SELECT changed FROM crm.tick('2026-06-04 12:00+00') WHERE task = 'journeys';
SELECT * FROM pg_temp.enrolled();
SELECT * FROM pg_temp.sent();
SELECT customer_id, status, issue_key LIKE 'journey:welcome:%:5' AS keyed FROM crm.coupon ORDER BY coupon_id;

-- 2. Win-back: dormant for 90 days enters at the tick; a purchase ends it
--    inside the order's transaction, before the message it was waiting for.
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(301, 3, 'web', '2026-02-01 10:00+00', 50.00), (501, 5, 'web', '2026-02-01 10:00+00', 50.00);
INSERT INTO crm.journey (name, entry, entry_days, exit_on_purchase, reentry_after) VALUES ('win_back', 'dormant', 90, true, '30 days');
INSERT INTO crm.journey_step (journey_id, step_no, kind, wait) SELECT journey_id, 1, 'wait', '2 days' FROM crm.journey WHERE name = 'win_back';
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template) SELECT journey_id, 2, 'send', 'sms', 'we miss you' FROM crm.journey WHERE name = 'win_back';
SELECT changed FROM crm.tick('2026-05-10 00:00+00') WHERE task = 'journeys';   -- 98 days after their orders (the welcome ones are recent)
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (302, 3, 'web', '2026-05-11 09:00+00', 20.00);
SELECT journey, customer_id, status, end_reason FROM pg_temp.enrolled() WHERE journey = 'win_back';
SELECT changed FROM crm.tick('2026-05-13 00:00+00') WHERE task = 'journeys';
SELECT customer_id, template FROM pg_temp.sent() WHERE source = 'journey:win_back';

-- 3. Birthday, 14 days before (the occasion is the year); cart abandoned
--    for 4 hours without a checkout; points expiring within 30 days.
INSERT INTO crm.journey (name, entry, entry_days, reentry_after) VALUES ('birthday', 'birthday', 14, '300 days');
INSERT INTO crm.journey (name, entry, entry_hours) VALUES ('cart', 'cart_abandoned', 4);
INSERT INTO crm.journey (name, entry, entry_days) VALUES ('expiring', 'points_expiring', 30);
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template, points)
SELECT journey_id, 1, 'send', 'sms', name || ' message', NULL FROM crm.journey WHERE name IN ('birthday', 'cart', 'expiring')
UNION ALL
SELECT journey_id, 2, 'points', NULL, NULL, 50 FROM crm.journey WHERE name = 'birthday';
INSERT INTO crm.event (customer_id, kind, at) VALUES
	(5, 'cart', '2026-06-10 06:00+00'), (6, 'cart', '2026-06-10 06:00+00'), (6, 'checkout', '2026-06-10 06:30+00');
SELECT crm.adjust_points(4, 300, 'goodwill', 'pts-4', '2025-06-15') IS NOT NULL AS points_that_expire_end_of_june;
UPDATE crm.journey SET enabled = false WHERE name IN ('welcome', 'win_back');
SELECT changed FROM crm.tick('2026-06-10 12:00+00') WHERE task = 'journeys';
SELECT journey, customer_id, CASE WHEN journey = 'cart' THEN 'the cart event' ELSE occasion END AS occasion, status
FROM pg_temp.enrolled() WHERE journey IN ('birthday', 'cart', 'expiring');
SELECT changed FROM crm.tick('2026-06-11 12:00+00') WHERE task = 'journeys';   -- nothing new for the same occasions
SELECT customer_id, template FROM pg_temp.sent() WHERE source IN ('journey:birthday', 'journey:cart', 'journey:expiring');
SELECT customer_id, kind, points FROM crm.points_journal WHERE idempotency_key LIKE 'journey:birthday:%';

-- 4. The audience (a tag expression) and the control group.
INSERT INTO crm.tag (name, kind) VALUES ('vip', 'manual');
SELECT crm.tag_customer(1, 'vip', '2026-06-01');
INSERT INTO crm.customer (customer_id, name, created_at) SELECT k, 'many ' || k, '2025-01-01' FROM generate_series(100, 199) k;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) SELECT 1000 + k, k, 'web', '2026-01-01', 10.00 FROM generate_series(100, 199) k;
INSERT INTO crm.journey (name, entry, entry_days, control_percent) VALUES ('dormant_half', 'dormant', 150, 20);
INSERT INTO crm.journey (name, entry, entry_days, audience) VALUES ('dormant_vip', 'dormant', 1, 'vip');
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template)
SELECT journey_id, 1, 'send', 'sms', 'hello' FROM crm.journey WHERE name IN ('dormant_half', 'dormant_vip');
SELECT changed FROM crm.tick('2026-06-20 00:00+00') WHERE task = 'journeys';
SELECT journey, status, count(*) FROM pg_temp.enrolled() WHERE journey IN ('dormant_half', 'dormant_vip') GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE e.status = 'control') AS control,
       count(*) FILTER (WHERE e.status = 'control' AND crm.held_out('journey', j.name, e.customer_id, 20)) AS control_by_hash,
       count(o.message_id) FILTER (WHERE e.status = 'control') AS control_sent
FROM crm.journey_enrollment e JOIN crm.journey j USING (journey_id)
LEFT JOIN crm.outbox o ON o.dedupe_key LIKE 'journey:dormant_half:' || e.enrollment_id || ':%'
WHERE j.name = 'dormant_half';
SELECT name, entered, control, active, done, exited_on_purchase, exited_otherwise, messages, suppressed FROM crm.v_journey_funnel ORDER BY journey_id;

-- 5. Member day (the 15th), a tier raised, a post-purchase survey 3 days
--    after an order, a staple due for replenishment.
UPDATE crm.journey SET enabled = false;
INSERT INTO crm.journey (name, entry, entry_days, reentry_after) VALUES
	('member_day', 'member_day', 15, '20 days'), ('tier_up', 'tier_up', 2, NULL),
	('survey', 'post_purchase', 3, '30 days'), ('restock', 'replenishment_due', 7, '20 days');
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template)
SELECT journey_id, 1, 'send', 'sms', name FROM crm.journey WHERE enabled;
SELECT pg_temp.expect_error($$INSERT INTO crm.journey (name, entry, entry_days) VALUES ('x', 'member_day', 32)$$) AS member_day_32;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (7, 'gus', '2025-01-01'), (8, 'hal', '2025-01-01');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(801, 8, 'web', '2026-06-29 10:00+00', 60000.00),                        -- a big spender: raised a tier
	(701, 7, 'web', '2026-05-01 10:00+00', 20.00), (702, 7, 'web', '2026-05-11 10:00+00', 20.00),
	(703, 7, 'web', '2026-05-21 10:00+00', 20.00), (704, 7, 'web', '2026-05-31 10:00+00', 20.00),
	(705, 7, 'web', '2026-06-10 10:00+00', 20.00), (706, 7, 'web', '2026-06-20 10:00+00', 20.00);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
SELECT o.order_id, 1, 'RICE-5KG', 'staples', 1, 20.00 FROM crm.orders o WHERE o.customer_id = 7;
SELECT to_tier, reason FROM crm.tier_history WHERE customer_id = 8;
SELECT changed FROM crm.tick('2026-06-30 12:00+00') WHERE task = 'journeys';
SELECT changed FROM crm.tick('2026-07-02 12:00+00') WHERE task = 'journeys';   -- 3 days after hal's order
-- (a tier change's occasion is its tier_history id, which earlier tests' sequences move)
SELECT journey, customer_id, CASE WHEN journey = 'tier_up' THEN 'the change' ELSE occasion END AS occasion
FROM pg_temp.enrolled() WHERE journey IN ('tier_up', 'survey', 'restock') ORDER BY 1, 2;
SELECT changed FROM crm.tick('2026-07-15 08:00+00') WHERE task = 'journeys';
SELECT count(*) AS members_on_member_day, count(*) = (SELECT count(*) FROM crm.loyalty_account a JOIN crm.customer c USING (customer_id)
                                                     WHERE c.merged_into IS NULL) AS every_member,
       min(occasion) AS occasion
FROM pg_temp.enrolled() WHERE journey = 'member_day';
SELECT changed FROM crm.tick('2026-07-15 20:00+00') WHERE task = 'journeys';   -- the same day again: nothing
SELECT * FROM crm.verify();
ROLLBACK;
