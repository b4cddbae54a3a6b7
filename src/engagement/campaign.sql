
-- ===========================================================================
-- engagement/campaign.sql: campaigns and their measured effect (issue 17).
--
-- A campaign sends one message (and optionally a coupon) to an audience (a
-- tag expression) once, at send_at: crm.tick sends it, or
-- crm.campaign_send(campaign) at once.  control_percent of the audience,
-- chosen by a stable hash of campaign and golden customer, is held out and
-- recorded, so the effect can be measured: for treated against control,
-- the share who bought within the window after the send, revenue per
-- customer, the uplift with a 95% confidence interval and the incremental
-- revenue (crm.v_campaign_effect; crm.v_journey_effect does the same for
-- journeys with a control group).
-- ===========================================================================

CREATE TABLE crm.campaign (
	campaign_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE CONSTRAINT campaign_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
	audience		text NOT NULL,
	channel			text NOT NULL CONSTRAINT campaign_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL DEFAULT 'marketing' CONSTRAINT campaign_purpose_valid CHECK (purpose IN ('marketing', 'research')),
	template		text NOT NULL,
	coupon_template	integer REFERENCES crm.coupon_template (template_id),
	send_at			timestamptz NOT NULL,
	control_percent	integer NOT NULL DEFAULT 10 CONSTRAINT campaign_control_range CHECK (control_percent BETWEEN 0 AND 50),
	measure_for		interval NOT NULL DEFAULT '14 days' CONSTRAINT campaign_window_positive CHECK (measure_for > interval '0'),
	sent_at			timestamptz
);
COMMENT ON TABLE crm.campaign IS
	'Campaigns: one message (template on channel, for purpose) and optionally a coupon of coupon_template, to the golden customers of audience (a tag expression) at send_at (crm.tick, or crm.campaign_send); control_percent held out; the effect measured over measure_for after the send';
SELECT pg_catalog.pg_extension_config_dump('crm.campaign', '');
SELECT pg_catalog.pg_extension_config_dump('crm.campaign_campaign_id_seq', '');

CREATE TABLE crm.campaign_member (
	campaign_id		integer NOT NULL REFERENCES crm.campaign (campaign_id),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	control			boolean NOT NULL,
	PRIMARY KEY (campaign_id, customer_id)
);
COMMENT ON TABLE crm.campaign_member IS 'Who a campaign was for (golden customers at the send) and whether they were held out (control): the assignment its effect is measured on';
SELECT pg_catalog.pg_extension_config_dump('crm.campaign_member', '');

CREATE FUNCTION crm.campaign_send(campaign integer, at timestamptz DEFAULT pg_catalog.now()) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Once per campaign: the row is locked and sent_at set in the same
-- transaction, so a second call (or a concurrent tick) sends nothing.
-- Messages and coupons are keyed by campaign and customer.  Returns the
-- members recorded (treated and control).
DECLARE
	c crm.campaign;
	n bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.campaign_send()');
	SELECT * INTO c FROM crm.campaign x WHERE x.campaign_id = campaign FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'campaign % does not exist', campaign USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF c.sent_at IS NOT NULL THEN
		RETURN 0;
	END IF;
	INSERT INTO crm.campaign_member (campaign_id, customer_id, control)
	SELECT c.campaign_id, m.customer_id, crm.held_out('campaign', c.name, m.customer_id, c.control_percent)
	FROM crm.audience_members(c.audience) m
	ORDER BY m.customer_id;
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM crm.outbox_enqueue(m.customer_id, c.channel, c.purpose, c.template,
		pg_catalog.jsonb_build_object('campaign', c.name), pg_catalog.format('campaign:%s:%s', c.name, m.customer_id), at,
		'campaign:' || c.name)
	FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id AND NOT m.control ORDER BY m.customer_id;
	IF c.coupon_template IS NOT NULL THEN
		PERFORM crm.issue_coupon(c.coupon_template, m.customer_id, pg_catalog.format('campaign:%s:%s', c.name, m.customer_id), at)
		FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id AND NOT m.control ORDER BY m.customer_id;
	END IF;
	UPDATE crm.campaign x SET sent_at = at WHERE x.campaign_id = c.campaign_id;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.campaign_send(integer, timestamptz) IS
	'Sends a campaign once: records its audience''s golden customers (control_percent held out by a stable hash), queues a message for each of the others (outbox, dedupe key campaign:<name>:<customer>) and issues its coupon; returns the members recorded, 0 when it was sent already; 23503 unknown campaign';

