-- Demo report, section 3b: coupons on the sample (the sample has none, so
-- this section makes them as a shop would, as of crm.sample_as_of()): a
-- win-back coupon for shoppers who bought before but not in the last 90
-- days, a free-delivery coupon as a tier benefit, and a "5 off" coupon
-- issued a week before the end to the shoppers who ordered in the final
-- week, redeemed on their last paid order of that week.
\pset border 1
\echo '== Coupons (made here as of the end of the sample) =='
INSERT INTO crm.coupon_template (name, kind, percent_off, max_discount, min_spend, valid_days, per_customer_limit)
VALUES ('win-back 15%', 'percent_off', 15.00, 20.00, 30.00, 30, 1);
INSERT INTO crm.coupon_template (name, kind, valid_days) VALUES ('free delivery (gold, black)', 'free_delivery', 31);
INSERT INTO crm.coupon_template (name, kind, amount_off, min_spend, valid_days) VALUES ('5 off 40', 'amount_off', 5.00, 40.00, 14);
INSERT INTO crm.tier_benefit_coupon (benefit, template_id, every)
SELECT 'free_delivery', template_id, 'month' FROM crm.coupon_template WHERE name = 'free delivery (gold, black)';

\echo 'Issued: each audience in one statement; the tier benefit by its tick task:'
SELECT crm.issue_coupons(t.template_id, ARRAY(
	SELECT c.customer_id FROM crm.customer c
	WHERE c.merged_into IS NULL
	  AND EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = c.customer_id AND o.status = 'paid')
	  AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = c.customer_id
	                  AND o.ordered_at >= crm.sample_as_of() - interval '90 days')), crm.sample_as_of()) AS win_back_issued
FROM crm.coupon_template t WHERE t.name = 'win-back 15%';
SELECT crm.issue_coupons(t.template_id, ARRAY(
	SELECT DISTINCT o.customer_id FROM crm.orders o
	WHERE o.status = 'paid' AND o.ordered_at >= crm.sample_as_of() - interval '7 days'), crm.sample_as_of() - interval '8 days') AS five_off_issued
FROM crm.coupon_template t WHERE t.name = '5 off 40';
SELECT crm.tier_benefits(crm.sample_as_of()) AS tier_benefit_coupons;   -- the tick task alone

\echo 'Redeemed: the "5 off 40" coupons, on each shopper''s last paid order of 40.00 or more in the final week:'
SELECT count(*) AS redeemed, sum(d) AS discount_given FROM (
	SELECT crm.redeem_coupon(k.code, k.customer_id, o.order_id, o.ordered_at) AS d
	FROM crm.coupon k
	JOIN crm.coupon_template t ON t.template_id = k.template_id AND t.name = '5 off 40'
	CROSS JOIN LATERAL (SELECT o.order_id, o.ordered_at FROM crm.orders o
	                    WHERE o.customer_id = k.customer_id AND o.status = 'paid' AND o.net_amount >= t.min_spend
	                      AND o.ordered_at >= crm.sample_as_of() - interval '7 days'
	                    ORDER BY o.ordered_at DESC, o.order_id DESC LIMIT 1) o
	ORDER BY k.coupon_id) r;

\echo 'Per template (crm.v_coupon_templates):'
SELECT name, kind, issued, open, redeemed, expired, redemption_rate, discount_given
FROM crm.v_coupon_templates ORDER BY template_id;
