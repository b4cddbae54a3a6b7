
-- ===========================================================================
-- rewards/rewards.sql: the rewards catalogue (issue 16).
--
-- A reward is something a member takes for points: goods, an in-store
-- service or a partner's benefit, each handed over as a coupon of a
-- template (a gift item, a free service, a partner's amount off).
-- crm.exchange_points spends the points (FIFO by expiry, through
-- crm.redeem_points) and issues the coupons in one transaction, exactly
-- once per idempotency key; stock is never oversold.
--
-- Lock order: the golden customer FOR SHARE, the reward row, the loyalty
-- account (crm.redeem_points), the coupon template row (issuing).
-- ===========================================================================

CREATE TABLE crm.reward (
	reward_id			integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	kind				text NOT NULL CONSTRAINT reward_kind_valid CHECK (kind IN ('goods', 'service', 'partner')),
	points_price		bigint NOT NULL CONSTRAINT reward_price_positive CHECK (points_price > 0),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	stock				bigint CONSTRAINT reward_stock_valid CHECK (stock >= 0),
	exchanged			bigint NOT NULL DEFAULT 0,
	per_customer_limit	integer CONSTRAINT reward_limit_positive CHECK (per_customer_limit > 0),
	eligible_tiers		text[] CONSTRAINT reward_tiers_given CHECK (pg_catalog.cardinality(eligible_tiers) > 0),
	valid_from			timestamptz,
	valid_until			timestamptz,
	enabled				boolean NOT NULL DEFAULT true,
	CONSTRAINT reward_stock_held CHECK (stock IS NULL OR exchanged <= stock),
	CONSTRAINT reward_window CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until)
);
COMMENT ON TABLE crm.reward IS
	'The rewards catalogue: goods, in-store services and partner benefits members take for points_price points each, handed over as coupons of template_id; stock (exchanged counts it), per_customer_limit (per golden customer), eligible_tiers, validity window';
SELECT pg_catalog.pg_extension_config_dump('crm.reward', '');
SELECT pg_catalog.pg_extension_config_dump('crm.reward_reward_id_seq', '');

CREATE SEQUENCE crm.reward_exchange_id_seq;
CREATE TABLE crm.reward_exchange (
	exchange_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.reward_exchange_id_seq'),
	reward_id			integer NOT NULL REFERENCES crm.reward (reward_id),
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	qty					integer NOT NULL CONSTRAINT reward_exchange_qty_positive CHECK (qty > 0),
	points				bigint NOT NULL,
	codes				text[] NOT NULL,
	idempotency_key		text NOT NULL CONSTRAINT reward_exchange_key_unique UNIQUE,
	at					timestamptz NOT NULL
);
CREATE INDEX reward_exchange_customer_idx ON crm.reward_exchange (customer_id, reward_id);
COMMENT ON TABLE crm.reward_exchange IS 'Every exchange of points for rewards: who, what, how many, the points spent and the coupon codes handed over';
SELECT pg_catalog.pg_extension_config_dump('crm.reward_exchange', '');
SELECT pg_catalog.pg_extension_config_dump('crm.reward_exchange_id_seq', '');

-- Locks a reward and refuses it to golden customer g for qty at "at": 23503
-- unknown, CR307 disabled or the customer's tier not eligible, CR302 ended,
-- CR303 not yet, CR304 stock short, CR305 the customer's limit reached.
CREATE FUNCTION crm.reward_take(reward integer, g bigint, qty integer, at timestamptz) RETURNS crm.reward
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r crm.reward;
	taken bigint;
