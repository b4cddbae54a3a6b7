-- Coupons (issue 16, first part): templates, issuing, reserving at
-- checkout, redeeming on an order exactly once, releasing, lapsing and
-- expiring through crm.tick, and every rejection with its own SQLSTATE.
-- Times are fixed (no output depends on the wall clock); codes are random,
-- so the output shows what is checked about them, not the codes.
\i sql/include/expect_error.sql
-- (codes are random: an error's message shows <code> for one)
CREATE FUNCTION pg_temp.coupon_error(sql text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.regexp_replace(pg_temp.expect_error(sql), '[0-9A-HJKMNP-TV-Z]{20}[0-9A-HJKMNP-TV-Z*~$=U]', '<code>', 'g')
$$;
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02'), (3, 'cy', '2026-01-03');
INSERT INTO crm.store (store_id, name) VALUES (1, 'main street');
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(10, 1, 1, 'pos', '2026-03-01 10:00+00', 80.00, 'r-10'), (11, 1, NULL, 'web', '2026-03-02 10:00+00', 30.00, 'r-11'),
	(12, 1, 1, 'pos', '2026-03-03 10:00+00', 250.00, 'r-12'), (20, 2, 1, 'pos', '2026-03-01 11:00+00', 90.00, 'r-20');
INSERT INTO crm.coupon_template (name, kind, amount_off, percent_off, max_discount, min_spend, valid_from, valid_until, valid_days, stock, per_customer_limit, stacking)
VALUES ('ten off fifty', 'amount_off', 10.00, NULL, NULL, 50.00, NULL, NULL, 30, 5, 2, 'combinable'),
       ('spring 20%', 'percent_off', NULL, 20.00, 25.00, 0, '2026-03-01', '2026-04-01', NULL, NULL, NULL, 'combinable'),
       ('ended', 'free_delivery', NULL, NULL, NULL, 0, NULL, '2026-01-01', NULL, NULL, NULL, 'exclusive');

-- 1. A template's fields must fit its kind, and its validity is a window
--    or a number of days.
SELECT pg_temp.coupon_error($$INSERT INTO crm.coupon_template (name, kind, percent_off, valid_days) VALUES ('x', 'amount_off', 5, 1)$$) AS wrong_kind_fields;
SELECT pg_temp.coupon_error($$INSERT INTO crm.coupon_template (name, kind, amount_off) VALUES ('y', 'amount_off', 5)$$) AS no_validity;
SELECT pg_temp.coupon_error($$INSERT INTO crm.coupon_template (name, kind, percent_off, valid_days) VALUES ('z', 'percent_off', 120, 1)$$) AS percent_over_100;

-- 2. Codes: 21 characters, the last a check character; a typed code is
--    read in any case, with hyphens, and the look-alikes I, L and O.
SELECT pg_catalog.length(crm.coupon_code()) AS code_length,
       crm.coupon_code() ~ '^[0-9A-HJKMNP-TV-Z]{20}[0-9A-HJKMNP-TV-Z*~$=U]$' AS code_alphabet,
       (SELECT pg_catalog.count(DISTINCT crm.coupon_code()) FROM pg_catalog.generate_series(1, 10000)) AS distinct_of_10000;
SELECT crm.coupon_code_normal(c) = c AS reads_back, crm.coupon_code_normal(pg_catalog.lower(c)) = c AS lower_case,
       crm.coupon_code_normal(pg_catalog.substr(c, 1, 5) || '-' || pg_catalog.substr(c, 6)) = c AS hyphen,
       crm.coupon_code_normal(overlay(c placing (CASE WHEN pg_catalog.substr(c, 3, 1) = '7' THEN '8' ELSE '7' END) from 3 for 1)) IS NULL AS one_typo_caught,
       crm.coupon_code_normal(pg_catalog.substr(c, 1, 20)) IS NULL AS check_missing
FROM (SELECT crm.coupon_code() AS c) x;
SELECT crm.coupon_code_normal('0000000000000000000O' || '0') AS zeros_with_an_o;

-- 3. Issuing: one coupon to a customer (its golden), exactly once per key;
--    stock counted; a disabled or ended template refused.
SELECT crm.issue_coupon(1, 1, 'welcome-1', '2026-03-01 09:00+00') AS code \gset
SELECT crm.issue_coupon(1, 1, 'welcome-1', '2026-03-01 09:00+00') = :'code' AS retry_same_code;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(1, 2, 'welcome-1')$$) AS key_for_another_customer;
SELECT template_id, customer_id, status, issued_at, valid_from, valid_until FROM crm.coupon WHERE code = :'code';
SELECT crm.issue_coupons(1, ARRAY[1, 2, 3, 2], '2026-03-01 09:00+00') AS issued_to_three;
SELECT name, issued, stock FROM crm.coupon_template WHERE template_id = 1;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupons(1, ARRAY[1, 2], '2026-03-01 09:00+00')$$) AS over_stock;
SELECT issued FROM crm.coupon_template WHERE template_id = 1;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(3, 1)$$) AS ended_template;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(99, 1)$$) AS unknown_template;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(1, -5)$$) AS unknown_customer;
UPDATE crm.coupon_template SET enabled = false WHERE template_id = 2;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(2, 1)$$) AS disabled_template;
UPDATE crm.coupon_template SET enabled = true WHERE template_id = 2;
SELECT crm.issue_coupon(2, 1, NULL, '2026-02-01 00:00+00') AS spring \gset
SELECT valid_from, valid_until FROM crm.coupon WHERE code = :'spring';

