-- The rewards catalogue (issue 16): points exchanged for rewards handed over
-- as coupons, in one transaction, exactly once per key; stock, limits,
-- tiers and validity; every rejection with its SQLSTATE.
\i sql/include/expect_error.sql
CREATE FUNCTION pg_temp.reward_error(sql text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.regexp_replace(pg_temp.expect_error(sql), '[0-9A-HJKMNP-TV-Z]{20}[0-9A-HJKMNP-TV-Z*~$=U]', '<code>', 'g')
$$;
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02');
SELECT crm.adjust_points(1, 1000, 'goodwill', NULL, '2026-03-01 09:00+00') AS ann_points,
       crm.adjust_points(2, 150, 'goodwill', NULL, '2026-03-01 09:00+00') AS bob_points;
INSERT INTO crm.coupon_template (name, kind, gift_sku, valid_days) VALUES ('tote bag', 'gift_item', 'TOTE-1', 60);
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('cinema 5 off', 'amount_off', 5.00, 90);
INSERT INTO crm.reward (name, kind, points_price, template_id, stock, per_customer_limit)
SELECT 'tote bag', 'goods', 200, template_id, 3, 2 FROM crm.coupon_template WHERE name = 'tote bag';
INSERT INTO crm.reward (name, kind, points_price, template_id, eligible_tiers, valid_until)
SELECT 'cinema voucher', 'partner', 100, template_id, '{gold,black}', '2026-12-31' FROM crm.coupon_template WHERE name = 'cinema 5 off';

-- 1. An exchange: the points spent (FIFO), the coupons handed over, both
--    in one transaction; a retry with the key returns the same codes.
SELECT pg_catalog.cardinality(crm.exchange_points(1, 1, 2, 'ex-1', '2026-03-02 10:00+00')) AS totes;
SELECT crm.exchange_points(1, 1, 2, 'ex-1', '2026-03-02 10:05+00') = e.codes AS retry_same_codes, e.points, e.qty
FROM crm.reward_exchange e WHERE e.idempotency_key = 'ex-1';
SELECT crm.points_balance(1, '2026-03-03') AS ann_left;
SELECT kind, points, idempotency_key FROM crm.points_journal WHERE customer_id = 1 AND kind = 'spend';
SELECT t.name, c.status, c.customer_id FROM crm.coupon c JOIN crm.coupon_template t USING (template_id) ORDER BY c.coupon_id;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 1, 1, 'ex-1', '2026-03-02 10:05+00')$$) AS key_for_another;

-- 2. The rules: the customer's limit (2 totes), stock (3), points, tier,
--    validity; nothing is spent or handed over when one refuses.
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 1, 1, 'ex-2', '2026-03-03 10:00+00')$$) AS limit_reached;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(2, 1, 2, 'ex-3', '2026-03-03 10:00+00')$$) AS stock_short;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(2, 1, 1, 'ex-4', '2026-03-03 10:00+00')$$) AS too_few_points;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 2, 1, 'ex-5', '2026-03-03 10:00+00')$$) AS not_gold;
UPDATE crm.loyalty_account SET tier = 'gold' WHERE customer_id = 1;
SELECT pg_catalog.cardinality(crm.exchange_points(1, 2, 1, 'ex-6', '2026-03-03 10:00+00')) AS cinema;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 2, 1, 'ex-7', '2027-01-01 10:00+00')$$) AS ended;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 99, 1, 'ex-8')$$) AS unknown_reward;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 1, 0, 'ex-9')$$) AS zero_qty;
SELECT pg_temp.reward_error($$SELECT crm.exchange_points(1, 1, 1, NULL)$$) AS no_key;
SELECT crm.points_balance(1, '2026-03-04') AS ann_left, crm.points_balance(2, '2026-03-04') AS bob_left;

-- 3. The report, and every invariant.
SELECT name, kind, points_price, stock, exchanged, exchanges, points_spent, members FROM crm.v_rewards ORDER BY reward_id;
SELECT * FROM crm.verify();
SELECT * FROM crm.verify_ledgers();
ROLLBACK;
