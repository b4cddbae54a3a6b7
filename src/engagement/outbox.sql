
-- ===========================================================================
-- engagement/outbox.sql: the outbox (issue 17).
--
-- Every message crm_ext wants delivered (a journey's step, a campaign, an
-- escalation) is a row of crm.outbox, written in the transaction that
-- decides it: enqueued exactly once per dedupe key (UNIQUE), never lost
-- once committed.  Consumers (the SMS gateway, the mailer, the push
-- service; scripts/outbox-consumer is a reference one) poll
-- crm.outbox_claim(consumer, n, lease), deliver, and call crm.outbox_ack or
-- crm.outbox_fail; NOTIFY crm_outbox only wakes them.  Delivery is at least
-- once: a lease that runs out before the ack is claimed again.
--
-- A message is due when due_at has come: a pending one at its
-- available_at (or its retry time), a leased one when its lease runs out.
-- Consent is checked when the message is enqueued and again when it is
-- claimed (revoked in between: suppressed, counted).  crm.tick purges
-- finished messages after the retention period, in short batches.
-- ===========================================================================

CREATE TABLE crm.outbox_settings (
	settings		text PRIMARY KEY DEFAULT 'default' CONSTRAINT outbox_settings_single CHECK (settings = 'default'),
	max_attempts	integer NOT NULL DEFAULT 5 CONSTRAINT outbox_settings_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
	retry_after		interval NOT NULL DEFAULT '30 seconds' CONSTRAINT outbox_settings_retry_positive CHECK (retry_after > interval '0'),
	retry_max		interval NOT NULL DEFAULT '1 hour' CONSTRAINT outbox_settings_retry_max_positive CHECK (retry_max > interval '0'),
	retention		interval NOT NULL DEFAULT '7 days' CONSTRAINT outbox_settings_retention_positive CHECK (retention > interval '0'),
	purge_batch		integer NOT NULL DEFAULT 10000 CONSTRAINT outbox_settings_batch_range CHECK (purge_batch BETWEEN 100 AND 1000000),
	quiet_from		time,
	quiet_until		time,
	cap_day			integer CONSTRAINT outbox_settings_cap_day_positive CHECK (cap_day >= 1),
	cap_channel_day	integer CONSTRAINT outbox_settings_cap_channel_day_positive CHECK (cap_channel_day >= 1),
	cap_7_days		integer CONSTRAINT outbox_settings_cap_7_days_positive CHECK (cap_7_days >= 1),
	builtin			boolean NOT NULL DEFAULT false,
	CONSTRAINT outbox_settings_quiet_both CHECK ((quiet_from IS NULL) = (quiet_until IS NULL) AND (quiet_from IS NULL OR quiet_from <> quiet_until))
);
COMMENT ON TABLE crm.outbox_settings IS
	'Outbox settings (one row): attempts before a message is dead, the first retry delay (doubling up to retry_max), how long finished messages are kept, rows deleted per purge batch; guard rails for marketing and research messages (service ones are exempt): quiet hours [quiet_from, quiet_until) in the customer''s time zone, which defer a message to their end, and caps on messages claimed per customer per local day (cap_day), per channel and local day (cap_channel_day) and per rolling 7 days (cap_7_days), over which a message is suppressed (capped); NULL turns each off';
-- Guard rails are off until set (UPDATE crm.outbox_settings SET quiet_from
-- = '21:00', quiet_until = '09:00', cap_day = 2, ...): nothing is held back
-- that the operator did not ask for.
INSERT INTO crm.outbox_settings (settings, builtin) VALUES ('default', true);
SELECT pg_catalog.pg_extension_config_dump('crm.outbox_settings', 'WHERE NOT builtin');

