-- crm.generate_sample_activity: what members do with the sample's points
-- and coupons (points redeemed, coupons issued to audiences and redeemed,
-- rewards exchanged, stored value topped up and spent, orders refunded
-- after all that), the same for the same
-- sample and seed, refused a second time.
\i sql/include/expect_error.sql
-- A checksum over what the activity made and changed, without what differs
-- from run to run by design: coupon codes (random), the ids sequences hand
-- out (they move on after a ROLLBACK) and the times crm stamps a refund's
-- effects with (the transaction's: clawbacks, coupons given back).
CREATE FUNCTION pg_temp.activity_checksum() RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.md5(pg_catalog.string_agg(t, E'\n' ORDER BY t COLLATE "C")) FROM (
		SELECT pg_catalog.format('t|%s|%s|%s|%s|%s', name, kind, issued, stock, restore_on_refund) FROM crm.coupon_template
		UNION ALL
		SELECT pg_catalog.format('b|%s|%s|%s', b.benefit, t.name, b.every)
		FROM crm.tier_benefit_coupon b JOIN crm.coupon_template t USING (template_id)
		UNION ALL
		SELECT pg_catalog.format('c|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', t.name, k.customer_id, EXTRACT(epoch FROM k.issued_at),
		                         EXTRACT(epoch FROM k.valid_from), EXTRACT(epoch FROM k.valid_until), k.status, k.order_id,
		                         k.discount, EXTRACT(epoch FROM k.redeemed_at), k.issue_key)
		FROM crm.coupon k JOIN crm.coupon_template t USING (template_id)
		UNION ALL
		SELECT pg_catalog.format('j|%s|%s|%s|%s|%s|%s', t.name, j.customer_id, j.change, j.order_id, j.discount,
		                         CASE WHEN j.change <> 'restore' THEN EXTRACT(epoch FROM j.at) END)
		FROM crm.coupon_journal j JOIN crm.coupon k USING (coupon_id) JOIN crm.coupon_template t ON t.template_id = k.template_id
		UNION ALL
		SELECT pg_catalog.format('u|%s|%s|%s', u.customer_id, t.name, u.used)
		FROM crm.coupon_usage u JOIN crm.coupon_template t USING (template_id)
		UNION ALL
		SELECT pg_catalog.format('p|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', customer_id, origin_customer_id, kind, points, lots, debt,
		                         order_id, idempotency_key, balance_after, reason, CASE WHEN kind <> 'clawback' THEN EXTRACT(epoch FROM at) END)
		FROM crm.points_journal WHERE kind <> 'earn'
		UNION ALL
		SELECT pg_catalog.format('a|%s|%s|%s|%s', customer_id, ledger, debt, tier) FROM crm.loyalty_account
		UNION ALL
		SELECT pg_catalog.format('r|%s|%s|%s|%s|%s|%s|%s', r.name, r.kind, r.points_price, r.stock, r.exchanged,
		                         EXTRACT(epoch FROM r.valid_from), r.eligible_tiers)
		FROM crm.reward r
		UNION ALL
		SELECT pg_catalog.format('e|%s|%s|%s|%s|%s|%s|%s', r.name, e.customer_id, e.qty, e.points, pg_catalog.cardinality(e.codes),
		                         e.idempotency_key, EXTRACT(epoch FROM e.at))
		FROM crm.reward_exchange e JOIN crm.reward r USING (reward_id)
		UNION ALL
		SELECT pg_catalog.format('o|%s|%s|%s', order_id, status, net_amount) FROM crm.orders WHERE status = 'refunded'
		UNION ALL
		SELECT pg_catalog.format('w|%s|%s|%s|%s|%s|%s|%s', t.kind, t.customer_id, t.amount, t.bonus,
		                         CASE WHEN t.idempotency_key LIKE 'order-refund:%' THEN 'order-refund:' || p.idempotency_key ELSE t.idempotency_key END,
		                         t.order_id, CASE WHEN t.kind <> 'refund' THEN EXTRACT(epoch FROM t.at) END)
		FROM crm.wallet_txn t LEFT JOIN crm.wallet_txn p ON p.txn_id = t.ref_txn_id
		UNION ALL
		SELECT pg_catalog.format('W|%s|%s|%s|%s|%s', customer_id, cash, bonus, held_cash, held_bonus) FROM crm.wallet
		UNION ALL
		SELECT pg_catalog.format('k|%s|%s|%s|%s|%s|%s', customer_id, channel, purpose, granted, source, EXTRACT(epoch FROM at)) FROM crm.consent_event
		UNION ALL
		SELECT pg_catalog.format('J|%s|%s|%s|%s|%s', j.name, j.entry, s.step_no, s.kind, s.template)
		FROM crm.journey j JOIN crm.journey_step s USING (journey_id)
		UNION ALL
		SELECT pg_catalog.format('m|%s|%s|%s', c.name, m.customer_id, m.control)
		FROM crm.campaign c JOIN crm.campaign_member m USING (campaign_id)
	) AS rows(t)
$$;
SET TimeZone = 'UTC';

BEGIN;
SELECT pg_temp.expect_error($$SELECT * FROM crm.generate_sample_activity(1)$$) AS without_sample;
SELECT count(*) FROM crm.generate_sample(1000, 1);
-- fresh statistics: an autovacuum after an earlier test's ROLLBACK leaves
-- reltuples 0 over non-empty pages, and crm.verify() then plans badly
ANALYZE crm.customer, crm.orders, crm.order_line, crm.identity, crm.event, crm.loyalty_account, crm.points_journal;
SELECT * FROM crm.generate_sample_activity(1) ORDER BY relation;
SELECT pg_temp.activity_checksum() AS activity_seed_1 \gset
SELECT :'activity_seed_1' AS activity_seed_1;
-- the programme's clock is the caller's again
SELECT current_setting('crm.loyalty_now') AS loyalty_now_after;

-- 1. Points redeemed at the till by 15% of the members with points, each
--    dated after the member's last order (the points exist) and before the
--    sample's end.
SELECT count(*) AS redemptions, count(DISTINCT j.customer_id) AS members, sum(- j.points) AS points_redeemed,
       min(- j.points) AS smallest, max(- j.points) AS largest,
       count(*) FILTER (WHERE j.at < (SELECT max(o.ordered_at) FROM crm.orders o
                                      WHERE o.customer_id = j.customer_id AND o.status <> 'refunded')) AS before_last_order,
       count(*) FILTER (WHERE j.at >= crm.sample_as_of()) AS after_sample_end
FROM crm.points_journal j WHERE j.kind = 'spend' AND j.idempotency_key LIKE 'sample:redeem:%';

-- 2. Refunds after spending: the order's points clawed back, as debt where
--    the member had spent them already.
SELECT count(*) AS clawbacks, count(DISTINCT j.customer_id) AS members, sum(- j.points) AS clawed_from_points,
       sum(j.debt) AS became_debt, sum(j.debt - j.points) AS clawed_back_total,
       count(*) FILTER (WHERE j.debt > 0) AS refunds_leaving_debt
FROM crm.points_journal j WHERE j.kind = 'clawback';
SELECT count(*) AS members_in_debt, sum(debt) AS debt, max(debt) AS largest_debt,
       count(*) FILTER (WHERE crm.ledger_total(ledger) > 0) AS in_debt_with_points_left
FROM crm.loyalty_account WHERE debt > 0;
-- (the sample's own refunded orders were inserted refunded: they earned
-- nothing and have no clawback)
SELECT count(*) AS orders_refunded_after_earning,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM crm.coupon_journal j WHERE j.order_id = o.order_id AND j.change = 'restore'))
           AS a_voucher_used_on_them