-- 4. Reserving at checkout: held for the order until the ttl, a retry for
--    the same order keeps the first reservation, another order is refused.
SELECT crm.reserve_coupon(:'code', 1, 'r-10', '15 minutes', '2026-03-01 10:00+00') AS held_until;
SELECT crm.reserve_coupon(:'code', 1, 'r-10', '15 minutes', '2026-03-01 10:05+00') AS retry_held_until;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 1, 'r-11', '15 minutes', '2026-03-01 10:06+00')$$, :'code')) AS other_order;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 2, 'r-20', '15 minutes', '2026-03-01 10:06+00')$$, :'code')) AS not_yours;
SELECT pg_temp.coupon_error($$SELECT crm.reserve_coupon('NOT-A-CODE', 1, 'r-10')$$) AS mistyped;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 1, 'r-10', '15 minutes', '2026-02-01 00:00+00')$$, :'spring')) AS not_yet_valid;
SELECT customer_id, template_id, used FROM crm.coupon_usage ORDER BY 1, 2;

-- 5. Redeeming consumes the reservation: the discount, exactly once; a
--    retry on the same order returns it again; another order is refused.
SELECT crm.redeem_coupon(:'code', 1, 10, '2026-03-01 10:10+00') AS discount;
SELECT crm.redeem_coupon(:'code', 1, 10, '2026-03-01 10:20+00') AS retry_discount;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 12, '2026-03-03 10:10+00')$$, :'code')) AS used_twice;
SELECT status, order_id, discount, order_ref, reserved_until FROM crm.coupon WHERE code = :'code';
SELECT change, order_ref, order_id, discount, at FROM crm.coupon_journal
WHERE coupon_id = (SELECT coupon_id FROM crm.coupon WHERE code = :'code') ORDER BY entry_id;

-- 6. Without a reservation: the order must reach min_spend and be the
--    customer's; the per-customer limit (2 of template 1) holds.
SELECT code AS second FROM crm.coupon WHERE customer_id = 1 AND template_id = 1 AND status = 'issued' ORDER BY coupon_id LIMIT 1 \gset
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 11, '2026-03-02 10:10+00')$$, :'second')) AS below_min_spend;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 20, '2026-03-02 10:10+00')$$, :'second')) AS order_of_another;
SELECT crm.redeem_coupon(:'second', 1, 12, '2026-03-03 10:10+00') AS ten_off_250;
SELECT crm.issue_coupon(1, 1, NULL, '2026-03-03 09:00+00') AS third \gset
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 1, 'r-99', '15 minutes', '2026-03-03 11:00+00')$$, :'third')) AS customer_limit;
-- percent off with a cap: 20% of 250 is 50, capped at 25
SELECT crm.redeem_coupon(:'spring', 1, 12, '2026-03-03 10:30+00') AS spring_on_250;

