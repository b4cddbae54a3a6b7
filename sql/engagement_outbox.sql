-- The outbox (issue 17): enqueue exactly once per dedupe key, consent at
-- enqueue and again at claim, claim / ack / fail with retries and a dead
-- letter, leases that run out and are claimed again (at least once), guard
-- rails (quiet hours and caps in the customer's time zone, across DST),
-- and the purge by crm.tick.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02');
SELECT crm.set_consent(1, 'sms', 'marketing', true, 'app', now() - interval '1 day') IS NOT NULL AS ann_opted_in;
CREATE FUNCTION pg_temp.box() RETURNS TABLE (dedupe_key text, customer_id bigint, status text, consumer text, attempts integer,
	suppressed_reason text, last_error text) LANGUAGE sql AS $$
	SELECT o.dedupe_key, o.customer_id, o.status, o.consumer, o.attempts, o.suppressed_reason, o.last_error FROM crm.outbox o ORDER BY o.message_id
$$;

-- 1. Enqueue: once per dedupe key; without consent the message is written
--    suppressed (the occasion is decided, and counted).
SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'welcome', '{"name": "ann"}', 'journey:welcome:1:1', source => 'journey:welcome') AS m1 \gset
SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'welcome', '{"name": "ann", "again": true}', 'journey:welcome:1:1', source => 'journey:welcome') = :m1 AS same_message;
SELECT pg_temp.expect_error($$SELECT crm.outbox_enqueue(2, 'sms', 'marketing', 'welcome', '{}', 'journey:welcome:1:1')$$) AS key_for_another_customer;
SELECT crm.outbox_enqueue(2, 'sms', 'marketing', 'welcome', '{}', 'journey:welcome:2:1', source => 'journey:welcome') IS NOT NULL AS bob_without_consent;
SELECT crm.outbox_enqueue(2, 'sms', 'service', 'order shipped', '{"order": 7}', 'order:7:shipped') IS NOT NULL AS bob_service;
SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'later', '{}', 'campaign:later:1', now() + interval '1 hour', 'campaign:later') IS NOT NULL AS not_yet_due;
SELECT * FROM pg_temp.box();
SELECT pg_temp.expect_error($$SELECT crm.outbox_enqueue(1, 'fax', 'marketing', 'x', '{}', 'k')$$) AS unknown_channel;
SELECT pg_temp.expect_error($$SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'x', '{}', NULL)$$) AS no_key;
SELECT pg_temp.expect_error($$SELECT crm.outbox_enqueue(99, 'sms', 'service', 'x', '{}', 'k')$$) AS unknown_customer;

-- 2. Claim, ack: the due messages, oldest first; a leased one is not due.
SELECT dedupe_key, status, consumer, attempts, payload FROM crm.outbox_claim('gateway-a', 10, '1 minute') ORDER BY message_id;
SELECT count(*) AS claimed_again FROM crm.outbox_claim('gateway-b', 10, '1 minute');
SELECT crm.outbox_ack(:m1) AS acked, crm.outbox_ack(:m1) AS acked_twice;
SELECT pg_temp.expect_error($$SELECT crm.outbox_claim('gateway-a', 0, '1 minute')$$) AS zero_messages;
SELECT pg_temp.expect_error($$SELECT crm.outbox_claim('gateway-a', 10, '-1 minute')$$) AS negative_lease;

-- 3. Fail: retried after the delay (doubling), dead after max_attempts.
UPDATE crm.outbox_settings SET retry_after = '1 millisecond', max_attempts = 2;
SELECT crm.outbox_fail(message_id, 'gateway timeout') AS first_failure FROM crm.outbox WHERE dedupe_key = 'order:7:shipped';
SELECT pg_sleep(0.05);
SELECT dedupe_key, attempts FROM crm.outbox_claim('gateway-a', 10, '1 minute');
SELECT crm.outbox_fail(message_id, 'gateway timeout again') AS second_failure FROM crm.outbox WHERE dedupe_key = 'order:7:shipped';
SELECT pg_temp.expect_error($$SELECT crm.outbox_fail(999999, 'x')$$) AS unknown_message;

-- 4. A lease that runs out: the message is claimed again (at least once);
--    the slow consumer's late ack still counts, once.
SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'points expiring', '{}', 'journey:expiring:1:2026-11') AS m2 \gset
SELECT count(*) AS claimed_by_slow FROM crm.outbox_claim('slow', 10, '1 millisecond');
SELECT pg_sleep(0.05);
SELECT consumer, attempts FROM crm.outbox_claim('fast', 10, '1 minute');
SELECT crm.outbox_ack(:m2) AS slow_ack, crm.outbox_ack(:m2) AS fast_ack;
-- a consumer that dies on a message every time: after max_attempts (2
-- here) runs out of lease, it is dead, not claimed forever
SELECT crm.outbox_enqueue(2, 'sms', 'service', 'poison', '{}', 'poison:1') AS m3 \gset
SELECT count(*) AS first_claim FROM crm.outbox_claim('crashy', 10, '1 millisecond') WHERE message_id = :m3;
SELECT pg_sleep(0.05);
SELECT count(*) AS second_claim FROM crm.outbox_claim('crashy', 10, '1 millisecond') WHERE message_id = :m3;
SELECT pg_sleep(0.05);
SELECT count(*) AS third_claim FROM crm.outbox_claim('crashy', 10, '1 millisecond') WHERE message_id = :m3;
SELECT status, attempts, last_error FROM crm.outbox WHERE message_id = :m3;