BEGIN
	SELECT * INTO r FROM crm.reward x WHERE x.reward_id = reward FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'reward % does not exist', reward USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF NOT r.enabled THEN
		RAISE EXCEPTION 'reward "%" is not offered now', r.name USING ERRCODE = 'CR307';
	END IF;
	IF r.valid_until IS NOT NULL AND r.valid_until <= at THEN
		RAISE EXCEPTION 'reward "%" ended at %', r.name, r.valid_until USING ERRCODE = 'CR302';
	END IF;
	IF r.valid_from IS NOT NULL AND r.valid_from > at THEN
		RAISE EXCEPTION 'reward "%" is offered from %', r.name, r.valid_from USING ERRCODE = 'CR303';
	END IF;
	IF r.eligible_tiers IS NOT NULL AND NOT crm.customer_tier(g) = ANY (r.eligible_tiers) THEN
		RAISE EXCEPTION 'reward "%" is for tiers %, customer % is %', r.name, pg_catalog.array_to_string(r.eligible_tiers, ', '),
			g, crm.customer_tier(g) USING ERRCODE = 'CR307';
	END IF;
	IF r.stock IS NOT NULL AND r.exchanged + qty > r.stock THEN
		RAISE EXCEPTION 'reward "%" has % left, % asked for', r.name, r.stock - r.exchanged, qty USING ERRCODE = 'CR304';
	END IF;
	IF r.per_customer_limit IS NOT NULL THEN
		SELECT COALESCE(pg_catalog.sum(e.qty), 0) INTO taken FROM crm.reward_exchange e
		WHERE e.reward_id = reward AND e.customer_id = ANY (crm.records_under(g));
		IF taken + qty > r.per_customer_limit THEN
			RAISE EXCEPTION 'customer % has taken % of reward "%", its limit is %', g, taken, r.name, r.per_customer_limit
				USING ERRCODE = 'CR305';
		END IF;
	END IF;
	UPDATE crm.reward x SET exchanged = x.exchanged + qty WHERE x.reward_id = reward;
	RETURN r;
END
$$;
COMMENT ON FUNCTION crm.reward_take(integer, bigint, integer, timestamptz) IS
	'Internal: locks a reward and takes qty of its stock for a golden customer; 23503 unknown, CR307 not offered or tier not eligible, CR302 ended, CR303 not yet, CR304 stock short, CR305 customer limit';

CREATE FUNCTION crm.exchange_points(customer_id bigint, reward integer, qty integer, idempotency_key text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns the codes of the coupons handed over.
DECLARE
	g bigint;
	r crm.reward;
	e crm.reward_exchange;
	codes text[];
BEGIN
	PERFORM crm.refuse_on_citus('crm.exchange_points()');
	IF customer_id IS NULL OR reward IS NULL OR qty IS NULL OR idempotency_key IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'an exchange needs a customer, a reward, a quantity and an idempotency key'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Pass a key unique to this exchange; a retry with the same key returns the first result.';
	END IF;
	IF qty < 1 THEN
		RAISE EXCEPTION 'qty must be at least 1, not %', qty USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	SELECT * INTO e FROM crm.reward_exchange x WHERE x.idempotency_key = exchange_points.idempotency_key;
	IF FOUND THEN
		IF e.reward_id <> reward OR e.qty <> qty OR crm.golden_customer(e.customer_id) <> g THEN
			RAISE EXCEPTION 'idempotency key "%" was used for another exchange', idempotency_key USING ERRCODE = 'CR002';
		END IF;
		RETURN e.codes;					-- a retry: the first result
	END IF;
	r := crm.reward_take(reward, g, qty, at);
	-- the points, FIFO by expiry (CR001 when the member has too few)
	PERFORM crm.redeem_points(g, r.points_price * qty, 'reward:' || idempotency_key, at);
	codes := ARRAY(SELECT c.code FROM crm.coupon_insert(crm.coupon_take_stock(r.template_id, qty, at),
	                                                     pg_catalog.array_fill(g, ARRAY[qty]), NULL, at) c ORDER BY c.coupon_id);
	INSERT INTO crm.reward_exchange (reward_id, customer_id, qty, points, codes, idempotency_key, at)
	VALUES (reward, g, qty, r.points_price * qty, codes, idempotency_key, at);
	RETURN codes;
END
$$;
COMMENT ON FUNCTION crm.exchange_points(bigint, integer, integer, text, timestamptz) IS
	'Exchanges points for qty of a reward: spends points_price * qty points FIFO by expiry and hands over the reward''s coupons in one transaction, exactly once per idempotency key (a retry returns the first codes, CR002 for another exchange); returns the codes; CR001 too few points, CR302/CR303 outside the reward''s window, CR304 stock short, CR305 customer limit, CR307 not offered or tier not eligible, 23503 unknown customer or reward';

CREATE VIEW crm.v_rewards AS
SELECT r.reward_id, r.name, r.kind, r.points_price, r.stock, r.exchanged,
       pg_catalog.count(e.exchange_id) AS exchanges, COALESCE(pg_catalog.sum(e.points), 0) AS points_spent,
       pg_catalog.count(DISTINCT e.customer_id) AS members
FROM crm.reward r LEFT JOIN crm.reward_exchange e ON e.reward_id = r.reward_id
GROUP BY r.reward_id;
COMMENT ON VIEW crm.v_rewards IS 'Per reward: stock, units exchanged, exchanges, points spent and members who took it';
