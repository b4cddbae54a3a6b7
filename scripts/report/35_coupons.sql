-- Demo report, section 3b: coupons, as crm.generate_sample_activity made
-- them on the sample (scripts/demo runs it after crm.generate_sample): a
-- win-back campaign for shoppers who lapsed lately, member vouchers for
-- silver and up (given back when the order they were used on is refunded),
-- "5 off 40" for the shoppers of the final week, free delivery as a monthly
-- benefit of gold and black (the tick task tier_benefits), and the coupons
-- rewards are handed over as (section 3c).  This section only reads.
\pset border 1
\echo '== Coupons (made by crm.generate_sample_activity; as of the end of the sample) =='
\echo 'Per template (crm.v_coupon_templates; expired: by the tick at the sample''s end):'
SELECT name, kind, issued, open, redeemed, expired, redemption_rate, discount_given
FROM crm.v_coupon_templates ORDER BY template_id;

\echo 'Redemption rate by audience (who each campaign went to), and by the holder''s tier now:'
SELECT a.audience, t.name AS coupon, coalesce(x.tier, 'none') AS holder_tier,
       count(*) AS issued, count(*) FILTER (WHERE k.status = 'redeemed') AS redeemed,
       round(count(*) FILTER (WHERE k.status = 'redeemed')::numeric / count(*), 4) AS redemption_rate
FROM (VALUES ('win-back 15%', 'lapsed lately (last order 90-180 days before the campaign)'),
             ('member voucher 10 off 50', 'silver and up'),
             ('5 off 40', 'shoppers of the final week'),
             ('free delivery (gold, black)', 'gold and black (tier benefit, monthly)')) AS a(template, audience)
JOIN crm.coupon_template t ON t.name = a.template
JOIN crm.coupon k ON k.template_id = t.template_id
JOIN crm.customer c ON c.customer_id = k.customer_id
LEFT JOIN crm.loyalty_account x ON x.customer_id = coalesce(c.merged_into, c.customer_id)
LEFT JOIN crm.tier r ON r.tier = x.tier
GROUP BY t.template_id, a.audience, t.name, x.tier, r.rank
ORDER BY t.template_id, r.rank NULLS FIRST;

\echo 'Coupons used on orders that were refunded afterwards: given back (restore_on_refund) or kept used:'
SELECT t.name AS template, t.restore_on_refund,
       count(*) FILTER (WHERE k.status = 'redeemed') AS kept_used,
       (SELECT count(*) FROM crm.coupon_journal j JOIN crm.coupon y ON y.coupon_id = j.coupon_id
        WHERE y.template_id = t.template_id AND j.change = 'restore') AS given_back,
       (SELECT count(*) FROM crm.coupon y WHERE y.template_id = t.template_id AND y.status = 'issued'
          AND EXISTS (SELECT 1 FROM crm.coupon_journal j WHERE j.coupon_id = y.coupon_id AND j.change = 'restore')) AS open_again
FROM crm.coupon_template t
LEFT JOIN crm.coupon k ON k.template_id = t.template_id
	AND EXISTS (SELECT 1 FROM crm.orders o WHERE o.order_id = k.order_id AND o.status = 'refunded')
GROUP BY t.template_id
HAVING count(k.coupon_id) > 0
    OR EXISTS (SELECT 1 FROM crm.coupon_journal j JOIN crm.coupon y ON y.coupon_id = j.coupon_id
               WHERE y.template_id = t.template_id AND j.change = 'restore')
ORDER BY t.template_id;

\echo 'Unused coupons expiring within 7 days of the sample''s end (crm.coupons_expiring: a reminder''s audience):'
SELECT template, count(*) AS coupons, to_char(min(valid_until) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS first_expires_utc
FROM crm.coupons_expiring('7 days', crm.sample_as_of())
GROUP BY template ORDER BY min(valid_until), template;