-- 5. Consent revoked after enqueue: suppressed at claim, not delivered.
SELECT crm.outbox_enqueue(1, 'sms', 'marketing', 'offer', '{}', 'campaign:offer:1', source => 'campaign:offer') IS NOT NULL AS queued;
SELECT crm.set_consent(1, 'sms', 'marketing', false, 'sms STOP') IS NOT NULL AS revoked;
SELECT count(*) AS claimed FROM crm.outbox_claim('gateway-a', 10, '1 minute');  -- the offer is suppressed, not returned
SELECT * FROM pg_temp.box();
SELECT source, channel, status, suppressed_reason, messages FROM crm.v_outbox_stats ORDER BY 1, 2, 3, 4;

-- 7. Guard rails for marketing (service is exempt), in the customer's time
--    zone (the home store's): quiet hours defer to their end, caps suppress.
--    Claims at fixed times ("at" replaces the clock).
UPDATE crm.outbox_settings SET quiet_from = '21:00', quiet_until = '09:00', cap_day = 2, cap_channel_day = 1, cap_7_days = 3;
INSERT INTO crm.store (store_id, name, time_zone) VALUES (1, 'shanghai', 'Asia/Shanghai'), (2, 'berlin', 'Europe/Berlin');
INSERT INTO crm.customer (customer_id, name, home_store_id, created_at) VALUES (3, 'cy', 1, '2026-01-01'), (4, 'dee', 2, '2026-01-01');
SELECT crm.set_consent(c, ch, 'marketing', true, 'app', '2026-01-01') IS NOT NULL FROM (VALUES (3), (4)) a(c), (VALUES ('sms'), ('email')) b(ch);
SELECT crm.outbox_enqueue(3, ch, purpose, tpl, '{}', 'guard:' || k, '2026-07-01 13:00+00', 'campaign:summer') IS NOT NULL
FROM (VALUES (1, 'sms', 'marketing', 'summer sale'), (2, 'sms', 'marketing', 'summer sale 2'), (3, 'email', 'marketing', 'summer mail'),
             (4, 'sms', 'service', 'order shipped')) v(k, ch, purpose, tpl);
-- 22:00 in Shanghai: the marketing messages wait for 09:00; the service one goes
SELECT array_agg(dedupe_key ORDER BY message_id) AS leased, crm.outbox_ack(array_agg(message_id)) AS delivered
FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-07-01 14:00+00') WHERE customer_id = 3;
SELECT dedupe_key, status, due_at, deferrals FROM crm.outbox WHERE customer_id = 3 ORDER BY message_id;
-- 09:30 there: one sms a day (the second is capped), two a day in all
SELECT array_agg(dedupe_key ORDER BY message_id) AS leased, crm.outbox_ack(array_agg(message_id)) AS delivered
FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-07-02 01:30+00') WHERE customer_id = 3;
SELECT dedupe_key, status, suppressed_reason FROM crm.outbox WHERE customer_id = 3 ORDER BY message_id;
-- the next local day: three in 7 days, so one more goes and the next is capped
SELECT crm.outbox_enqueue(3, 'sms', 'marketing', 'flash sale', '{}', 'guard:' || k, '2026-07-03 01:00+00', 'campaign:flash') IS NOT NULL
FROM generate_series(5, 6) k;
SELECT array_agg(dedupe_key ORDER BY message_id) AS leased, crm.outbox_ack(array_agg(message_id)) AS delivered
FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-07-03 02:00+00') WHERE customer_id = 3;
SELECT dedupe_key, status, suppressed_reason FROM crm.outbox WHERE customer_id = 3 AND dedupe_key IN ('guard:5', 'guard:6') ORDER BY message_id;
-- across daylight saving in Berlin: 21:30 CET on Saturday 28 March waits for
-- 09:00 CEST on Sunday, which is 07:00 UTC (not 08:00)
SELECT crm.outbox_enqueue(4, 'email', 'marketing', 'spring', '{}', 'guard:dst', '2026-03-28 20:00+00') IS NOT NULL;
SELECT count(*) AS claimed FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-03-28 20:30+00') WHERE customer_id = 4;
SELECT status, due_at, deferrals FROM crm.outbox WHERE dedupe_key = 'guard:dst';
SELECT count(*) AS claimed_at_6_59 FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-03-29 06:59+00') WHERE customer_id = 4;
SELECT count(*) AS claimed_at_7_00 FROM crm.outbox_claim('gateway-a', 10, '1 minute', '2026-03-29 07:00+00') WHERE customer_id = 4;
SELECT source, status, suppressed_reason, messages, quiet_hours_deferrals FROM crm.v_outbox_stats
WHERE source LIKE 'campaign:%' OR source = 'api' ORDER BY 1, 2, 3;
UPDATE crm.outbox_settings SET quiet_from = NULL, quiet_until = NULL, cap_day = NULL, cap_channel_day = NULL, cap_7_days = NULL;

-- 6. Purge: finished messages past the retention go; open ones stay.
SELECT crm.outbox_purge(now() + interval '1 day') AS within_retention, crm.outbox_purge(now() + interval '8 days') AS purged;
SELECT dedupe_key, status FROM crm.outbox ORDER BY message_id;
SELECT changed FROM crm.tick(now() + interval '8 days') WHERE task = 'outbox_purge';
ROLLBACK;
