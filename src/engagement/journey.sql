
-- ===========================================================================
-- engagement/journey.sql: journeys (issue 17).
--
-- A journey is an entry trigger, an optional audience (a tag expression),
-- and numbered steps: send a message (to the outbox), issue a coupon, award
-- points, wait, branch on "purchased since entry".  A customer enters once
-- per occasion (crm.journey_enrollment is UNIQUE on journey, customer and
-- occasion), so a journey cannot enter or send twice: every step's effect
-- carries a key made of the enrollment and the step.
--
-- Entries:
--   first_purchase   in the order's transaction (trigger on crm.orders)
--   birthday         entry_days before the birthday (occasion: the year)
--   points_expiring  points expire within entry_days (occasion: the month)
--   dormant          no order for entry_days (occasion: the last order's time)
--   cart_abandoned   a cart event without a checkout event or an order
--                    within entry_hours (occasion: the cart event)
--   member_day       on day entry_days of the month, every member with a
--                    loyalty account (occasion: the month)
--   tier_up, tier_down  a tier raised or lowered within the last
--                    entry_days (occasion: the change)
--   replenishment_due  a staple due within entry_days (crm.replenishment_due;
--                    occasion: the sku and its expected day)
--   post_purchase    entry_days after a paid order, within a week (a survey;
--                    occasion: the order)
-- the time-driven ones in crm.tick (task journeys), idempotently.  A
-- purchase ends the active enrollments of journeys with exit_on_purchase
-- in the purchase's own transaction.  The audience is checked when the
-- enrollment's first step is due (time-driven entrants must be in it to
-- enter at all); control_percent of the entrants, chosen by
-- a hash of journey and golden customer, are held out (recorded, no step
-- runs) so the journey's effect can be measured.
-- ===========================================================================

CREATE TABLE crm.journey (
	journey_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE CONSTRAINT journey_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
	entry			text NOT NULL CONSTRAINT journey_entry_valid
					CHECK (entry IN ('first_purchase', 'birthday', 'points_expiring', 'dormant', 'cart_abandoned',
					                 'member_day', 'tier_up', 'tier_down', 'replenishment_due', 'post_purchase')),
	entry_days		integer CONSTRAINT journey_entry_days_range CHECK (entry_days BETWEEN 0 AND 3650),
	entry_hours		integer CONSTRAINT journey_entry_hours_range CHECK (entry_hours BETWEEN 1 AND 720),
	audience		text,
	reentry_after	interval CONSTRAINT journey_reentry_positive CHECK (reentry_after > interval '0'),
	exit_on_purchase boolean NOT NULL DEFAULT false,
	control_percent	integer NOT NULL DEFAULT 0 CONSTRAINT journey_control_range CHECK (control_percent BETWEEN 0 AND 50),
	enabled			boolean NOT NULL DEFAULT true,
	CONSTRAINT journey_entry_params CHECK (
		CASE entry WHEN 'first_purchase' THEN entry_days IS NULL AND entry_hours IS NULL
		           WHEN 'cart_abandoned' THEN entry_hours IS NOT NULL AND entry_days IS NULL
		           ELSE entry_days IS NOT NULL AND entry_hours IS NULL END),
	CONSTRAINT journey_member_day_valid CHECK (entry <> 'member_day' OR entry_days BETWEEN 1 AND 31)
);
COMMENT ON TABLE crm.journey IS
	'Journeys: an entry trigger (first_purchase; birthday, points_expiring, dormant, replenishment_due with entry_days; member_day on day entry_days of the month; tier_up, tier_down within entry_days of the change; post_purchase entry_days after a paid order; cart_abandoned with entry_hours), an audience (tag expression, NULL: everyone), re-entry (reentry_after; NULL: never again), exit_on_purchase, a control group (control_percent of entrants held out), and the steps in crm.journey_step';
SELECT pg_catalog.pg_extension_config_dump('crm.journey', '');
SELECT pg_catalog.pg_extension_config_dump('crm.journey_journey_id_seq', '');