-- 7. Releasing gives the use back; a lapsed reservation is released by
--    crm.tick, or by the next checkout that finds it; coupons past their
--    validity expire.
SELECT code AS bobs FROM crm.coupon WHERE customer_id = 2 ORDER BY coupon_id LIMIT 1 \gset
SELECT crm.reserve_coupon(:'bobs', 2, 'r-20', '10 minutes', '2026-03-01 11:00+00') IS NOT NULL AS reserved;
SELECT crm.release_coupon(:'bobs', 2, 'r-20', '2026-03-01 11:01+00') AS released, crm.release_coupon(:'bobs', 2, 'r-20', '2026-03-01 11:02+00') AS again;
SELECT used FROM crm.coupon_usage WHERE customer_id = 2;
SELECT crm.reserve_coupon(:'bobs', 2, 'r-20', '10 minutes', '2026-03-01 11:05+00') IS NOT NULL AS reserved_again;
SELECT * FROM crm.tick('2026-03-01 11:20+00') WHERE task = 'coupons_expire';
SELECT status, reserved_until FROM crm.coupon WHERE code = :'bobs';
SELECT used FROM crm.coupon_usage WHERE customer_id = 2;
SELECT coupon_id IS NOT NULL AS found, template, valid_until FROM crm.coupons_expiring('7 days', '2026-03-28 00:00+00') WHERE customer_id = 2;
SELECT * FROM crm.tick('2026-06-01 00:00+00') WHERE task = 'coupons_expire';
SELECT * FROM crm.tick('2026-06-01 00:00+00') WHERE task = 'coupons_expire';
SELECT status, pg_catalog.count(*) FROM crm.coupon GROUP BY 1 ORDER BY 1;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 2, 'r-20', '10 minutes', '2026-06-02 00:00+00')$$, :'bobs')) AS expired;
SELECT change, pg_catalog.count(*) FROM crm.coupon_journal GROUP BY 1 ORDER BY 1;

-- 8. Limits count on the golden customer: a merge adds both sides' uses,
--    an unmerge gives each side its own back.
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(21, 2, 1, 'pos', '2026-06-02 10:00+00', 60.00, 'r-21'), (30, 3, 1, 'pos', '2026-06-02 11:00+00', 70.00, 'r-30');
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days, per_customer_limit, stacking) VALUES ('two per shopper', 'amount_off', 3.00, 30, 2, 'combinable')
RETURNING template_id AS two \gset
SELECT crm.redeem_coupon(crm.issue_coupon(:two, 2, NULL, '2026-06-02 09:00+00'), 2, 21, '2026-06-02 10:30+00') AS bob_uses_one,
       crm.redeem_coupon(crm.issue_coupon(:two, 3, NULL, '2026-06-02 09:00+00'), 3, 30, '2026-06-02 11:30+00') AS cy_uses_one;
SELECT crm.merge_customers(2, 3, 'same shopper') AS merge_id \gset
SELECT customer_id, used FROM crm.coupon_usage WHERE template_id = :two ORDER BY 1;
SELECT crm.issue_coupon(:two, 3, NULL, '2026-06-03 09:00+00') AS third_for_cy \gset
SELECT customer_id FROM crm.coupon WHERE code = :'third_for_cy';
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 3, 'r-x', '15 minutes', '2026-06-03 10:00+00')$$, :'third_for_cy')) AS merged_limit;
SELECT crm.unmerge(:merge_id) AS undone;
SELECT customer_id, used FROM crm.coupon_usage WHERE template_id = :two ORDER BY 1;
SELECT crm.reserve_coupon(:'third_for_cy', 2, 'r-x', '15 minutes', '2026-06-03 10:00+00') AS bob_may_again;