CREATE FUNCTION crm.campaigns_tick(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c integer;
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	FOR c IN SELECT x.campaign_id FROM crm.campaign x WHERE x.sent_at IS NULL AND x.send_at <= at ORDER BY x.send_at, x.campaign_id LOOP
		n := n + crm.campaign_send(c, at);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.campaigns_tick(timestamptz) IS
	'crm.tick task: sends the campaigns due by "at" (crm.campaign_send); returns the members recorded';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('campaigns', 160, 'crm.campaigns_tick(timestamptz)'::regprocedure, true);

-- The effect of a treatment on groups of golden customers (treated and
-- control), each with its window [from, until): customers, buyers, revenue
-- of paid orders (net of refunds), and the comparison.
CREATE FUNCTION crm.treatment_effect(members bigint[], held_out boolean[], from_at timestamptz, until_at timestamptz)
RETURNS TABLE (treated bigint, control bigint, treated_buyers bigint, control_buyers bigint,
	treated_rate numeric, control_rate numeric, uplift numeric, uplift_low numeric, uplift_high numeric,
	treated_revenue_per_customer numeric, control_revenue_per_customer numeric, incremental_revenue numeric)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH g AS (
		SELECT u.m AS customer_id, u.h AS control,
		       EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(u.m) AND o.status = 'paid'
		               AND o.ordered_at >= from_at AND o.ordered_at < until_at) AS bought,
		       (SELECT COALESCE(pg_catalog.sum(o.net_amount), 0) FROM crm.orders o WHERE o.customer_id = crm.golden_customer(u.m)
		        AND o.status = 'paid' AND o.ordered_at >= from_at AND o.ordered_at < until_at) AS revenue
		FROM ROWS FROM (pg_catalog.unnest(members), pg_catalog.unnest(held_out)) u(m, h)),
	s AS (
		SELECT pg_catalog.count(*) FILTER (WHERE NOT g.control) AS nt, pg_catalog.count(*) FILTER (WHERE g.control) AS nc,
		       pg_catalog.count(*) FILTER (WHERE NOT g.control AND g.bought) AS bt, pg_catalog.count(*) FILTER (WHERE g.control AND g.bought) AS bc,
		       COALESCE(pg_catalog.sum(g.revenue) FILTER (WHERE NOT g.control), 0) AS rt, COALESCE(pg_catalog.sum(g.revenue) FILTER (WHERE g.control), 0) AS rc
		FROM g),
	r AS (
		SELECT s.*, s.bt::numeric / NULLIF(s.nt, 0) AS pt, s.bc::numeric / NULLIF(s.nc, 0) AS pc FROM s)
	SELECT r.nt, r.nc, r.bt, r.bc, pg_catalog.round(r.pt, 4), pg_catalog.round(r.pc, 4), pg_catalog.round(r.pt - r.pc, 4),
	       -- normal approximation of the difference of two proportions, 95%
	       pg_catalog.round(r.pt - r.pc - 1.96 * pg_catalog.sqrt(r.pt * (1 - r.pt) / r.nt + r.pc * (1 - r.pc) / r.nc), 4),
	       pg_catalog.round(r.pt - r.pc + 1.96 * pg_catalog.sqrt(r.pt * (1 - r.pt) / r.nt + r.pc * (1 - r.pc) / r.nc), 4),
	       pg_catalog.round(r.rt / NULLIF(r.nt, 0), 2), pg_catalog.round(r.rc / NULLIF(r.nc, 0), 2),
	       pg_catalog.round((r.rt / NULLIF(r.nt, 0) - r.rc / NULLIF(r.nc, 0)) * r.nt, 2)
	FROM r;
END;
COMMENT ON FUNCTION crm.treatment_effect(bigint[], boolean[], timestamptz, timestamptz) IS
	'Treated against control (held_out) golden customers over [from_at, until_at): sizes, buyers, conversion rates, the uplift (treated rate - control rate) with a 95% confidence interval (normal approximation), revenue per customer (paid orders, net of refunds) and the incremental revenue ((treated - control revenue per customer) x treated); NULL where a group is empty';

CREATE VIEW crm.v_campaign_effect AS
SELECT c.campaign_id, c.name, c.sent_at, c.measure_for, e.*
FROM crm.campaign c
CROSS JOIN LATERAL crm.treatment_effect(
	ARRAY(SELECT m.customer_id FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id ORDER BY m.customer_id),
	ARRAY(SELECT m.control FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id ORDER BY m.customer_id),
	c.sent_at, c.sent_at + c.measure_for) e
WHERE c.sent_at IS NOT NULL;
COMMENT ON VIEW crm.v_campaign_effect IS
	'Per sent campaign, treated against control over measure_for after the send: conversion rates, uplift with a 95% confidence interval, revenue per customer, incremental revenue (crm.treatment_effect)';

CREATE VIEW crm.v_journey_effect AS
SELECT j.journey_id, j.name, e.*
FROM crm.journey j
CROSS JOIN LATERAL (
	-- each enrollment measured over the 30 days after its entry
	SELECT pg_catalog.count(*) FILTER (WHERE x.status <> 'control') AS treated,
	       pg_catalog.count(*) FILTER (WHERE x.status = 'control') AS control,
	       pg_catalog.round(pg_catalog.avg(x.bought::integer) FILTER (WHERE x.status <> 'control'), 4) AS treated_rate,
	       pg_catalog.round(pg_catalog.avg(x.bought::integer) FILTER (WHERE x.status = 'control'), 4) AS control_rate,
	       pg_catalog.round(pg_catalog.avg(x.revenue) FILTER (WHERE x.status <> 'control'), 2) AS treated_revenue_per_customer,
	       pg_catalog.round(pg_catalog.avg(x.revenue) FILTER (WHERE x.status = 'control'), 2) AS control_revenue_per_customer
	FROM (SELECT en.status,
	             EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(en.customer_id) AND o.status = 'paid'
	                     AND o.ordered_at >= en.entered_at AND o.ordered_at < en.entered_at + interval '30 days') AS bought,
	             (SELECT COALESCE(pg_catalog.sum(o.net_amount), 0) FROM crm.orders o WHERE o.customer_id = crm.golden_customer(en.customer_id)
	              AND o.status = 'paid' AND o.ordered_at >= en.entered_at AND o.ordered_at < en.entered_at + interval '30 days') AS revenue
	      FROM crm.journey_enrollment en WHERE en.journey_id = j.journey_id) x) e
WHERE j.control_percent > 0;
COMMENT ON VIEW crm.v_journey_effect IS
	'Per journey with a control group: entrants treated and held out, the share who bought and revenue per customer in the 30 days after entering';