CREATE TABLE crm.journey_step (
	journey_id		integer NOT NULL REFERENCES crm.journey (journey_id) ON DELETE CASCADE,
	step_no			integer NOT NULL CONSTRAINT journey_step_no_positive CHECK (step_no >= 1),
	kind			text NOT NULL CONSTRAINT journey_step_kind_valid CHECK (kind IN ('send', 'coupon', 'points', 'wait', 'branch_purchased')),
	channel			text CONSTRAINT journey_step_channel_valid CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL DEFAULT 'marketing' CONSTRAINT journey_step_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	template		text,
	coupon_template	integer REFERENCES crm.coupon_template (template_id),
	points			bigint CONSTRAINT journey_step_points_positive CHECK (points > 0),
	wait			interval CONSTRAINT journey_step_wait_positive CHECK (wait > interval '0'),
	if_purchased_goto integer,
	PRIMARY KEY (journey_id, step_no),
	CONSTRAINT journey_step_fields CHECK (
		CASE kind WHEN 'send' THEN channel IS NOT NULL AND template IS NOT NULL
		          WHEN 'coupon' THEN coupon_template IS NOT NULL
		          WHEN 'points' THEN points IS NOT NULL
		          WHEN 'wait' THEN wait IS NOT NULL
		          ELSE true END)
);
COMMENT ON TABLE crm.journey_step IS
	'The steps of a journey in step_no order: send (channel, purpose, template: a message to the outbox), coupon (coupon_template), points (points awarded), wait (wait), branch_purchased (to if_purchased_goto when the customer bought since entering, NULL: the journey ends; else on to the next step)';
SELECT pg_catalog.pg_extension_config_dump('crm.journey_step', '');

CREATE SEQUENCE crm.journey_enrollment_id_seq;
CREATE TABLE crm.journey_enrollment (
	enrollment_id	bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.journey_enrollment_id_seq'),
	journey_id		integer NOT NULL REFERENCES crm.journey (journey_id),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	occasion		text NOT NULL,
	entered_at		timestamptz NOT NULL,
	status			text NOT NULL CONSTRAINT journey_enrollment_status_valid CHECK (status IN ('active', 'done', 'exited', 'control')),
	next_step		integer,
	next_at			timestamptz,
	ended_at		timestamptz,
	end_reason		text,
	CONSTRAINT journey_enrollment_once UNIQUE (journey_id, customer_id, occasion),
	CONSTRAINT journey_enrollment_next CHECK ((status = 'active') = (next_step IS NOT NULL AND next_at IS NOT NULL))
);
CREATE INDEX journey_enrollment_due_idx ON crm.journey_enrollment (next_at) WHERE status = 'active';
CREATE INDEX journey_enrollment_customer_idx ON crm.journey_enrollment (customer_id) WHERE status = 'active';
COMMENT ON TABLE crm.journey_enrollment IS
	'One row per journey, golden customer and occasion (the unique key: a journey cannot enter or send twice for one occasion): active with its next step and when it is due, done, exited (end_reason: purchase, not in audience, merged) or control (held out)';
SELECT pg_catalog.pg_extension_config_dump('crm.journey_enrollment', '');
SELECT pg_catalog.pg_extension_config_dump('crm.journey_enrollment_id_seq', '');