-- A template for some tiers only: the customer's golden tier decides.
INSERT INTO crm.coupon_template (name, kind, percent_off, valid_days, eligible_tiers, stacking)
VALUES ('gold treat', 'percent_off', 10.00, 30, '{gold,platinum}', 'combinable') RETURNING template_id AS gold \gset
SELECT crm.issue_coupon(:gold, 2, NULL, '2026-06-03 09:00+00') AS treat \gset
SELECT a.tier FROM crm.loyalty_account a WHERE a.customer_id = 2;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.reserve_coupon(%L, 2, 'r-y', '15 minutes', '2026-06-03 10:00+00')$$, :'treat')) AS not_gold;
UPDATE crm.loyalty_account SET tier = 'gold' WHERE customer_id = 2;
SELECT crm.redeem_coupon(:'treat', 2, 21, '2026-06-03 10:00+00') AS gold_discount;

-- A fully refunded order gives its coupon back when the template says so
-- and the coupon is still valid; a partial refund does not, nor does a
-- template without restore_on_refund.
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(13, 1, 1, 'pos', '2026-06-04 10:00+00', 40.00, 'r-13'), (14, 1, 1, 'pos', '2026-06-04 11:00+00', 40.00, 'r-14');
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_from, valid_until, restore_on_refund, stacking)
VALUES ('comes back', 'amount_off', 4.00, '2026-01-01', '2036-01-01', true, 'combinable') RETURNING template_id AS back \gset
SELECT crm.issue_coupon(:back, 1, NULL, '2026-06-04 09:00+00') AS back_code, crm.issue_coupon(2, 1, NULL, '2026-03-05 09:00+00') AS gone_code \gset
SELECT crm.redeem_coupon(:'back_code', 1, 13, '2026-06-04 10:05+00') AS back_discount,
       crm.redeem_coupon(:'gone_code', 1, 14, '2026-03-05 11:05+00') AS gone_discount;
UPDATE crm.orders SET refunded_amount = 10.00 WHERE order_id = 13;
SELECT status FROM crm.coupon WHERE code = :'back_code';
UPDATE crm.orders SET status = 'refunded' WHERE order_id IN (13, 14);
SELECT t.name, c.status, c.order_id, c.discount FROM crm.coupon c JOIN crm.coupon_template t USING (template_id)
WHERE c.code IN (:'back_code', :'gone_code') ORDER BY 1;
SELECT change, order_id FROM crm.coupon_journal WHERE coupon_id = (SELECT coupon_id FROM crm.coupon WHERE code = :'back_code') ORDER BY entry_id;
SELECT crm.redeem_coupon(:'back_code', 1, 12, '2026-06-05 10:00+00') AS used_again;

-- Stacking: order 12 carries three combinable coupons by now; an exclusive
-- one is refused there, and so is a second of a template used there; a
-- percent "after discounts" is taken of what is left.
INSERT INTO crm.coupon_template (name, kind, amount_off, percent_off, valid_days, stacking, percent_base) VALUES
	('solo', 'amount_off', 1.00, NULL, 30, 'exclusive', 'before_discounts'),
	('after', 'percent_off', NULL, 10.00, 30, 'combinable', 'after_discounts');
SELECT crm.issue_coupon(t.template_id, 1, NULL, '2026-06-05 09:00+00') AS solo FROM crm.coupon_template t WHERE t.name = 'solo' \gset
SELECT crm.issue_coupon(t.template_id, 1, NULL, '2026-06-05 09:00+00') AS after FROM crm.coupon_template t WHERE t.name = 'after' \gset
SELECT crm.issue_coupon(t.template_id, 1, NULL, '2026-06-05 09:00+00') AS back2 FROM crm.coupon_template t WHERE t.name = 'comes back' \gset
SELECT pg_catalog.string_agg(t.name || ' ' || c.discount, ', ' ORDER BY c.coupon_id) AS on_order_12
FROM crm.coupon c JOIN crm.coupon_template t USING (template_id) WHERE c.order_id = 12;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 12, '2026-06-05 10:00+00')$$, :'solo')) AS exclusive_refused;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 12, '2026-06-05 10:00+00')$$, :'back2')) AS same_template_refused;
SELECT crm.redeem_coupon(:'after', 1, 12, '2026-06-05 10:00+00') AS ten_percent_of_211;
SELECT crm.redeem_coupon(:'solo', 1, 11, '2026-06-05 10:00+00') AS solo_on_a_bare_order;