CREATE SEQUENCE crm.outbox_id_seq;
CREATE TABLE crm.outbox (
	message_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.outbox_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	channel			text NOT NULL CONSTRAINT outbox_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL CONSTRAINT outbox_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	template		text NOT NULL CONSTRAINT outbox_template_given CHECK (pg_catalog.btrim(template) <> ''),
	payload			jsonb NOT NULL DEFAULT '{}'::jsonb,
	source			text NOT NULL DEFAULT 'api',
	dedupe_key		text NOT NULL CONSTRAINT outbox_dedupe_key_unique UNIQUE
					CONSTRAINT outbox_dedupe_key_format CHECK (pg_catalog.length(dedupe_key) BETWEEN 1 AND 200 AND pg_catalog.btrim(dedupe_key) <> ''),
	status			text NOT NULL DEFAULT 'pending' CONSTRAINT outbox_status_valid
					CHECK (status IN ('pending', 'leased', 'delivered', 'dead', 'suppressed')),
	available_at	timestamptz NOT NULL,
	unless_ordered_after timestamptz,
	due_at			timestamptz,
	consumer		text,
	attempts		integer NOT NULL DEFAULT 0,
	deferrals		integer NOT NULL DEFAULT 0,
	claimed_at		timestamptz,
	last_error		text,
	suppressed_reason text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at		timestamptz,
	CONSTRAINT outbox_due_while_open CHECK ((status IN ('pending', 'leased')) = (due_at IS NOT NULL)),
	CONSTRAINT outbox_finished_when_closed CHECK ((status IN ('pending', 'leased')) = (finished_at IS NULL)),
	CONSTRAINT outbox_suppressed_reason CHECK ((status = 'suppressed') = (suppressed_reason IS NOT NULL))
);
CREATE INDEX outbox_due_idx ON crm.outbox (due_at, message_id) WHERE status IN ('pending', 'leased');
CREATE INDEX outbox_finished_idx ON crm.outbox (finished_at) WHERE status IN ('delivered', 'dead', 'suppressed');
-- what the caps count: a customer's marketing and research messages claimed
CREATE INDEX outbox_capped_idx ON crm.outbox (customer_id, claimed_at) WHERE purpose <> 'service' AND claimed_at IS NOT NULL;
COMMENT ON TABLE crm.outbox IS
	'Messages to deliver, one per dedupe key: pending until due_at (available_at, or a retry time), leased to a consumer until due_at (the lease''s end), then delivered, dead (max_attempts failures) or suppressed (no consent: suppressed_reason); purged by crm.tick after the retention period';