-- Is golden customer g held out of a campaign or journey: a stable hash of
-- the kind, the name and the customer, below percent of 100 (the same
-- customer is not always held out of everything; names, not ids, so that
-- the same set-up holds out the same customers).
CREATE FUNCTION crm.held_out(kind text, name text, g bigint, percent integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN percent > 0
   AND pg_catalog.abs(pg_catalog.hashtextextended(kind || ':' || name || ':' || g::text, 17)) % 100 < percent;
COMMENT ON FUNCTION crm.held_out(text, text, bigint, integer) IS
	'Whether a golden customer is in the control group of a campaign or journey (kind, name): a stable hash below percent of 100';

-- Enters golden customers (with their occasions) into journey j, each at
-- its time: one row per occasion, and only if re-entry allows it (never
-- again without reentry_after; else after that long since the last entry).
-- Returns how many entered.
CREATE FUNCTION crm.journey_enter(j crm.journey, customers bigint[], occasions text[], times timestamptz[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	INSERT INTO crm.journey_enrollment (journey_id, customer_id, occasion, entered_at, status, next_step, next_at, ended_at)
	SELECT j.journey_id, u.c, u.o, u.t,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN 'control' ELSE 'active' END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN NULL ELSE 1 END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN NULL ELSE u.t END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN u.t END
	FROM ROWS FROM (pg_catalog.unnest(customers), pg_catalog.unnest(occasions), pg_catalog.unnest(times)) u(c, o, t)
	WHERE NOT EXISTS (
		SELECT 1 FROM crm.journey_enrollment e
		WHERE e.journey_id = j.journey_id AND e.customer_id = u.c
		  AND (j.reentry_after IS NULL OR e.entered_at > u.t - j.reentry_after))
	ORDER BY u.c
	ON CONFLICT ON CONSTRAINT journey_enrollment_once DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.journey_enter(crm.journey, bigint[], text[], timestamptz[]) IS
	'Internal: enrolls golden customers in a journey for their occasions, once per occasion and as re-entry allows; control-group members are recorded as control; returns how many entered';

-- The golden customers a time-driven journey's entry finds at "at", with
-- their occasions.
CREATE FUNCTION crm.journey_candidates(j crm.journey, at timestamptz)
RETURNS TABLE (customer_id bigint, occasion text)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tz text := (SELECT p.time_zone FROM crm.loyalty_program p);
	today date := (at AT TIME ZONE tz)::date;
BEGIN
	IF j.entry = 'birthday' THEN
		-- this year's birthday (Feb 29 on Feb 28 in other years), or next
		-- year's when this year's has passed, within entry_days
		RETURN QUERY
		SELECT c.customer_id, pg_catalog.to_char(b.next_birthday, 'YYYY')
		FROM crm.customer c
		CROSS JOIN LATERAL (
			SELECT CASE WHEN t.this_year >= today THEN t.this_year ELSE t.next_year END AS next_birthday
			FROM (SELECT (c.birthday + pg_catalog.make_interval(years => pg_catalog.date_part('year', today)::integer
			                                                     - pg_catalog.date_part('year', c.birthday)::integer))::date AS this_year,
			             (c.birthday + pg_catalog.make_interval(years => pg_catalog.date_part('year', today)::integer + 1
			                                                     - pg_catalog.date_part('year', c.birthday)::integer))::date AS next_year) t) b
		WHERE c.birthday IS NOT NULL AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		  AND b.next_birthday - today BETWEEN 0 AND j.entry_days;
	ELSIF j.entry = 'points_expiring' THEN
		RETURN QUERY
		SELECT a.customer_id, pg_catalog.to_char(at AT TIME ZONE tz, 'YYYY-MM')
		FROM crm.loyalty_account a
		JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE crm.points_expiring(a.customer_id, pg_catalog.make_interval(days => j.entry_days), at) > 0;
	ELSIF j.entry = 'dormant' THEN
		RETURN QUERY
		SELECT s.customer_id, pg_catalog.to_char(s.last_order_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
		FROM crm.customer_stats s
		JOIN crm.customer c ON c.customer_id = s.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE s.last_order_at <= at - pg_catalog.make_interval(days => j.entry_days);
	ELSIF j.entry = 'member_day' THEN
		IF pg_catalog.date_part('day', today) = j.entry_days THEN
			RETURN QUERY
			SELECT a.customer_id, pg_catalog.to_char(today, 'YYYY-MM')
			FROM crm.loyalty_account a
			JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL;
		END IF;
	ELSIF j.entry IN ('tier_up', 'tier_down') THEN
		RETURN QUERY
		SELECT DISTINCT ON (h.customer_id) crm.golden_customer(h.customer_id), h.tier_history_id::text
		FROM crm.tier_history h
		WHERE h.reason = CASE j.entry WHEN 'tier_up' THEN 'upgrade' ELSE 'downgrade' END
		  AND h.changed_at <= journey_candidates.at AND h.changed_at > journey_candidates.at - pg_catalog.make_interval(days => j.entry_days)
		ORDER BY h.customer_id, h.changed_at DESC, h.tier_history_id DESC;
	ELSIF j.entry = 'replenishment_due' THEN
		RETURN QUERY
		SELECT DISTINCT ON (r.customer_id) r.customer_id, COALESCE(r.sku, r.category) || ':' || pg_catalog.to_char(r.next_expected, 'YYYY-MM-DD')
		FROM crm.replenishment_due(at, pg_catalog.make_interval(days => j.entry_days)) r
		ORDER BY r.customer_id, r.next_expected, r.sku;
	ELSIF j.entry = 'post_purchase' THEN
		RETURN QUERY
		SELECT DISTINCT ON (o.customer_id) o.customer_id, o.order_id::text
		FROM crm.orders o
		JOIN crm.customer c ON c.customer_id = o.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE o.status = 'paid'
		  AND o.ordered_at <= journey_candidates.at - pg_catalog.make_interval(days => j.entry_days)
		  AND o.ordered_at > journey_candidates.at - pg_catalog.make_interval(days => j.entry_days) - interval '7 days'
		ORDER BY o.customer_id, o.ordered_at DESC, o.order_id DESC;
	ELSIF j.entry = 'cart_abandoned' THEN
		-- carts of the last 7 days older than entry_hours with neither a
		-- checkout event nor an order of the customer after them
		RETURN QUERY
		SELECT DISTINCT ON (e.customer_id) e.customer_id, e.event_id::text
		FROM crm.event e
		JOIN crm.customer c ON c.customer_id = e.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE e.kind = 'cart' AND e.at <= journey_candidates.at - pg_catalog.make_interval(hours => j.entry_hours)
		  AND e.at > journey_candidates.at - pg_catalog.make_interval(hours => j.entry_hours) - interval '7 days'
		  AND NOT EXISTS (SELECT 1 FROM crm.event k WHERE k.customer_id = e.customer_id AND k.kind = 'checkout'
		                  AND k.at > e.at AND k.at <= journey_candidates.at)
		  AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = e.customer_id
		                  AND o.ordered_at > e.at AND o.ordered_at <= journey_candidates.at)
		ORDER BY e.customer_id, e.at DESC, e.event_id DESC;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.journey_candidates(crm.journey, timestamptz) IS
	'Internal: the golden customers a time-driven journey entry finds at a time, with their occasions (birthday: the year; points_expiring, member_day: the month; dormant: the last order''s time, UTC; cart_abandoned: the cart event; tier_up, tier_down: the tier change; replenishment_due: the sku and its expected day; post_purchase: the order)';

-- Runs enrollment e's steps that are due at "at", up to the next wait or
-- the end.  Returns how many steps ran.
CREATE FUNCTION crm.journey_run(e crm.journey_enrollment, j crm.journey, at timestamptz,
	OUT ran integer, OUT coupon_templates integer[], OUT coupon_keys text[])
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s crm.journey_step;
	step integer := e.next_step;
	due timestamptz := e.next_at;
	key text;
	ended text;
	goal_after timestamptz;
BEGIN
	ran := 0;
	coupon_templates := '{}';
	coupon_keys := '{}';
	-- The goal: a purchase since entering (one the order's trigger did not
	-- see, being in flight when the enrollment was made), or for a win-back
	-- any purchase after the last order that made the customer dormant (its
	-- occasion).
	IF j.exit_on_purchase THEN
		IF j.entry = 'dormant' THEN
			goal_after := LEAST(e.occasion::timestamptz, e.entered_at);
		ELSE
			goal_after := e.entered_at;
		END IF;
		IF EXISTS (SELECT 1 FROM crm.orders o
		           WHERE o.customer_id = crm.golden_customer(e.customer_id) AND o.status = 'paid' AND o.ordered_at > goal_after) THEN
			ended := 'purchase';
		END IF;
	END IF;
	WHILE ended IS NULL AND due <= at LOOP
		SELECT * INTO s FROM crm.journey_step x WHERE x.journey_id = j.journey_id AND x.step_no = step;
		IF NOT FOUND THEN
			ended := 'done';
			EXIT;
		END IF;
		key := pg_catalog.format('journey:%s:%s:%s', j.name, e.enrollment_id, step);
		step := step + 1;
		CASE s.kind
		WHEN 'send' THEN
			-- a journey with a purchase goal sends nothing to who bought by the
			-- time the message is claimed (the outbox checks it)
			PERFORM crm.outbox_enqueue(e.customer_id, s.channel, s.purpose, s.template,
				pg_catalog.jsonb_build_object('journey', j.name, 'occasion', e.occasion, 'step', s.step_no),
				key, GREATEST(due, at), 'journey:' || j.name, goal_after);
		WHEN 'coupon' THEN
			-- returned to crm.journeys_tick, which issues all of a template at
			-- once (one issue at a time updates the template's counter row
			-- once per coupon in one transaction: quadratic)
			coupon_templates := coupon_templates || s.coupon_template;
			coupon_keys := coupon_keys || key;
		WHEN 'points' THEN
			PERFORM crm.adjust_points(e.customer_id, s.points, 'journey ' || j.name, key, at);
		WHEN 'wait' THEN
			due := due + s.wait;
		WHEN 'branch_purchased' THEN
			IF EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(e.customer_id)
			           AND o.status = 'paid' AND o.ordered_at > e.entered_at AND o.ordered_at <= at) THEN
				step := s.if_purchased_goto;
				IF step IS NULL THEN
					ended := 'done';
				END IF;
			END IF;
		END CASE;
		ran := ran + 1;
	END LOOP;
	IF ended IS NOT NULL THEN
		UPDATE crm.journey_enrollment x
		SET status = CASE ended WHEN 'done' THEN 'done' ELSE 'exited' END, next_step = NULL, next_at = NULL,
		    ended_at = at, end_reason = CASE WHEN ended <> 'done' THEN ended END
		WHERE x.enrollment_id = e.enrollment_id;
	ELSE
		UPDATE crm.journey_enrollment x SET next_step = step, next_at = due WHERE x.enrollment_id = e.enrollment_id;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.journey_run(crm.journey_enrollment, crm.journey, timestamptz) IS
	'Internal: runs an enrollment''s due steps up to the next wait or the end (each step''s effect keyed by journey, enrollment and step, so it happens once); checks the purchase goal before every run; returns how many steps ran and the coupons to issue (template and issue key each), which crm.journeys_tick issues together';

CREATE FUNCTION crm.journeys_tick(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Time-driven entries of every enabled journey, then every active
-- enrollment whose next step is due, oldest first.  Idempotent: entries are
-- unique per occasion, steps keyed.  Returns entries plus steps run.
DECLARE
	j crm.journey;
	e crm.journey_enrollment;
	customers bigint[];
	occasions text[];
	keys text[];
	tpl integer;
	r record;
	n bigint := 0;
	-- the coupon steps of this run (template, customer, issue key), issued together at the end
	c_templates integer[] := '{}';
	c_customers bigint[] := '{}';
	c_keys text[] := '{}';
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	FOR j IN SELECT * FROM crm.journey x WHERE x.enabled ORDER BY x.journey_id LOOP
		-- The audience, evaluated once per journey and tick: entrants of a
		-- time-driven entry must be in it; an enrollment about to take its
		-- first step (an order's first purchase) that is not ends here.
		IF j.entry <> 'first_purchase' THEN
			SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id), pg_catalog.array_agg(c.occasion ORDER BY c.customer_id)
			INTO customers, occasions
			FROM crm.journey_candidates(j, at) c
			WHERE j.audience IS NULL OR c.customer_id IN (SELECT m.customer_id FROM crm.audience_members(j.audience) m);
			IF customers IS NOT NULL THEN
				n := n + crm.journey_enter(j, customers, occasions, pg_catalog.array_fill(at, ARRAY[pg_catalog.cardinality(customers)]));
			END IF;
		END IF;
		IF j.audience IS NOT NULL THEN
			UPDATE crm.journey_enrollment x
			SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = at, end_reason = 'not in audience'
			WHERE x.journey_id = j.journey_id AND x.status = 'active' AND x.next_step = 1 AND x.next_at <= at
			  AND crm.golden_customer(x.customer_id) NOT IN (SELECT m.customer_id FROM crm.audience_members(j.audience) m);
		END IF;
	END LOOP;
	FOR e IN SELECT x.* FROM crm.journey_enrollment x
	         WHERE x.status = 'active' AND x.next_at <= at
	         ORDER BY x.next_at, x.enrollment_id
	         FOR UPDATE SKIP LOCKED LOOP
		SELECT * INTO j FROM crm.journey x WHERE x.journey_id = e.journey_id;
		CONTINUE WHEN NOT j.enabled;
		r := crm.journey_run(e, j, at);
		n := n + r.ran;
		c_templates := c_templates || r.coupon_templates;
		c_customers := c_customers || pg_catalog.array_fill(e.customer_id, ARRAY[pg_catalog.cardinality(r.coupon_templates)]);
		c_keys := c_keys || r.coupon_keys;
	END LOOP;
	FOR tpl IN SELECT DISTINCT u.t FROM pg_catalog.unnest(c_templates) u(t) ORDER BY 1 LOOP
		SELECT pg_catalog.array_agg(crm.golden_customer(u.c) ORDER BY u.k), pg_catalog.array_agg(u.k ORDER BY u.k)
		INTO customers, keys
		FROM ROWS FROM (pg_catalog.unnest(c_templates), pg_catalog.unnest(c_customers), pg_catalog.unnest(c_keys)) u(t, c, k)
		WHERE u.t = tpl;
		PERFORM crm.lock_rows('crm.customer', ARRAY(SELECT DISTINCT u FROM pg_catalog.unnest(customers) u ORDER BY 1), 'SHARE');
		PERFORM crm.coupon_insert(crm.coupon_take_stock(tpl, pg_catalog.cardinality(customers), at), customers, keys, at);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.journeys_tick(timestamptz) IS
	'crm.tick task: time-driven journey entries (birthday, points_expiring, dormant, cart_abandoned) and every due step of active enrollments; idempotent; returns entries plus steps run';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('journeys', 150, 'crm.journeys_tick(timestamptz)'::regprocedure, true);

-- AFTER INSERT statement trigger on crm.orders: a paid order ends its
-- customer's active enrollments in journeys with exit_on_purchase, and a
-- customer's first order enters first_purchase journeys, in the order's
-- own transaction (their first step runs at the next tick).  Touches only
-- the enrollments of the customers of the inserted orders.
CREATE FUNCTION crm.journeys_on_order() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	j crm.journey;
	firsts bigint[];
	times timestamptz[];
	any_exit boolean;
	any_first boolean;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;
	END IF;
	-- one look at the journeys decides what this statement has to do
	SELECT pg_catalog.bool_or(x.exit_on_purchase), pg_catalog.bool_or(x.entry = 'first_purchase')
	INTO any_exit, any_first
	FROM crm.journey x WHERE x.enabled;
	IF any_exit THEN
		UPDATE crm.journey_enrollment e
		SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = n.ordered_at, end_reason = 'purchase'
		FROM (SELECT x.customer_id, pg_catalog.min(x.ordered_at) AS ordered_at FROM crm_new x WHERE x.status = 'paid' GROUP BY 1) n,
		     crm.journey j2
		WHERE e.customer_id = n.customer_id AND e.status = 'active' AND e.entered_at < n.ordered_at
		  AND j2.journey_id = e.journey_id AND j2.exit_on_purchase;
	END IF;
	IF any_first THEN
		-- each customer enters at its first order's time
		SELECT pg_catalog.array_agg(f.customer_id ORDER BY f.customer_id), pg_catalog.array_agg(f.first_at ORDER BY f.customer_id)
		INTO firsts, times
		FROM (SELECT n.customer_id, pg_catalog.min(n.ordered_at) AS first_at FROM crm_new n
		      WHERE n.status = 'paid'
		        AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = n.customer_id
		                        AND o.order_id NOT IN (SELECT y.order_id FROM crm_new y))
		      GROUP BY 1) f;
		IF firsts IS NOT NULL THEN
			FOR j IN SELECT * FROM crm.journey x WHERE x.enabled AND x.entry = 'first_purchase' ORDER BY x.journey_id LOOP
				PERFORM crm.journey_enter(j, firsts, pg_catalog.array_fill('first'::text, ARRAY[pg_catalog.cardinality(firsts)]), times);
			END LOOP;
		END IF;
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.journeys_on_order() IS
	'Trigger: a paid order ends its customer''s active enrollments in journeys with exit_on_purchase (end_reason purchase) and a customer''s first paid order enters first_purchase journeys, in the order''s transaction';
CREATE TRIGGER orders_journeys AFTER INSERT ON crm.orders
	REFERENCING NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.journeys_on_order();

-- Merges: the merged customer's active enrollments go to the survivor,
-- except where the survivor is already active in the same journey (then
-- they end: merged), so one person is not sent a journey twice.
CREATE FUNCTION crm.journeys_on_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF crm.on_citus() THEN
		RETURN;						-- engagement does not run on a cluster yet
	END IF;
	UPDATE crm.journey_enrollment e
	SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = pg_catalog.now(), end_reason = 'merged'
	WHERE e.customer_id = merged AND e.status = 'active'
	  AND EXISTS (SELECT 1 FROM crm.journey_enrollment s WHERE s.customer_id = survivor AND s.journey_id = e.journey_id AND s.status = 'active');
	UPDATE crm.journey_enrollment e SET customer_id = survivor
	WHERE e.customer_id = merged AND e.status = 'active'
	  AND NOT EXISTS (SELECT 1 FROM crm.journey_enrollment s
	                  WHERE s.journey_id = e.journey_id AND s.customer_id = survivor AND s.occasion = e.occasion);
END
$$;
COMMENT ON FUNCTION crm.journeys_on_merge(bigint, bigint) IS
	'Customer hook (merge): the merged customer''s active journey enrollments go on with the survivor, or end (merged) where the survivor is active in the same journey';
INSERT INTO crm.customer_hook (event, hook, run_order, fn, builtin) VALUES
	('merge', 'journeys', 210, 'crm.journeys_on_merge(bigint, bigint)'::regprocedure, true);

CREATE VIEW crm.v_journey_funnel AS
SELECT j.journey_id, j.name, j.entry,
       pg_catalog.count(e.enrollment_id) AS entered,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'control') AS control,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'active') AS active,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'done') AS done,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'exited' AND e.end_reason = 'purchase') AS exited_on_purchase,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'exited' AND e.end_reason <> 'purchase') AS exited_otherwise,
       (SELECT pg_catalog.count(*) FROM crm.outbox o WHERE o.source = 'journey:' || j.name AND o.status <> 'suppressed') AS messages,
       (SELECT pg_catalog.count(*) FROM crm.outbox o WHERE o.source = 'journey:' || j.name AND o.status = 'suppressed') AS suppressed
FROM crm.journey j
LEFT JOIN crm.journey_enrollment e ON e.journey_id = j.journey_id
GROUP BY j.journey_id;
COMMENT ON VIEW crm.v_journey_funnel IS
	'Per journey: entered, held out (control), active, done, ended by a purchase, ended otherwise, messages queued and suppressed (until the outbox purges them)';