-- Budgets: one redemption a day of "daily one", 12.00 of discount in all
-- of "twelve"; a refund that restores a coupon gives its budget back.
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(15, 1, 1, 'pos', '2026-06-06 10:00+00', 50.00, 'r-15'), (16, 1, 1, 'pos', '2026-06-06 11:00+00', 50.00, 'r-16'),
	(17, 1, 1, 'pos', '2026-06-07 10:00+00', 50.00, 'r-17');
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_from, valid_until, budget_count, budget_value, budget_period, stacking, restore_on_refund) VALUES
	('daily one', 'amount_off', 1.00, NULL, '2036-01-01', 1, NULL, 'day', 'combinable', false),
	('twelve', 'amount_off', 10.00, NULL, '2036-01-01', NULL, 12.00, NULL, 'combinable', true);
SELECT pg_temp.coupon_error($$INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days, budget_period) VALUES ('cap?', 'amount_off', 1, 1, 'day')$$) AS period_without_cap;
CREATE TEMP TABLE budget_codes AS
SELECT t.name, g.n, crm.issue_coupon(t.template_id, 1, NULL, '2026-06-06 09:00+00') AS code
FROM crm.coupon_template t, pg_catalog.generate_series(1, 3) g(n) WHERE t.name IN ('daily one', 'twelve');
SELECT crm.redeem_coupon((SELECT code FROM budget_codes WHERE name = 'daily one' AND n = 1), 1, 15, '2026-06-06 10:00+00') AS first_today;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 16, '2026-06-06 11:00+00')$$,
	(SELECT code FROM budget_codes WHERE name = 'daily one' AND n = 2))) AS second_today;
SELECT crm.redeem_coupon((SELECT code FROM budget_codes WHERE name = 'daily one' AND n = 2), 1, 17, '2026-06-07 10:00+00') AS tomorrow;
SELECT crm.redeem_coupon((SELECT code FROM budget_codes WHERE name = 'twelve' AND n = 1), 1, 16, '2026-06-06 11:00+00') AS first_ten;
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 17, '2026-06-07 10:05+00')$$,
	(SELECT code FROM budget_codes WHERE name = 'twelve' AND n = 2))) AS over_twelve;
SELECT t.name, b.period_start, b.redeemed, b.discount FROM crm.coupon_budget b JOIN crm.coupon_template t USING (template_id) ORDER BY 1, 2;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 16;
SELECT b.redeemed, b.discount FROM crm.coupon_budget b JOIN crm.coupon_template t USING (template_id) WHERE t.name = 'twelve';
SELECT crm.redeem_coupon((SELECT code FROM budget_codes WHERE name = 'twelve' AND n = 2), 1, 17, '2026-06-07 10:05+00') AS after_the_refund;

-- Eligible categories: min_spend and the discount count the order's
-- fresh and dairy lines only (60.00 of 100.00 here).
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(18, 1, 1, 'pos', '2026-06-08 10:00+00', 100.00, 'r-18'), (19, 1, 1, 'pos', '2026-06-08 11:00+00', 30.00, 'r-19');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(18, 1, 'FRE-1', 'fresh', 1, 40.00), (18, 2, 'DAI-1', 'dairy', 1, 20.00), (18, 3, 'TOY-1', 'toys', 1, 40.00),
	(19, 1, 'TOY-2', 'toys', 1, 30.00);