FROM crm.orders o
WHERE o.status = 'refunded' AND EXISTS (SELECT 1 FROM crm.points_journal j WHERE j.order_id = o.order_id AND j.kind = 'clawback');

-- 3. Coupons: issued to audiences, redeemed on orders, given back by refunds
--    (member vouchers are valid five years, so until 2031 they are still
--    valid when the refund, stamped with the transaction's time, comes).
SELECT name, kind, issued, stock, open, reserved, redeemed, expired, redemption_rate, discount_given
FROM crm.v_coupon_templates ORDER BY template_id;
SELECT t.name, j.change, count(*) FROM crm.coupon_journal j JOIN crm.coupon k USING (coupon_id)
JOIN crm.coupon_template t ON t.template_id = k.template_id
GROUP BY t.template_id, t.name, j.change ORDER BY t.template_id, j.change;
-- given back: issued again, their orders refunded; no coupon of a refunded
-- order stays redeemed where its template gives it back
SELECT count(*) AS restored, count(*) FILTER (WHERE k.status = 'issued') AS open_again,
       count(*) FILTER (WHERE o.status = 'refunded') AS order_refunded
FROM crm.coupon_journal j JOIN crm.coupon k USING (coupon_id) JOIN crm.orders o ON o.order_id = j.order_id
WHERE j.change = 'restore';
SELECT count(*) AS restorable_still_redeemed_on_refunded_orders
FROM crm.coupon k JOIN crm.coupon_template t USING (template_id) JOIN crm.orders o ON o.order_id = k.order_id
WHERE k.status = 'redeemed' AND t.restore_on_refund AND o.status = 'refunded';
-- each redemption on a paid order of its holder, in the coupon's validity,
-- one coupon per order
SELECT count(*) AS redeemed,
       count(*) FILTER (WHERE o.customer_id <> k.customer_id OR k.redeemed_at <> o.ordered_at
                          OR o.ordered_at < k.valid_from OR o.ordered_at >= k.valid_until) AS misplaced,
       count(*) - count(DISTINCT k.order_id) AS orders_with_two
FROM crm.coupon k JOIN crm.orders o USING (order_id) WHERE k.status = 'redeemed';
SELECT count(*) AS expiring_within_7_days FROM crm.coupons_expiring('7 days', crm.sample_as_of());

-- 4. Rewards: exchanges in the catalogue's month; the thermos sold out, and
--    one more is refused.
SELECT name, kind, points_price, stock, exchanged, exchanges, points_spent, members FROM crm.v_rewards ORDER BY reward_id;
SELECT count(*) AS exchanges, sum(e.points) AS points,
       count(*) FILTER (WHERE j.points <> - e.points) AS journal_mismatch,
       count(*) FILTER (WHERE e.at < crm.sample_as_of() - interval '30 days' OR e.at >= crm.sample_as_of()) AS outside_month
FROM crm.reward_exchange e LEFT JOIN crm.points_journal j ON j.idempotency_key = 'reward:' || e.idempotency_key;
SELECT pg_temp.expect_error(format($$SELECT crm.exchange_points(%s, %s, 1, 'one-more-thermos', '2026-06-30 12:00+00')$$,
	(SELECT a.customer_id FROM crm.loyalty_account a ORDER BY crm.ledger_balance(a.ledger, crm.sample_as_of()) DESC, a.customer_id LIMIT 1),
	(SELECT r.reward_id FROM crm.reward r WHERE r.name = 'limited-edition thermos'))) AS one_more_thermos;

-- 4b. Stored value: top-ups (some with a bonus), payments and POS holds
--     captured for orders, unfinished holds, refunds of orders paid with
--     the wallet (back to the wallet, by the trigger); the tick at the
--     sample's end releases the unfinished holds and expires old bonus.
SELECT kind, count(*), sum(amount) AS amount, sum(bonus) AS bonus FROM crm.wallet_txn GROUP BY kind ORDER BY kind;
SELECT count(*) AS wallets, sum(cash) AS cash, sum(bonus) AS bonus, sum(held_cash + held_bonus) AS held FROM crm.wallet;
SELECT count(*) FILTER (WHERE t.kind IN ('pay', 'capture') AND o.status = 'refunded') AS wallet_paid_orders_refunded,
       count(*) FILTER (WHERE t.kind IN ('pay', 'capture') AND t.amount > o.net_amount AND o.status = 'paid') AS paid_over_the_order
FROM crm.wallet_txn t JOIN crm.orders o ON o.order_id = t.order_id;
SELECT changed AS wallet_tick FROM crm.tick(crm.sample_as_of()) WHERE task = 'wallet_expire';
SELECT account, balance FROM crm.v_wallet_accounts ORDER BY account;

-- 4c. Consent (six in ten opt in to SMS, three in ten to e-mail, some
--     reply STOP) and the programme's journeys, which that tick ran: who
--     entered, who was held out, what was queued and what consent held back.
SELECT channel, granted, count(*) FROM crm.consent_event GROUP BY 1, 2 ORDER BY 1, 2;
SELECT name, entered, control, active, done, messages, suppressed FROM crm.v_journey_funnel ORDER BY journey_id;
SELECT name, treated, control, treated_rate, control_rate, uplift, uplift_low, uplift_high FROM crm.v_campaign_effect;

-- 5. Once per sample.
SELECT pg_temp.expect_error($$SELECT * FROM crm.generate_sample_activity(1)$$) AS second_call;
SELECT * FROM crm.verify();
SELECT * FROM crm.verify_ledgers();
ROLLBACK;

-- The same sample and seed give the same activity.
BEGIN;
SELECT count(*) FROM crm.generate_sample(1000, 1);
ANALYZE crm.customer, crm.orders, crm.order_line, crm.identity, crm.event, crm.loyalty_account, crm.points_journal;
SELECT count(*) FROM crm.generate_sample_activity(1);
SELECT pg_temp.activity_checksum() = :'activity_seed_1' AS same_activity_again;
ROLLBACK;
