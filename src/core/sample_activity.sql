
-- ===========================================================================
-- sample_activity.sql: what members do with the sample's points and coupons
-- (crm.generate_sample_activity).  Comes after every feature in the install
-- script (Makefile), since it calls them: coupons, rewards, loyalty.
--
-- crm.generate_sample stays as it is (its output is compared on a Citus
-- cluster, where coupons refuse); this function adds, on top of it, points
-- redemptions, coupons issued to audiences and redeemed on orders, reward
-- exchanges, and refunds after all of these, so that clawback, debt and
-- restored coupons have something to show.  Every choice is a pure function
-- of (seed, stream, key) as in crm.generate_sample (streams 200-221 here),
-- so the same sample and seed give the same activity; only coupon codes
-- (random by design), ids from sequences and the times crm stamps a
-- refund's effects with (the transaction's) differ from run to run.
-- ===========================================================================

-- One member's stored value in the sample (crm.generate_sample_activity):
-- a top-up a day before first_at, then payments for up to three paid
-- orders from first_at on while the wallet reaches (the first through a
-- POS hold for a fifth of the members), and for one member in ten a hold
-- two days before "at" that is never finished.  Draws: streams 214-216.
CREATE FUNCTION crm.sample_wallet_member(seed integer, customer bigint, first_at timestamptz, at timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	u double precision := crm.sample_uniform(seed, 214, customer);
	top_up_at timestamptz := first_at - interval '1 day';
	o record;
	left_over numeric;
	pay numeric;
	key text;
BEGIN
	PERFORM crm.wallet_top_up(customer, CASE WHEN u < 0.5 THEN 100.00 WHEN u < 0.85 THEN 200.00 ELSE 500.00 END,
		'sample:wallet:top-up:' || customer, bonus => CASE WHEN u < 0.5 THEN 0 WHEN u < 0.85 THEN 10.00 ELSE 60.00 END,
		paid_with => CASE WHEN u < 0.3 THEN 'cash' ELSE 'card' END, at => top_up_at,
		bonus_expires_at => top_up_at + interval '90 days');
	FOR o IN SELECT x.order_id, x.net_amount, x.ordered_at, pg_catalog.row_number() OVER (ORDER BY x.ordered_at, x.order_id) AS n
	         FROM crm.orders x
	         WHERE x.customer_id = customer AND x.status = 'paid' AND x.ordered_at >= first_at AND x.ordered_at < at
	         ORDER BY x.ordered_at, x.order_id LIMIT 3 LOOP
		left_over := (SELECT b.spendable FROM crm.wallet_balance(customer, o.ordered_at) b);
		pay := LEAST(o.net_amount, left_over);
		EXIT WHEN pay <= 0;
		key := pg_catalog.format('sample:wallet:%s:%s', customer, o.order_id);
		IF o.n = 1 AND crm.sample_uniform(seed, 215, customer) < 0.2 THEN
			PERFORM crm.wallet_hold(customer, left_over, key || ':hold', 'pos:' || o.order_id, at => o.ordered_at - interval '5 minutes');
			PERFORM crm.wallet_capture(key || ':hold', pay, o.order_id, o.ordered_at);
		ELSE
			PERFORM crm.wallet_pay(customer, pay, key, o.order_id, at => o.ordered_at);
		END IF;
	END LOOP;
	left_over := (SELECT b.spendable FROM crm.wallet_balance(customer, at - interval '2 days') b);
	IF left_over >= 20.00 AND crm.sample_uniform(seed, 216, customer) < 0.1 THEN
		PERFORM crm.wallet_hold(customer, 20.00, 'sample:wallet:open:' || customer, 'pos:never-finished',
			ttl => interval '1 hour', at => at - interval '2 days');
	END IF;
END
$$;
COMMENT ON FUNCTION crm.sample_wallet_member(integer, bigint, timestamptz, timestamptz) IS
	'Internal (sample data): one member''s stored value for crm.generate_sample_activity: a top-up, payments and POS holds for orders, an unfinished hold';

CREATE FUNCTION crm.generate_sample_activity(seed integer DEFAULT 1, at timestamptz DEFAULT crm.sample_as_of())
RETURNS TABLE (relation text, rows bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- The programme's clock (crm.loyalty_now) is moved to "at" below while the
-- activity runs, so that what a backdated redemption may spend does not
-- depend on the day it is made; this clause gives the caller's value back
-- when the function returns.  (A superuser setting: so is sample data.)
SET crm.loyalty_now = ''
-- Many small statements, some of them in triggers planned for bulk loads:
-- compiling them would cost more than running them.
SET jit = off
AS $$
DECLARE
	-- The activity's templates and rewards, by name: their presence means it ran.
	template_names constant text[] := ARRAY['win-back 15%', 'free delivery (gold, black)', '5 off 40',
		'member voucher 10 off 50', 'reward: tote bag', 'reward: in-store coffee', 'reward: cinema 20 off',
		'reward: limited-edition thermos'];
	reward_names constant text[] := ARRAY['tote bag', 'in-store coffee', 'cinema 20 off', 'limited-edition thermos'];
	-- When things happen, before "at" (normally the sample's end): days and
	-- months counted in UTC, not in the session's time zone, whose
	-- daylight-saving changes would move them by an hour.
	at_utc constant timestamp := at AT TIME ZONE 'UTC';
	voucher_at constant timestamptz := (at_utc - interval '75 days') AT TIME ZONE 'UTC';
	win_back_at constant timestamptz := (at_utc - interval '60 days') AT TIME ZONE 'UTC';
	lapsed_from constant timestamptz := (at_utc - interval '240 days') AT TIME ZONE 'UTC';
	lapsed_until constant timestamptz := (at_utc - interval '150 days') AT TIME ZONE 'UTC';
	benefit_at constant timestamptz := (at_utc - interval '1 month') AT TIME ZONE 'UTC';
	rewards_from constant timestamptz := (at_utc - interval '30 days') AT TIME ZONE 'UTC';
	five_off_at constant timestamptz := (at_utc - interval '8 days') AT TIME ZONE 'UTC';
	last_week constant timestamptz := (at_utc - interval '7 days') AT TIME ZONE 'UTC';
	thermos_stock integer;
	t_win_back integer;
	t_delivery integer;
	t_five_off integer;
	t_voucher integer;
	r_tote integer;
	r_coffee integer;
	r_cinema integer;
	r_thermos integer;
	journal_from bigint;
	n_refunded bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.generate_sample_activity()');
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM crm.loyalty_account a) THEN
		RAISE EXCEPTION 'crm.generate_sample_activity needs sample data with loyalty accounts'
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Run crm.generate_sample first.';
	END IF;
	IF EXISTS (SELECT 1 FROM crm.coupon_template t WHERE t.name = ANY (template_names))
	   OR EXISTS (SELECT 1 FROM crm.reward r WHERE r.name = ANY (reward_names)) THEN
		RAISE EXCEPTION 'crm.generate_sample_activity has run already: its coupon templates or rewards exist'
			USING ERRCODE = 'CR005',
			      DETAIL = 'The activity is made once per sample, so that the same seed gives the same activity.',
			      HINT = 'Generate a fresh sample (crm.generate_sample in a new database) to make it again.';
	END IF;
	PERFORM pg_catalog.set_config('crm.loyalty_now',
		pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00"'), true);
	journal_from := (SELECT COALESCE(pg_catalog.max(j.journal_id), 0) FROM crm.points_journal j);

	-- The catalogue ------------------------------------------------------------
	INSERT INTO crm.coupon_template (name, kind, percent_off, max_discount, min_spend, valid_days, per_customer_limit)
	VALUES ('win-back 15%', 'percent_off', 15.00, 20.00, 30.00, 30, 1)
	RETURNING template_id INTO t_win_back;
	INSERT INTO crm.coupon_template (name, kind, valid_days)
	VALUES ('free delivery (gold, black)', 'free_delivery', 31)
	RETURNING template_id INTO t_delivery;
	INSERT INTO crm.tier_benefit_coupon (benefit, template_id, every) VALUES ('free_delivery', t_delivery, 'month');
	INSERT INTO crm.coupon_template (name, kind, amount_off, min_spend, valid_days)
	VALUES ('5 off 40', 'amount_off', 5.00, 40.00, 14)
	RETURNING template_id INTO t_five_off;
	-- valid five years, as gift vouchers often must be; a refunded order
	-- gives it back
	INSERT INTO crm.coupon_template (name, kind, amount_off, min_spend, valid_days, per_customer_limit, restore_on_refund)
	VALUES ('member voucher 10 off 50', 'amount_off', 10.00, 50.00, 1825, 1, true)
	RETURNING template_id INTO t_voucher;
	-- Rewards, each handed over as a coupon of its own template; the
	-- catalogue opens 30 days before "at", the thermos with one piece for
	-- every 400 members (it runs out).
	thermos_stock := GREATEST(1, (SELECT pg_catalog.count(*) FROM crm.loyalty_account a) / 400);
	WITH t AS (
		INSERT INTO crm.coupon_template (name, kind, amount_off, gift_sku, valid_days)
		VALUES ('reward: tote bag', 'gift_item', NULL, 'REWARD-TOTE', 90),
		       ('reward: in-store coffee', 'gift_item', NULL, 'SERVICE-COFFEE', 30),
		       ('reward: cinema 20 off', 'amount_off', 20.00, NULL, 90),
		       ('reward: limited-edition thermos', 'gift_item', NULL, 'REWARD-THERMOS', 90)
		RETURNING template_id, name)
	INSERT INTO crm.reward (name, kind, points_price, template_id, stock, per_customer_limit, eligible_tiers, valid_from)
	SELECT r.name, r.kind, r.price, t.template_id, r.stock, r.lim, r.tiers, rewards_from
	FROM (VALUES ('tote bag', 'goods', 300, NULL::bigint, 2, NULL::text[]),
	             ('in-store coffee', 'service', 150, NULL, NULL, NULL),
	             ('cinema 20 off', 'partner', 800, NULL, 1, '{silver,gold,black}'),
	             ('limited-edition thermos', 'goods', 500, thermos_stock, 1, NULL)) AS r(name, kind, price, stock, lim, tiers)
	JOIN t ON t.name = 'reward: ' || r.name
	ORDER BY t.template_id;
	SELECT pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'tote bag'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'in-store coffee'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'cinema 20 off'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'limited-edition thermos')
	INTO r_tote, r_coffee, r_cinema, r_thermos
	FROM crm.reward r;

	-- Members: golden customers with an account, their points at "at" and
	-- their last order before it -------------------------------------------------
	IF pg_catalog.to_regclass('pg_temp.crm_activity_member') IS NOT NULL THEN
		DROP TABLE pg_temp.crm_activity_member;
	END IF;
	CREATE TEMP TABLE crm_activity_member AS
	SELECT a.customer_id, a.tier, crm.ledger_balance(a.ledger, at) AS balance, o.last_order_at,
	       NULL::timestamptz AS spent_at
	FROM crm.loyalty_account a
	JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
	CROSS JOIN LATERAL (SELECT pg_catalog.max(x.ordered_at) AS last_order_at FROM crm.orders x
	                    WHERE x.customer_id = a.customer_id AND x.ordered_at < at) o
	WHERE o.last_order_at IS NOT NULL;
	ALTER TABLE pg_temp.crm_activity_member ADD PRIMARY KEY (customer_id);
	-- The statements below start from the members and reach the sample's
	-- orders through their customer index, whatever the statistics of
	-- tables loaded a moment ago say.
	ANALYZE pg_temp.crm_activity_member;

	-- Coupons: issued to audiences --------------------------------------------------
	-- Win-back: shoppers who lapsed lately (bought 90 to 180 days before the
	-- campaign, not since), 60 days before "at".
	PERFORM crm.issue_coupons(t_win_back, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m
		WHERE EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id AND o.status = 'paid'
		              AND o.ordered_at >= lapsed_from AND o.ordered_at < lapsed_until)
		  AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id
		                  AND o.ordered_at >= lapsed_until AND o.ordered_at < win_back_at)
		ORDER BY 1), win_back_at);
	-- Member vouchers: silver and up, 75 days before "at".
	PERFORM crm.issue_coupons(t_voucher, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m JOIN crm.tier t ON t.tier = m.tier
		WHERE t.rank >= 2 ORDER BY 1), voucher_at);
	-- "5 off 40": shoppers of the final week, issued the day before it.
	PERFORM crm.issue_coupons(t_five_off, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m
		WHERE EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id AND o.status = 'paid'
		              AND o.ordered_at >= last_week AND o.ordered_at < at)
		ORDER BY 1), five_off_at);
	-- Free delivery, a monthly benefit of gold and black: the tick task
	-- tier_benefits, as it ran at the start of the last month.
	PERFORM crm.tier_benefits(benefit_at);

	-- Coupons: redeemed on orders ----------------------------------------------------
	-- Each coupon on the first paid order it fits (the last one for "5 off
	-- 40"), by some of its holders; one coupon per order (all are
	-- exclusive): the earlier campaign's coupon wins an order both fit.
	PERFORM crm.redeem_coupon(x.code, x.customer_id, x.order_id, x.ordered_at)
	FROM (
		SELECT y.code, y.customer_id, y.order_id, y.ordered_at, y.coupon_id
		FROM (
			SELECT k.code, k.customer_id, k.coupon_id, o.order_id, o.ordered_at,
			       pg_catalog.row_number() OVER (PARTITION BY o.order_id ORDER BY k.issued_at, k.coupon_id) AS nth
			FROM crm.coupon k
			JOIN crm.coupon_template t ON t.template_id = k.template_id
			CROSS JOIN LATERAL (
				SELECT p.order_id, p.ordered_at FROM crm.orders p
				WHERE p.customer_id = k.customer_id AND p.status = 'paid' AND p.net_amount >= t.min_spend AND p.net_amount > 0
				  AND p.ordered_at >= k.valid_from AND p.ordered_at < LEAST(k.valid_until, at)
				  AND (t.kind <> 'free_delivery' OR p.channel <> 'pos')
				ORDER BY CASE WHEN t.template_id = t_five_off THEN p.ordered_at END DESC, p.ordered_at, p.order_id
				LIMIT 1) o
			WHERE k.template_id IN (t_win_back, t_voucher, t_five_off, t_delivery)
			  AND crm.sample_uniform(seed, 200 + CASE k.template_id WHEN t_win_back THEN 0 WHEN t_voucher THEN 1
			                                              WHEN t_five_off THEN 2 ELSE 3 END, k.customer_id)
			      < CASE k.template_id WHEN t_win_back THEN 0.7 WHEN t_voucher THEN 0.6 WHEN t_five_off THEN 0.65 ELSE 0.8 END
		) y
		WHERE y.nth = 1
		ORDER BY y.ordered_at, y.coupon_id
	) x;

	-- Points redeemed ----------------------------------------------------------------
	-- 15% of members with points spend 40-100% of them, at a time between
	-- their last order (so the points exist) and "at".
	UPDATE pg_temp.crm_activity_member m
	SET spent_at = GREATEST(m.last_order_at, pg_catalog.date_trunc('second', m.last_order_at
	               + pg_catalog.date_part('epoch', at - m.last_order_at) * crm.sample_uniform(seed, 203, m.customer_id) * interval '1 second', 'UTC'))
	WHERE m.balance >= 20 AND crm.sample_uniform(seed, 201, m.customer_id) < 0.15;
	PERFORM crm.redeem_points(m.customer_id,
	                          GREATEST(1, pg_catalog.floor(m.balance * (0.4 + 0.6 * crm.sample_uniform(seed, 202, m.customer_id))))::bigint,
	                          'sample:redeem:' || m.customer_id, m.spent_at)
	FROM (SELECT * FROM pg_temp.crm_activity_member x WHERE x.spent_at IS NOT NULL ORDER BY x.customer_id) m;

	-- Rewards exchanged --------------------------------------------------------------
	-- A tenth of the members with 150 points or more left take one reward in
	-- the catalogue's month: the cinema coupon (800, silver and up), the
	-- thermos (500) while it lasts (first come, first served; later ones take
	-- a tote bag), tote bags (300), or coffees (150), as they can pay.
	UPDATE pg_temp.crm_activity_member m
	SET balance = crm.ledger_balance(a.ledger, at)
	FROM crm.loyalty_account a
	WHERE a.customer_id = m.customer_id AND m.spent_at IS NOT NULL;
	PERFORM crm.exchange_points(z.customer_id, z.reward_id, z.qty, 'sample:exchange:' || z.customer_id, z.ex_at)
	FROM (
		SELECT y.customer_id, y.ex_at,
		       CASE WHEN y.choice = 'thermos' AND y.nth > thermos_stock THEN r_tote
		            ELSE (ARRAY[r_thermos, r_cinema, r_tote, r_coffee])[pg_catalog.array_position(ARRAY['thermos', 'cinema', 'tote', 'coffee'], y.choice)] END AS reward_id,
		       CASE WHEN y.choice = 'thermos' AND y.nth > thermos_stock THEN 1
		            -- as many as they can pay for, up to the limit
		            WHEN y.choice = 'tote' THEN 1 + pg_catalog.floor(crm.sample_uniform(seed, 209, y.customer_id) * LEAST(2, y.balance / 300))::integer
		            WHEN y.choice = 'coffee' THEN 1 + pg_catalog.floor(crm.sample_uniform(seed, 209, y.customer_id) * LEAST(3, y.balance / 150))::integer
		            ELSE 1 END AS qty
		FROM (
			SELECT w.*, pg_catalog.row_number() OVER (PARTITION BY w.choice ORDER BY w.ex_at, w.customer_id) AS nth
			FROM (
				SELECT m.customer_id, m.balance,
				       GREATEST(s.from_at, pg_catalog.date_trunc('second', s.from_at + pg_catalog.date_part('epoch', at - s.from_at)
				                                              * crm.sample_uniform(seed, 210, m.customer_id) * interval '1 second', 'UTC')) AS ex_at,
				       CASE WHEN m.balance >= 800 AND m.tier = ANY ('{silver,gold,black}'::text[]) AND crm.sample_uniform(seed, 207, m.customer_id) < 0.5 THEN 'cinema'
				            WHEN m.balance >= 500 AND crm.sample_uniform(seed, 206, m.customer_id) < 0.8 THEN 'thermos'
				            WHEN m.balance >= 300 AND crm.sample_uniform(seed, 208, m.customer_id) < 0.7 THEN 'tote'
				            ELSE 'coffee' END AS choice
				FROM pg_temp.crm_activity_member m
				CROSS JOIN LATERAL (SELECT GREATEST(rewards_from, m.last_order_at, m.spent_at) AS from_at) s
				WHERE m.balance >= 150 AND crm.sample_uniform(seed, 205, m.customer_id) < 0.1
			) w
		) y
		ORDER BY y.ex_at, y.customer_id
	) z;

	-- Stored value -----------------------------------------------------------------
	-- One member in twenty who ordered in the half year before "at" tops up
	-- 100, 200 (10 bonus) or 500 (60 bonus; bonus valid 90 days, so some
	-- of it expires by "at") a day before that half year's first order,
	-- then pays for up to three of the orders after it with the wallet, as
	-- far as it reaches; a fifth of them pay the first at a POS that holds
	-- the wallet and captures the order's amount; one in ten leaves a hold
	-- of an order never finished two days before "at" (the tick releases
	-- it).  Keys sample:wallet:...
	PERFORM crm.sample_wallet_member(seed, m.customer_id, m.first_at, at)
	FROM (SELECT x.customer_id, pg_catalog.min(o.ordered_at) AS first_at
	      FROM pg_temp.crm_activity_member x
	      JOIN crm.orders o ON o.customer_id = x.customer_id AND o.status = 'paid'
	                       AND o.ordered_at >= at - interval '4380 hours' AND o.ordered_at < at
	      WHERE crm.sample_uniform(seed, 213, x.customer_id) < 0.05
	      GROUP BY 1 ORDER BY 1) m;

	-- Consent and journeys -------------------------------------------------------
	-- Six customers in ten opt in to SMS marketing when they register (on
	-- the app, at the till or on the web), three in ten to e-mail; one in
	-- ten of the SMS ones replies STOP later.  The journeys are the
	-- programme's: crm.tick (the demo runs it at the sample's end) enters
	-- customers and queues their messages.
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	SELECT c.customer_id, v.channel, 'marketing', true, COALESCE(c.channel, 'pos'), c.created_at
	FROM crm.customer c
	CROSS JOIN (VALUES ('sms', 218, 0.6), ('email', 219, 0.3)) v(channel, stream, share)
	WHERE crm.sample_uniform(seed, v.stream, c.customer_id) < v.share AND c.created_at < at
	ORDER BY c.customer_id, v.channel;
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	SELECT c.customer_id, 'sms', 'marketing', false, 'sms STOP',
	       c.created_at + (at - c.created_at) * crm.sample_uniform(seed, 221, c.customer_id)
	FROM crm.customer c
	WHERE crm.sample_uniform(seed, 218, c.customer_id) < 0.6 AND crm.sample_uniform(seed, 220, c.customer_id) < 0.1
	  AND c.created_at < at
	ORDER BY c.customer_id;
	WITH j AS (
		INSERT INTO crm.journey (name, entry, entry_days, entry_hours, exit_on_purchase, control_percent, reentry_after)
		VALUES ('win_back', 'dormant', 120, NULL, true, 10, '180 days'),
		       ('cart_reminder', 'cart_abandoned', NULL, 4, true, 0, '7 days'),
		       ('birthday', 'birthday', 14, NULL, false, 0, '300 days'),
		       ('points_expiring', 'points_expiring', 45, NULL, false, 0, '25 days')
		RETURNING journey_id, name)
	INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template, coupon_template, points)
	SELECT j.journey_id, s.step_no, s.kind, s.channel, s.template, CASE WHEN s.kind = 'coupon' THEN t_win_back END, s.points
	FROM j JOIN (VALUES ('win_back', 1, 'send', 'sms', 'we miss you: 15% off', NULL::bigint),
	                    ('win_back', 2, 'coupon', NULL, NULL, NULL),
	                    ('cart_reminder', 1, 'send', 'sms', 'your cart is waiting', NULL),
	                    ('birthday', 1, 'send', 'sms', 'happy birthday', NULL),
	                    ('birthday', 2, 'points', NULL, NULL, 200),
	                    ('points_expiring', 1, 'send', 'email', 'your points expire soon', NULL)) s(name, step_no, kind, channel, template, points)
	  ON s.name = j.name
	ORDER BY j.journey_id, s.step_no;

	-- A campaign a month before "at": a message to the customers tagged
	-- fresh_lover or frequent, a fifth of them held out, its effect measured
	-- over the 14 days after (the sample's orders were made without it, so
	-- its uplift is noise: the report shows how wide the interval is).
	INSERT INTO crm.campaign (name, audience, channel, template, send_at, control_percent, measure_for)
	VALUES ('fresh_week', 'fresh_lover or frequent', 'sms', 'fresh week: new arrivals', (at_utc - interval '30 days') AT TIME ZONE 'UTC', 20, '14 days');
	PERFORM crm.campaign_send(x.campaign_id, x.send_at) FROM crm.campaign x WHERE x.name = 'fresh_week';

	-- Refunds after all that -----------------------------------------------------------
	-- A tenth of the members who spent points (at the till or for a reward)
	-- return their biggest paid order of the year before they spent them:
	-- the order's points are clawed back, as debt where they are spent
	-- already.  Half the orders a member voucher was used on are
	-- returned too: the voucher comes back (restore_on_refund); so is one
	-- in ten orders paid with the wallet (its payment goes back to the
	-- wallet).  One statement, as a returns batch would be.
	UPDATE crm.orders o SET status = 'refunded'
	WHERE o.order_id IN (
		SELECT b.order_id
		FROM (SELECT m.customer_id, LEAST(m.spent_at, e.at) AS spent_at
		      FROM pg_temp.crm_activity_member m
		      LEFT JOIN crm.reward_exchange e ON e.idempotency_key = 'sample:exchange:' || m.customer_id
		      WHERE (m.spent_at IS NOT NULL OR e.exchange_id IS NOT NULL)
		        AND crm.sample_uniform(seed, 211, m.customer_id) < 0.1) s
		CROSS JOIN LATERAL (
			SELECT p.order_id FROM crm.orders p
			WHERE p.customer_id = s.customer_id AND p.status = 'paid'
			  AND p.ordered_at >= s.spent_at - interval '8760 hours' AND p.ordered_at < s.spent_at
			ORDER BY p.net_amount DESC, p.order_id LIMIT 1) b
		UNION
		SELECT k.order_id FROM crm.coupon k
		WHERE k.template_id = t_voucher AND k.status = 'redeemed'
		  AND crm.sample_uniform(seed, 212, k.order_id) < 0.5
		UNION
		SELECT w.order_id FROM crm.wallet_txn w
		WHERE w.kind IN ('pay', 'capture') AND w.idempotency_key LIKE 'sample:wallet:%'
		  AND crm.sample_uniform(seed, 217, w.order_id) < 0.1)
	  AND o.status = 'paid';
	GET DIAGNOSTICS n_refunded = ROW_COUNT;

	DROP TABLE pg_temp.crm_activity_member;
	RETURN QUERY
		SELECT 'crm.coupon_template', (SELECT pg_catalog.count(*) FROM crm.coupon_template t WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.tier_benefit_coupon', 1::bigint
		UNION ALL SELECT 'crm.reward', (SELECT pg_catalog.count(*) FROM crm.reward r WHERE r.name = ANY (reward_names))
		UNION ALL SELECT 'crm.coupon', (SELECT pg_catalog.count(*) FROM crm.coupon k JOIN crm.coupon_template t ON t.template_id = k.template_id
		                                WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.coupon_journal', (SELECT pg_catalog.count(*) FROM crm.coupon_journal j JOIN crm.coupon k ON k.coupon_id = j.coupon_id
		                                        JOIN crm.coupon_template t ON t.template_id = k.template_id
		                                        WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.reward_exchange', (SELECT pg_catalog.count(*) FROM crm.reward_exchange e JOIN crm.reward r ON r.reward_id = e.reward_id
		                                         WHERE r.name = ANY (reward_names))
		UNION ALL SELECT 'crm.points_journal', (SELECT pg_catalog.count(*) FROM crm.points_journal j WHERE j.journal_id > journal_from)
		UNION ALL SELECT 'crm.consent_event', (SELECT pg_catalog.count(*) FROM crm.consent_event)
		UNION ALL SELECT 'crm.journey', (SELECT pg_catalog.count(*) FROM crm.journey)
		UNION ALL SELECT 'crm.campaign_member', (SELECT pg_catalog.count(*) FROM crm.campaign_member)
		UNION ALL SELECT 'crm.wallet_txn', (SELECT pg_catalog.count(*) FROM crm.wallet_txn w WHERE w.idempotency_key LIKE 'sample:wallet:%'
		                                      OR w.idempotency_key LIKE 'order-refund:%')
		UNION ALL SELECT 'crm.orders refunded', n_refunded;
END
$$;
COMMENT ON FUNCTION crm.generate_sample_activity(integer, timestamptz) IS
	'Adds deterministic activity to sample data (after crm.generate_sample, once): coupon templates issued to audiences and redeemed on orders (win-back, member vouchers, "5 off 40", the free-delivery tier benefit), points redemptions, a rewards catalogue and exchanges (a limited reward sells out), wallet top-ups with bonus, payments and POS holds, marketing consents (some revoked), the programme''s journeys (win-back, cart reminder, birthday, points expiring: crm.tick runs them) and a campaign sent a month before "at" with a control group, then refunds of orders after those (points clawed back, debt, vouchers and wallet payments restored); returns rows added per relation (crm.orders: orders refunded). Moves crm.loyalty_now to "at" while it runs (superuser). CR005 when it ran already';
