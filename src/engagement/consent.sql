
-- ===========================================================================
-- engagement/consent.sql: consent per customer, channel and purpose
-- (issue 17).
--
-- Every answer a customer gives (opt in, opt out) is a row of
-- crm.consent_event, kept for good: the history is the record of consent a
-- regulator asks for.  The answer in force is derived, never stored, so it
-- cannot drift from the history and merges need no hook:
--   * on one record, its latest answer;
--   * on a golden customer, the latest answer over its records, where every
--     answer given before the golden's latest merge counts as given at that
--     merge and, between answers that tie, the stricter (no) wins: a merge
--     of a record that said no into one that said yes says no, an answer
--     given after the merge decides, and an unmerge gives each side back
--     its own answers (the merge no longer counts).
-- Without an answer, marketing and research are not allowed (an explicit
-- opt-in is needed: PIPL-style separate consent) and service is (until the
-- customer opts out).
-- ===========================================================================

CREATE SEQUENCE crm.consent_event_id_seq;
CREATE TABLE crm.consent_event (
	event_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.consent_event_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	channel			text NOT NULL CONSTRAINT consent_event_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL CONSTRAINT consent_event_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	granted			boolean NOT NULL,
	source			text NOT NULL CONSTRAINT consent_event_source_given CHECK (pg_catalog.btrim(source) <> ''),
	at				timestamptz NOT NULL CONSTRAINT consent_event_at_finite CHECK (pg_catalog.isfinite(at)),
	recorded_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	recorded_by		name NOT NULL DEFAULT CURRENT_USER
);
CREATE INDEX consent_event_latest_idx ON crm.consent_event (customer_id, channel, purpose, at DESC, event_id DESC);
COMMENT ON TABLE crm.consent_event IS
	'Append-only history of consent: every opt-in (granted) and opt-out of a customer record for a channel and purpose, with its source (app, pos, web, a form, an agent) and time; crm.consent_allows and crm.v_consent derive the answer in force';
SELECT pg_catalog.pg_extension_config_dump('crm.consent_event', '');
SELECT pg_catalog.pg_extension_config_dump('crm.consent_event_id_seq', '');

CREATE TRIGGER consent_event_append_only BEFORE UPDATE OR DELETE ON crm.consent_event
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER consent_event_no_truncate BEFORE TRUNCATE ON crm.consent_event
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();

-- Refuses a channel or purpose consent does not know (22023).
CREATE FUNCTION crm.consent_check_kind(channel text, purpose text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF channel IS NULL OR channel NOT IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call') THEN
		RAISE EXCEPTION 'unknown channel "%"', channel USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Channels: sms, email, push, app_inbox, wechat, phone_call.';
	END IF;
	IF purpose IS NULL OR purpose NOT IN ('marketing', 'service', 'research') THEN
		RAISE EXCEPTION 'unknown purpose "%"', purpose USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Purposes: marketing, service, research.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.consent_check_kind(text, text) IS 'Internal: 22023 for an unknown consent channel or purpose';

CREATE FUNCTION crm.set_consent(customer_id bigint, channel text, purpose text, granted boolean, source text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Records the answer on the record named
-- (so that an unmerge gives it back to that record); returns its id.
DECLARE
	id bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.set_consent()');
	IF customer_id IS NULL OR granted IS NULL OR source IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'consent needs a customer, an answer (granted true or false), a source and a time'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	IF pg_catalog.btrim(source) = '' OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'consent needs a source (app, pos, web, ...) and a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the golden FOR SHARE, so that a merge or unmerge decides before or after
	PERFORM crm.lock_customer(customer_id);
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	VALUES (customer_id, channel, purpose, granted, source, at)
	RETURNING event_id INTO id;
	RETURN id;
END
$$;
COMMENT ON FUNCTION crm.set_consent(bigint, text, text, boolean, text, timestamptz) IS
	'Records a customer''s answer (granted: opt in; false: opt out) for a channel (sms, email, push, app_inbox, wechat, phone_call) and purpose (marketing, service, research), with its source and time; it takes effect at once (crm.outbox_claim checks it again); returns the event id.  22023 unknown channel or purpose, 22004 a NULL, 23503 unknown customer';

-- The answer in force for golden customer g (and its records) at "at": the
-- row of crm.consent_event that decides, or none.
CREATE FUNCTION crm.consent_answer(g bigint, channel text, purpose text, at timestamptz)
RETURNS crm.consent_event
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
-- (the same two statements on every call: planning them each time cost
-- three times what running them does)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	records bigint[] := crm.records_under(g);
	joined timestamptz;
	e crm.consent_event;
BEGIN
	-- the golden's latest merge still in force
	SELECT pg_catalog.max(m.merged_at) INTO joined FROM crm.merge_log m
	WHERE m.merged = ANY (records) AND m.undone_at IS NULL AND m.merged_at <= at;
	SELECT x.* INTO e
	FROM pg_catalog.unnest(records) r(id)
	CROSS JOIN LATERAL (
		SELECT y.* FROM crm.consent_event y
		WHERE y.customer_id = r.id AND y.channel = consent_answer.channel AND y.purpose = consent_answer.purpose AND y.at <= consent_answer.at
		ORDER BY y.at DESC, y.event_id DESC LIMIT 1) x
	ORDER BY GREATEST(x.at, joined) DESC, x.granted, x.at DESC, x.event_id DESC
	LIMIT 1;
	RETURN e;
END
$$;
COMMENT ON FUNCTION crm.consent_answer(bigint, text, text, timestamptz) IS
	'Internal: the consent event in force for a golden customer, channel and purpose at a time (the latest over its records, answers before its latest merge counting as given then, the stricter winning a tie); NULL without an answer';

CREATE FUNCTION crm.consent_allows(customer_id bigint, channel text, purpose text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint;
	e crm.consent_event;
BEGIN
	IF customer_id IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'consent_allows needs a customer and a time' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	g := crm.golden_customer(customer_id);
	IF g IS NULL THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	e := crm.consent_answer(g, channel, purpose, at);
	RETURN COALESCE(e.granted, purpose = 'service');
END
$$;
COMMENT ON FUNCTION crm.consent_allows(bigint, text, text, timestamptz) IS
	'May the customer (a merged record''s id means its golden customer) be sent messages of a purpose on a channel at "at": the answer in force, or without one, false for marketing and research (explicit opt-in needed) and true for service (until an opt-out); 22023 unknown channel or purpose, 23503 unknown customer';

CREATE VIEW crm.v_consent AS
SELECT c.customer_id, k.channel, k.purpose, COALESCE(e.granted, k.purpose = 'service') AS allowed,
       e.granted AS answer, e.source, e.at AS answered_at, e.customer_id AS answered_on
FROM crm.customer c
CROSS JOIN (SELECT ch, p FROM pg_catalog.unnest(ARRAY['sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call']) ch,
                              pg_catalog.unnest(ARRAY['marketing', 'service', 'research']) p) k(channel, purpose)
CROSS JOIN LATERAL crm.consent_answer(c.customer_id, k.channel, k.purpose, pg_catalog.now()) e
WHERE c.merged_into IS NULL AND c.forgotten_at IS NULL
  AND EXISTS (SELECT 1 FROM crm.consent_event x WHERE x.customer_id = ANY (crm.records_under(c.customer_id)));
COMMENT ON VIEW crm.v_consent IS
	'Consent in force now, per golden customer who ever answered, channel and purpose: allowed (the answer, or the default: service yes, marketing and research no), the deciding answer, its source, time and the record it was given on';