INSERT INTO crm.coupon_template (name, kind, percent_off, min_spend, valid_days, eligible_categories) VALUES
	('fresh week', 'percent_off', 50.00, 50.00, 30, '{fresh,dairy}');
SELECT crm.issue_coupon(t.template_id, 1, NULL, '2026-06-08 09:00+00') AS fresh FROM crm.coupon_template t WHERE t.name = 'fresh week' \gset
SELECT pg_temp.coupon_error(pg_catalog.format($$SELECT crm.redeem_coupon(%L, 1, 19, '2026-06-08 11:30+00')$$, :'fresh')) AS only_toys;
SELECT crm.redeem_coupon(:'fresh', 1, 18, '2026-06-08 10:30+00') AS half_of_60;

-- Tier benefits as coupons: gold and black members get a free-delivery
-- coupon every month, silver and up a birthday gift in their birthday
-- month; a second tick in the same period issues nothing.
INSERT INTO crm.coupon_template (name, kind, valid_days) VALUES ('free delivery', 'free_delivery', 31);
INSERT INTO crm.coupon_template (name, kind, gift_sku, valid_days) VALUES ('birthday gift', 'gift_item', 'GIFT-1', 30);
INSERT INTO crm.tier_benefit_coupon (benefit, template_id, every)
SELECT 'free_delivery', template_id, 'month' FROM crm.coupon_template WHERE name = 'free delivery'
UNION ALL SELECT 'birthday_gift', template_id, 'birthday' FROM crm.coupon_template WHERE name = 'birthday gift';
UPDATE crm.customer SET birthday = '1990-07-15' WHERE customer_id IN (1, 3);
UPDATE crm.loyalty_account SET tier = 'silver' WHERE customer_id = 1;
SELECT customer_id, tier FROM crm.loyalty_account ORDER BY 1;
SELECT * FROM crm.tick('2026-07-02 00:00+00') WHERE task = 'tier_benefits';
SELECT * FROM crm.tick('2026-07-20 00:00+00') WHERE task = 'tier_benefits';
SELECT t.name, c.customer_id, c.issue_key FROM crm.coupon c JOIN crm.coupon_template t USING (template_id)
WHERE c.issue_key LIKE 'benefit:%' ORDER BY 1, 2;
SELECT * FROM crm.tick('2026-08-02 00:00+00') WHERE task = 'tier_benefits';

-- The report per template.
SELECT name, kind, issued, stock, open, reserved, redeemed, expired, redemption_rate, discount_given
FROM crm.v_coupon_templates ORDER BY template_id;

-- every cross-feature invariant holds, the coupons' included
SELECT * FROM crm.verify();
-- and a usage row out of step with the coupons is reported
UPDATE crm.coupon_usage SET used = used + 1 WHERE customer_id = 3 AND template_id = :two;
SELECT invariant, customer_id, detail FROM crm.verify() WHERE invariant LIKE 'coupon%';
UPDATE crm.coupon_usage SET used = used - 1 WHERE customer_id = 3 AND template_id = :two;
UPDATE crm.coupon_budget SET redeemed = redeemed + 1 WHERE period_start = '-infinity';
SELECT invariant, customer_id, detail FROM crm.verify() WHERE invariant LIKE 'coupon%';
UPDATE crm.coupon_budget SET redeemed = redeemed - 1 WHERE period_start = '-infinity';
SELECT pg_catalog.count(*) AS problems FROM crm.verify();

-- 9. Bad input: a clear error, never a silent NULL.
SELECT pg_temp.coupon_error($$SELECT crm.reserve_coupon(NULL, 1, 'r-1')$$) AS null_code;
SELECT pg_temp.coupon_error($$SELECT crm.reserve_coupon('X', 1, 'r-1', '-1 minute')$$) AS negative_ttl;
SELECT pg_temp.coupon_error($$SELECT crm.redeem_coupon('X', 1, NULL)$$) AS null_order;
SELECT pg_temp.coupon_error($$SELECT crm.issue_coupon(1, NULL)$$) AS null_customer;
ROLLBACK;