COMMENT ON COLUMN crm.outbox.source IS 'What enqueued it: journey:<name>, campaign:<name>, api, ...; suppressions are counted per source (crm.v_outbox_stats)';
COMMENT ON COLUMN crm.outbox.unless_ordered_after IS 'When set, the message is suppressed at claim (goal reached) if the customer has a paid order after this time: a win-back message is not sent to a customer who bought meanwhile, also when the order was in flight as the message was decided';
COMMENT ON COLUMN crm.outbox.deferrals IS 'How often the message was deferred by quiet hours';
COMMENT ON COLUMN crm.outbox.claimed_at IS 'When a consumer first claimed it (what the frequency caps count)';
COMMENT ON COLUMN crm.outbox.due_at IS 'When a pending message may be claimed, or when a leased one''s lease runs out and it may be claimed again; NULL once finished';
SELECT pg_catalog.pg_extension_config_dump('crm.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('crm.outbox_id_seq', '');

-- A customer's time zone for quiet hours and daily caps: the home store's,
-- else the loyalty programme's.
CREATE FUNCTION crm.customer_time_zone(customer_id bigint) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN COALESCE((SELECT s.time_zone FROM crm.customer c JOIN crm.store s ON s.store_id = c.home_store_id
                 WHERE c.customer_id = customer_time_zone.customer_id),
                (SELECT p.time_zone FROM crm.loyalty_program p));
COMMENT ON FUNCTION crm.customer_time_zone(bigint) IS
	'The time zone a customer''s days and quiet hours are counted in: the home store''s (crm.store.time_zone), else the loyalty programme''s';

CREATE FUNCTION crm.outbox_enqueue(customer_id bigint, channel text, purpose text, template text, payload jsonb,
	dedupe_key text, available_at timestamptz DEFAULT pg_catalog.now(), source text DEFAULT 'api',
	unless_ordered_after timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors (unless_ordered_after may be NULL).  The
-- golden customer gets the message; a dedupe key enqueued before returns
-- that message (exactly once per key, also against a concurrent enqueue,
-- which waits for the first to commit; CR002 when the key was used for
-- another customer, channel or template).
-- Without consent the message is written suppressed, so the occasion is
-- decided and counted.  Returns the message id.
DECLARE
	g bigint;
	id bigint;
	allowed boolean;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_enqueue()');
	IF customer_id IS NULL OR template IS NULL OR payload IS NULL OR dedupe_key IS NULL OR available_at IS NULL OR source IS NULL THEN
		RAISE EXCEPTION 'a message needs a customer, a template, a payload, a dedupe key and a time' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'The dedupe key names the occasion (journey:welcome:42:1): a second enqueue for it returns the first message.';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	IF NOT pg_catalog.isfinite(available_at) THEN
		RAISE EXCEPTION 'available_at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	-- (asked once: inside the INSERT the answer was folded into every column that uses it)
	allowed := crm.consent_allows(g, channel, purpose, pg_catalog.now());
	INSERT INTO crm.outbox AS o (customer_id, channel, purpose, template, payload, source, dedupe_key, status, available_at,
	                             unless_ordered_after, due_at, suppressed_reason, finished_at)
	SELECT g, channel, purpose, template, payload, source, dedupe_key, v.status, available_at, unless_ordered_after,
	       CASE WHEN v.status = 'pending' THEN available_at END,
	       CASE WHEN v.status = 'suppressed' THEN 'no consent' END,
	       CASE WHEN v.status = 'suppressed' THEN pg_catalog.now() END
	FROM (SELECT CASE WHEN allowed THEN 'pending' ELSE 'suppressed' END AS status) v
	ON CONFLICT ON CONSTRAINT outbox_dedupe_key_unique DO NOTHING
	RETURNING o.message_id INTO id;
	IF id IS NULL THEN
		-- the occasion's message exists: the same one again is answered with
		-- it, another (customer, channel, template) is a reused key
		SELECT x.message_id INTO id FROM crm.outbox x
		WHERE x.dedupe_key = outbox_enqueue.dedupe_key
		  AND crm.golden_customer(x.customer_id) = g AND x.channel = outbox_enqueue.channel AND x.template = outbox_enqueue.template;
		IF id IS NULL THEN
			RAISE EXCEPTION 'dedupe key "%" was used for another message', dedupe_key USING ERRCODE = 'CR002',
				HINT = 'Name the occasion in the key: source, customer and occasion (journey:welcome:42:1).';
		END IF;
	ELSE
		PERFORM pg_catalog.pg_notify('crm_outbox', channel);	-- a wake-up; one per channel and transaction
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION crm.outbox_enqueue(bigint, text, text, text, jsonb, text, timestamptz, text, timestamptz) IS
	'Enqueues a message for a customer (its golden customer) on a channel, for a purpose, once per dedupe key (unless_ordered_after: suppressed at claim, goal reached, if the customer has a paid order after it) (a second call returns the first message id; CR002 for another customer, channel or template); written suppressed (reason no consent) when the customer''s consent does not allow it; NOTIFY crm_outbox wakes consumers.  22023 unknown channel or purpose, 22004 a NULL, 23503 unknown customer';

CREATE FUNCTION crm.outbox_claim(consumer text, n integer DEFAULT 100, lease interval DEFAULT '1 minute',
	at timestamptz DEFAULT NULL)
RETURNS SETOF crm.outbox
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- The due messages, oldest first, skipping those another consumer is
-- claiming right now (SKIP LOCKED).  Each is, in this order of checks:
--   suppressed (consent revoked) when consent no longer allows it,
--   suppressed (goal reached) when its customer ordered after its
--     unless_ordered_after,
--   deferred to the end of the quiet hours when it is marketing or
--     research and it is quiet time where the customer lives (pending
--     again, deferrals counted),
--   suppressed (capped) when it is marketing or research and would go over
--     a frequency cap, counting what was claimed before and what this
--     claim leased ahead of it (per golden customer, in due order),
--   else leased to this consumer until the clock + lease.
-- A message whose lease ran out max_attempts times (a consumer that dies on
-- it each time) is dead instead.
-- Leases and retries run on the wall clock (clock_timestamp), not on the
-- time the caller's transaction started; "at" replaces the clock (tests,
-- replays).  Not STRICT: at may be NULL.
DECLARE
	t timestamptz := COALESCE(at, pg_catalog.clock_timestamp());
	s crm.outbox_settings;
	r record;
	taken jsonb := '{}';		-- leased in this claim: per golden, and per golden and channel
	k_all text;
	k_channel text;
	leased bigint[] := '{}';
	refused_ids bigint[] := '{}';
	refused_why text[] := '{}';
	deferred_ids bigint[] := '{}';
	deferred_to timestamptz[] := '{}';
	dead_ids bigint[] := '{}';
	caps boolean;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_claim()');
	IF consumer IS NULL OR n IS NULL OR lease IS NULL OR n < 1 OR n > 10000 OR lease <= interval '0' OR pg_catalog.btrim(consumer) = '' THEN
		RAISE EXCEPTION 'outbox_claim needs a consumer name, 1 to 10000 messages and a positive lease' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM crm.outbox_settings x;
	caps := s.cap_day IS NOT NULL OR s.cap_channel_day IS NOT NULL OR s.cap_7_days IS NOT NULL;
	FOR r IN
		WITH due AS (
			SELECT x.message_id FROM crm.outbox x
			WHERE x.status IN ('pending', 'leased') AND x.due_at <= t
			ORDER BY x.due_at, x.message_id
			LIMIT n
			FOR UPDATE SKIP LOCKED),
		checked AS (
			-- (a message claimed before, whose lease ran out, passed the guard
			-- rails then and is counted already: only consent and goal again)
			SELECT x.message_id, x.channel, x.due_at, g.golden, z.tz, x.purpose <> 'service' AND x.claimed_at IS NULL AS guarded,
			       x.status = 'leased' AND x.attempts >= s.max_attempts AS worn_out,
			       CASE WHEN NOT crm.consent_allows(x.customer_id, x.channel, x.purpose, t) THEN 'consent revoked'
			            WHEN x.unless_ordered_after IS NOT NULL AND EXISTS (
			                 SELECT 1 FROM crm.orders o WHERE o.customer_id = g.golden
			                 AND o.status = 'paid' AND o.ordered_at > x.unless_ordered_after) THEN 'goal reached' END AS refused
			FROM crm.outbox x
			JOIN due d ON d.message_id = x.message_id
			CROSS JOIN LATERAL (SELECT crm.golden_customer(x.customer_id) AS golden) g
			CROSS JOIN LATERAL (SELECT CASE WHEN x.purpose <> 'service' THEN crm.customer_time_zone(g.golden) END AS tz) z)
		SELECT c.*,
		       -- the end of the quiet hours, when it is quiet time where the customer lives
		       CASE WHEN c.refused IS NULL AND c.guarded AND s.quiet_from IS NOT NULL
		                 AND CASE WHEN s.quiet_from < s.quiet_until THEN l.local_time >= s.quiet_from AND l.local_time < s.quiet_until
		                          ELSE l.local_time >= s.quiet_from OR l.local_time < s.quiet_until END
		            THEN ((l.local_day + CASE WHEN l.local_time >= s.quiet_until THEN 1 ELSE 0 END) + s.quiet_until) AT TIME ZONE c.tz END AS defer_to,
		       b.day, b.channel_day, b.week
		FROM checked c
		CROSS JOIN LATERAL (SELECT (t AT TIME ZONE c.tz)::time AS local_time, (t AT TIME ZONE c.tz)::date AS local_day) l
		-- what the caps count from before: this customer's marketing and
		-- research messages claimed in its local day and in 7 days
		LEFT JOIN LATERAL (
			SELECT pg_catalog.count(*) FILTER (WHERE y.claimed_at >= (l.local_day::timestamp AT TIME ZONE c.tz)) AS day,
			       pg_catalog.count(*) FILTER (WHERE y.claimed_at >= (l.local_day::timestamp AT TIME ZONE c.tz) AND y.channel = c.channel) AS channel_day,
			       pg_catalog.count(*) AS week
			FROM crm.outbox y
			WHERE caps AND c.guarded AND y.customer_id = c.golden AND y.purpose <> 'service' AND y.claimed_at IS NOT NULL
			  AND y.claimed_at > t - interval '7 days' AND y.message_id <> c.message_id) b ON true
		ORDER BY c.due_at, c.message_id
	LOOP
		IF r.worn_out THEN
			-- its lease ran out max_attempts times (a consumer that dies on it)
			dead_ids := dead_ids || r.message_id;
		ELSIF r.refused IS NOT NULL THEN
			refused_ids := refused_ids || r.message_id;
			refused_why := refused_why || r.refused;
		ELSIF r.defer_to IS NOT NULL THEN
			deferred_ids := deferred_ids || r.message_id;
			deferred_to := deferred_to || r.defer_to;
		ELSIF r.guarded AND caps THEN
			k_all := r.golden::text;
			k_channel := r.golden::text || ':' || r.channel;
			IF r.day + COALESCE((taken ->> k_all)::integer, 0) >= COALESCE(s.cap_day, 2147483647)
			   OR r.channel_day + COALESCE((taken ->> k_channel)::integer, 0) >= COALESCE(s.cap_channel_day, 2147483647)
			   OR r.week + COALESCE((taken ->> k_all)::integer, 0) >= COALESCE(s.cap_7_days, 2147483647) THEN
				refused_ids := refused_ids || r.message_id;
				refused_why := refused_why || 'capped'::text;
			ELSE
				leased := leased || r.message_id;
				taken := taken || pg_catalog.jsonb_build_object(k_all, COALESCE((taken ->> k_all)::integer, 0) + 1,
				                                                k_channel, COALESCE((taken ->> k_channel)::integer, 0) + 1);
			END IF;
		ELSE
			leased := leased || r.message_id;
		END IF;
	END LOOP;
	UPDATE crm.outbox o SET status = 'suppressed', suppressed_reason = u.why, due_at = NULL, finished_at = t
	FROM ROWS FROM (pg_catalog.unnest(refused_ids), pg_catalog.unnest(refused_why)) u(id, why)
	WHERE o.message_id = u.id;
	UPDATE crm.outbox o SET status = 'dead', due_at = NULL, finished_at = t,
	                        last_error = pg_catalog.format('its lease ran out %s times', o.attempts)
	WHERE o.message_id = ANY (dead_ids);
	UPDATE crm.outbox o SET status = 'pending', due_at = u.until, deferrals = o.deferrals + 1
	FROM ROWS FROM (pg_catalog.unnest(deferred_ids), pg_catalog.unnest(deferred_to)) u(id, until)
	WHERE o.message_id = u.id;
	RETURN QUERY
	WITH claimed AS (
		UPDATE crm.outbox o SET status = 'leased', consumer = outbox_claim.consumer, attempts = o.attempts + 1,
		                        claimed_at = COALESCE(o.claimed_at, t), due_at = t + lease
		WHERE o.message_id = ANY (leased)
		RETURNING o.*)
	SELECT c.* FROM claimed c ORDER BY c.message_id;
END
$$;
COMMENT ON FUNCTION crm.outbox_claim(text, integer, interval, timestamptz) IS
	'Claims up to n due messages for a consumer (FOR UPDATE SKIP LOCKED: consumers never get the same message at once) and leases them until clock_timestamp() (or "at") + lease; a message whose customer''s consent no longer allows it (consent revoked), whose customer ordered after its unless_ordered_after (goal reached) or that would go over a frequency cap (capped) is suppressed instead, and a marketing or research message in the customer''s quiet hours is deferred to their end; neither is returned; returns the leased messages.  A lease that runs out before crm.outbox_ack makes the message due again (at-least-once delivery)';

CREATE FUNCTION crm.outbox_ack(message_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_ack()');
	UPDATE crm.outbox o SET status = 'delivered', due_at = NULL, finished_at = pg_catalog.clock_timestamp(), last_error = NULL
	WHERE o.message_id = ANY (message_ids) AND o.status = 'leased';
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.outbox_ack(bigint[]) IS
	'Marks leased messages delivered (also after their lease ran out, as long as nobody acked or failed them since); returns how many changed (an ack of a delivered message changes nothing)';

CREATE FUNCTION crm.outbox_ack(message_id bigint) RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
RETURN crm.outbox_ack(ARRAY[message_id]);
COMMENT ON FUNCTION crm.outbox_ack(bigint) IS 'crm.outbox_ack for one message';

CREATE FUNCTION crm.outbox_fail(message_id bigint, error text, consumer text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: error and consumer may be NULL.  Returns the message's status
-- after it.  With consumer, only that consumer's lease fails: a slow
-- consumer whose lease ran out and went to another cannot undo it.
DECLARE
	s crm.outbox_settings;
	status text;
	t timestamptz := pg_catalog.clock_timestamp();
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_fail()');
	SELECT * INTO s FROM crm.outbox_settings x;
	UPDATE crm.outbox o
	SET status = CASE WHEN o.attempts >= s.max_attempts THEN 'dead' ELSE 'pending' END,
	    due_at = CASE WHEN o.attempts >= s.max_attempts THEN NULL
	                  ELSE t + LEAST(s.retry_after * pg_catalog.power(2, LEAST(o.attempts - 1, 20))::integer, s.retry_max) END,
	    finished_at = CASE WHEN o.attempts >= s.max_attempts THEN t END,
	    last_error = pg_catalog.left(error, 1000)
	WHERE o.message_id = outbox_fail.message_id AND o.status = 'leased'
	  AND (outbox_fail.consumer IS NULL OR o.consumer = outbox_fail.consumer)
	RETURNING o.status INTO status;
	IF status IS NULL THEN
		SELECT x.status INTO status FROM crm.outbox x WHERE x.message_id = outbox_fail.message_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'no message %', message_id USING ERRCODE = 'foreign_key_violation';
		END IF;
	END IF;
	RETURN status;
END
$$;
COMMENT ON FUNCTION crm.outbox_fail(bigint, text, text) IS
	'A consumer could not deliver a leased message: it is retried after retry_after, doubling per attempt up to retry_max, or dead after max_attempts attempts; returns its status (a message not leased, or, when consumer is given, leased to another consumer, is left as it is); 23503 unknown message';

-- crm.tick task: finished messages past the retention period go, in
-- batches of purge_batch rows (row locks only, on rows nobody uses), at
-- most ten batches per tick.
CREATE FUNCTION crm.outbox_purge(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s crm.outbox_settings;
	n bigint := 0;
	batch bigint;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	SELECT * INTO s FROM crm.outbox_settings x;
	LOOP
		DELETE FROM crm.outbox o
		WHERE o.message_id IN (
			SELECT x.message_id FROM crm.outbox x
			WHERE x.status IN ('delivered', 'dead', 'suppressed') AND x.finished_at < at - s.retention
			LIMIT s.purge_batch
			FOR UPDATE SKIP LOCKED);
		GET DIAGNOSTICS batch = ROW_COUNT;
		n := n + batch;
		-- at most ten batches a tick: the tick's transaction stays short and
		-- a large backlog goes over the next ticks
		EXIT WHEN batch < s.purge_batch OR n >= 10 * s.purge_batch;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.outbox_purge(timestamptz) IS
	'crm.tick task: deletes delivered, dead and suppressed messages finished more than outbox_settings.retention before "at", purge_batch rows at a time and at most ten batches per tick (a backlog goes over the next ticks); returns how many';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('outbox_purge', 170, 'crm.outbox_purge(timestamptz)'::regprocedure, true);

CREATE VIEW crm.v_outbox_stats AS
SELECT o.source, o.channel, o.status, o.suppressed_reason, pg_catalog.count(*) AS messages,
       pg_catalog.sum(o.deferrals) AS quiet_hours_deferrals,
       pg_catalog.min(o.created_at) AS first_at, pg_catalog.max(o.created_at) AS last_at
FROM crm.outbox o
GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW crm.v_outbox_stats IS
	'Messages per source (journey, campaign, ...), channel, status and suppression reason (no consent at enqueue; consent revoked, goal reached or capped at the claim), with the quiet-hours deferrals, until purged';
