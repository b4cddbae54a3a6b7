
-- ===========================================================================
-- coupons/coupons.sql: coupon templates and coupons (issue 16, first part).
--
-- A template says what a coupon gives and under which rules; a coupon is
-- one use of it issued to one customer, with an unguessable code
-- (coupon_code.c).  At checkout a coupon is reserved for an order (it
-- counts against the customer's limit until the reservation is released,
-- redeemed or expires: crm.tick releases it), then redeemed on the order,
-- exactly once: a retry on the same order returns the first result, any
-- other use is refused.  Every change of a coupon is a row of
-- crm.coupon_journal written in the same transaction.
--
-- Rejections have SQLSTATEs of their own (README, "Coupons"):
--   CR301 unknown code    CR302 expired          CR303 not yet valid
--   CR304 out of stock    CR305 customer limit   CR306 budget spent
--   CR307 not eligible
--   CR308 used or reserved for another order     CR309 not the customer's
--   CR310 does not stack with a coupon used on the order
--
-- Lock order (DEVELOPER.md): the golden customer FOR SHARE
-- (crm.lock_customer), a redemption's order, the template row (issuing),
-- the coupon row, the customer's usage row of the template
-- (crm.coupon_usage), the template's budget row (crm.coupon_budget).
-- ===========================================================================

CREATE TABLE crm.coupon_template (
	template_id			integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	kind				text NOT NULL CONSTRAINT coupon_template_kind_valid
		CHECK (kind IN ('amount_off', 'percent_off', 'free_delivery', 'gift_item')),
	amount_off			numeric(14,2) CONSTRAINT coupon_template_amount_positive CHECK (amount_off > 0),
	percent_off			numeric(5,2) CONSTRAINT coupon_template_percent_range CHECK (percent_off > 0 AND percent_off <= 100),
	max_discount		numeric(14,2) CONSTRAINT coupon_template_cap_positive CHECK (max_discount > 0),
	gift_sku			text,
	min_spend			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT coupon_template_min_spend_valid CHECK (min_spend >= 0),
	valid_from			timestamptz,
	valid_until			timestamptz,
	valid_days			integer CONSTRAINT coupon_template_days_positive CHECK (valid_days > 0),
	stock				bigint CONSTRAINT coupon_template_stock_valid CHECK (stock >= 0),
	issued				bigint NOT NULL DEFAULT 0,
	per_customer_limit	integer CONSTRAINT coupon_template_limit_positive CHECK (per_customer_limit > 0),
	eligible_tiers		text[] CONSTRAINT coupon_template_tiers_given CHECK (pg_catalog.cardinality(eligible_tiers) > 0),
	eligible_categories	text[] CONSTRAINT coupon_template_categories_given CHECK (pg_catalog.cardinality(eligible_categories) > 0),
	eligible_skus		text[] CONSTRAINT coupon_template_skus_given CHECK (pg_catalog.cardinality(eligible_skus) > 0),
	restore_on_refund	boolean NOT NULL DEFAULT false,
	stacking			text NOT NULL DEFAULT 'exclusive' CONSTRAINT coupon_template_stacking_valid
		CHECK (stacking IN ('exclusive', 'combinable')),
	percent_base		text NOT NULL DEFAULT 'before_discounts' CONSTRAINT coupon_template_percent_base_valid
		CHECK (percent_base IN ('before_discounts', 'after_discounts')),
	budget_count		bigint CONSTRAINT coupon_template_budget_count_positive CHECK (budget_count > 0),
	budget_value		numeric(14,2) CONSTRAINT coupon_template_budget_value_positive CHECK (budget_value > 0),
	budget_period		text CONSTRAINT coupon_template_budget_period_valid CHECK (budget_period IN ('day', 'week', 'month')),
	enabled				boolean NOT NULL DEFAULT true,
	CONSTRAINT coupon_template_kind_fields CHECK (CASE kind
		WHEN 'amount_off' THEN amount_off IS NOT NULL AND percent_off IS NULL AND gift_sku IS NULL
		WHEN 'percent_off' THEN percent_off IS NOT NULL AND amount_off IS NULL AND gift_sku IS NULL
		WHEN 'gift_item' THEN gift_sku IS NOT NULL AND amount_off IS NULL AND percent_off IS NULL
		ELSE amount_off IS NULL AND percent_off IS NULL AND gift_sku IS NULL END),
	CONSTRAINT coupon_template_cap_percent CHECK (max_discount IS NULL OR kind = 'percent_off'),
	CONSTRAINT coupon_template_validity CHECK ((valid_until IS NULL) <> (valid_days IS NULL)),
	CONSTRAINT coupon_template_window CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until),
	CONSTRAINT coupon_template_stock_held CHECK (stock IS NULL OR issued <= stock),
	CONSTRAINT coupon_template_budget_has_cap CHECK (budget_period IS NULL OR budget_count IS NOT NULL OR budget_value IS NOT NULL)
);
COMMENT ON TABLE crm.coupon_template IS
	'What a coupon gives (kind: amount_off, percent_off with an optional max_discount, free_delivery, gift_item) and its rules: min_spend of the order, validity (a fixed window ending at valid_until, or valid_days from issue), stock (coupons that may be issued; issued counts them), per_customer_limit (coupons of the template a golden customer may hold reserved or redeemed), eligible_tiers (NULL: every tier), eligible_categories and eligible_skus (the coupon applies to the order''s lines of these: min_spend and the discount count them only; NULL: the whole order), restore_on_refund (a fully refunded order gives its coupon back while the coupon is valid), stacking (exclusive: alone on an order; combinable: with other combinable coupons of other templates), percent_base (a percent off the order''s amount before or after the discounts of the coupons used on it before), budget_count and budget_value (redemptions and discount given per budget_period: day, week or month in the programme''s time zone; NULL: over the template''s life)';
COMMENT ON COLUMN crm.coupon_template.issued IS 'Coupons issued so far; never more than stock';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_template', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_template_template_id_seq', '');

CREATE SEQUENCE crm.coupon_id_seq;
CREATE TABLE crm.coupon (
	coupon_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.coupon_id_seq'),
	code				text NOT NULL CONSTRAINT coupon_code_unique UNIQUE,
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	issued_at			timestamptz NOT NULL,
	valid_from			timestamptz NOT NULL,
	valid_until			timestamptz NOT NULL,
	status				text NOT NULL DEFAULT 'issued' CONSTRAINT coupon_status_valid
		CHECK (status IN ('issued', 'reserved', 'redeemed', 'expired')),
	order_ref			text,
	reserved_until		timestamptz,
	order_id			bigint,
	discount			numeric(14,2),
	redeemed_at			timestamptz,
	issue_key			text,
	CONSTRAINT coupon_reserved_fields CHECK ((status = 'reserved') = (reserved_until IS NOT NULL)),
	CONSTRAINT coupon_redeemed_fields CHECK ((status = 'redeemed') = (order_id IS NOT NULL AND redeemed_at IS NOT NULL AND discount IS NOT NULL))
);
CREATE INDEX coupon_customer_idx ON crm.coupon (customer_id, template_id);
CREATE INDEX coupon_reserved_idx ON crm.coupon (reserved_until) WHERE status = 'reserved';
CREATE INDEX coupon_valid_until_idx ON crm.coupon (valid_until) WHERE status IN ('issued', 'reserved');
CREATE UNIQUE INDEX coupon_issue_key_unique ON crm.coupon (issue_key) WHERE issue_key IS NOT NULL;
CREATE INDEX coupon_order_idx ON crm.coupon (order_id) WHERE order_id IS NOT NULL;
COMMENT ON TABLE crm.coupon IS
	'Coupons issued to customers: code (crm.coupon_code: random, with a check character), validity, and where the coupon stands: issued, reserved for an order (order_ref, until reserved_until), redeemed on an order (order_id, the discount given), or expired';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_id_seq', '');

-- How many coupons of a template a golden customer holds reserved or
-- redeemed: the row crm.coupon_take_use locks and counts against the
-- template's per_customer_limit, so that two checkouts at once cannot both
-- take the last use.
CREATE TABLE crm.coupon_usage (
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	used				integer NOT NULL CONSTRAINT coupon_usage_not_negative CHECK (used >= 0),
	PRIMARY KEY (customer_id, template_id)
);
COMMENT ON TABLE crm.coupon_usage IS 'Coupons of a template each golden customer holds reserved or redeemed (counted against per_customer_limit)';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_usage', '');

-- What each template's budget has spent per period (crm.coupon_take_budget
-- locks the row): redemptions and the discount they gave.
CREATE TABLE crm.coupon_budget (
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	period_start		timestamptz NOT NULL,
	redeemed			bigint NOT NULL CONSTRAINT coupon_budget_redeemed_not_negative CHECK (redeemed >= 0),
	discount			numeric(14,2) NOT NULL CONSTRAINT coupon_budget_discount_not_negative CHECK (discount >= 0),
	PRIMARY KEY (template_id, period_start)
);
COMMENT ON TABLE crm.coupon_budget IS 'Redemptions and discount given per coupon template and budget period (period_start -infinity: the template''s whole life)';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_budget', '');

CREATE SEQUENCE crm.coupon_journal_id_seq;
CREATE TABLE crm.coupon_journal (
	entry_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.coupon_journal_id_seq'),
	coupon_id			bigint NOT NULL,
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	change				text NOT NULL CONSTRAINT coupon_journal_change_valid
		CHECK (change IN ('issue', 'reserve', 'release', 'redeem', 'restore', 'expire')),
	order_ref			text,
	order_id			bigint,
	discount			numeric(14,2),
	at					timestamptz NOT NULL,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX coupon_journal_coupon_idx ON crm.coupon_journal (coupon_id);
COMMENT ON TABLE crm.coupon_journal IS 'Every change of a coupon (issue, reserve, release, redeem, restore after a refund, expire), written in the transaction that made it';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_journal', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_journal_id_seq', '');

CREATE FUNCTION crm.coupon_code() RETURNS text
	LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'crm_coupon_code';
COMMENT ON FUNCTION crm.coupon_code() IS
	'A new coupon code: 20 random Crockford base-32 characters (100 bits) and a check character';

CREATE FUNCTION crm.coupon_code_normal(typed text) RETURNS text
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_coupon_code_normal';
COMMENT ON FUNCTION crm.coupon_code_normal(text) IS
	'A typed coupon code as stored (upper case, I/L read as 1 and O as 0, hyphens and spaces dropped) when its check character matches; NULL when it is not a well-formed code';

-- ---------------------------------------------------------------------------
-- Issuing
-- ---------------------------------------------------------------------------

-- Takes n coupons of a template's stock (the template row locked until the
-- transaction ends) and returns the template; refuses a disabled template
-- (CR307), one whose fixed window has ended (CR302) and one with fewer than
-- n left (CR304).
CREATE FUNCTION crm.coupon_take_stock(template integer, n bigint, at timestamptz)
RETURNS crm.coupon_template
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.coupon_template;
BEGIN
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = template FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'coupon template % does not exist', template
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF NOT t.enabled THEN
		RAISE EXCEPTION 'coupon template "%" is disabled', t.name
			USING ERRCODE = 'CR307', HINT = 'UPDATE crm.coupon_template SET enabled = true to issue it again.';
	END IF;
	IF t.valid_until IS NOT NULL AND t.valid_until <= at THEN
		RAISE EXCEPTION 'coupon template "%" ended at %', t.name, t.valid_until
			USING ERRCODE = 'CR302';
	END IF;
	IF t.stock IS NOT NULL AND t.issued + n > t.stock THEN
		RAISE EXCEPTION 'coupon template "%" has % coupons left, % asked for', t.name, t.stock - t.issued, n
			USING ERRCODE = 'CR304';
	END IF;
	UPDATE crm.coupon_template x SET issued = x.issued + n WHERE x.template_id = template;
	t.issued := t.issued + n;
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_stock(integer, bigint, timestamptz) IS
	'Internal: takes n coupons of the template''s stock (row locked); CR307 disabled, CR302 ended, CR304 not enough left, 23503 unknown template';

-- The coupons of template t for customers (golden ids), issued at "at", in
-- one statement; journaled.  issue_keys, when given, holds each one's key
-- (same order).  Returns them.
CREATE FUNCTION crm.coupon_insert(t crm.coupon_template, customers bigint[], issue_keys text[], at timestamptz)
RETURNS SETOF crm.coupon
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN QUERY
	WITH made AS (
		INSERT INTO crm.coupon (code, template_id, customer_id, issued_at, valid_from, valid_until, issue_key)
		SELECT crm.coupon_code(), t.template_id, u.c, at, GREATEST(COALESCE(t.valid_from, at), at),
		       COALESCE(t.valid_until, at + pg_catalog.make_interval(days => t.valid_days)), u.k
		FROM ROWS FROM (pg_catalog.unnest(customers), pg_catalog.unnest(issue_keys)) u(c, k)
		RETURNING *),
	j AS (
		INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, at)
		SELECT m.coupon_id, m.customer_id, 'issue', at FROM made m)
	SELECT * FROM made;
END
$$;
COMMENT ON FUNCTION crm.coupon_insert(crm.coupon_template, bigint[], text[], timestamptz) IS
	'Internal: inserts and journals the coupons of a template for golden customers (with their issue keys, when given)';

CREATE FUNCTION crm.issue_coupon(template integer, customer_id bigint, issue_key text DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: issue_key may be NULL; other NULLs are errors.
DECLARE
	g bigint;
	c crm.coupon;
BEGIN
	PERFORM crm.refuse_on_citus('crm.issue_coupon()');
	IF template IS NULL OR customer_id IS NULL OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'crm.issue_coupon needs a template, a customer and a finite time'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	g := crm.lock_customer(customer_id);
	IF issue_key IS NOT NULL THEN
		-- exactly once per key: a retry returns the first code
		SELECT * INTO c FROM crm.coupon x WHERE x.issue_key = issue_coupon.issue_key;
		IF FOUND THEN
			IF c.template_id <> template OR crm.golden_customer(c.customer_id) <> g THEN
				RAISE EXCEPTION 'issue key "%" was used for another coupon', issue_key
					USING ERRCODE = 'CR002', HINT = 'An issue key names one coupon of one template for one customer.';
			END IF;
			RETURN c.code;
		END IF;
	END IF;
	BEGIN
		SELECT * INTO c FROM crm.coupon_insert(crm.coupon_take_stock(template, 1, at), ARRAY[g], ARRAY[issue_key], at);
	EXCEPTION WHEN unique_violation THEN
		-- a concurrent issue with the same key committed first: its coupon
		-- (the stock this one took is given back with the subtransaction)
		SELECT * INTO c FROM crm.coupon x WHERE x.issue_key = issue_coupon.issue_key;
		IF NOT FOUND THEN
			RAISE;
		END IF;
		IF c.template_id <> template OR crm.golden_customer(c.customer_id) <> g THEN
			RAISE EXCEPTION 'issue key "%" was used for another coupon', issue_key
				USING ERRCODE = 'CR002', HINT = 'An issue key names one coupon of one template for one customer.';
		END IF;
	END;
	RETURN c.code;
END
$$;
COMMENT ON FUNCTION crm.issue_coupon(integer, bigint, text, timestamptz) IS
	'Issues one coupon of a template to a customer (its golden customer) and returns the code; exactly once per issue_key (a retry returns the first code, CR002 for another template or customer); CR307 disabled template, CR302 ended, CR304 out of stock, 23503 unknown customer or template';

CREATE FUNCTION crm.issue_coupons(template integer, customers bigint[], at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- One coupon for each golden customer of the given records (a record and
-- its golden, or two records of one golden, get one), in one statement:
-- all or none (CR304 when the stock cannot cover them all).
DECLARE
	goldens bigint[];
BEGIN
	PERFORM crm.refuse_on_citus('crm.issue_coupons()');
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	goldens := ARRAY(SELECT DISTINCT crm.resolve_customer(u.c) FROM pg_catalog.unnest(customers) u(c) ORDER BY 1);
	IF pg_catalog.array_position(goldens, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'customers must not hold NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.lock_rows('crm.customer', goldens, 'SHARE');
	RETURN (SELECT pg_catalog.count(*) FROM crm.coupon_insert(
		crm.coupon_take_stock(template, pg_catalog.cardinality(goldens), at), goldens, NULL, at));
END
$$;
COMMENT ON FUNCTION crm.issue_coupons(integer, bigint[], timestamptz) IS
	'Issues one coupon of a template to the golden customer of each given record, all in one statement, and returns how many; CR304 when the stock cannot cover them all (none issued), CR307 disabled, CR302 ended, 23503 an unknown customer or template';

-- ---------------------------------------------------------------------------
-- Reserving and redeeming
-- ---------------------------------------------------------------------------

-- The coupon golden customer presents, locked (the caller locked the
-- customer first, crm.lock_customer): the code checked (CR301 for a
-- mistyped or unknown one), and the coupon the customer's (CR309).
CREATE FUNCTION crm.coupon_of(code text, golden bigint) RETURNS crm.coupon
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	normal text;
	c crm.coupon;
BEGIN
	PERFORM crm.refuse_on_citus('coupons');
	IF code IS NULL OR golden IS NULL THEN
		RAISE EXCEPTION 'a coupon code and a customer are needed' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	normal := crm.coupon_code_normal(code);
	IF normal IS NULL THEN
		RAISE EXCEPTION 'coupon code "%" is not a valid code', code
			USING ERRCODE = 'CR301', HINT = 'A code has 21 characters, the last a check character; check for a typing error.';
	END IF;
	SELECT * INTO c FROM crm.coupon x WHERE x.code = normal FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'coupon % does not exist', normal USING ERRCODE = 'CR301';
	END IF;
	IF crm.golden_customer(c.customer_id) <> golden THEN
		RAISE EXCEPTION 'coupon % belongs to another customer', normal USING ERRCODE = 'CR309';
	END IF;
	RETURN c;
END
$$;
COMMENT ON FUNCTION crm.coupon_of(text, bigint) IS
	'Internal: the coupon with a typed code, locked, presented by a golden customer the caller locked; CR301 unknown or mistyped code, CR309 another customer''s';

-- Counts one more use of the coupon's template against the golden
-- customer's limit (CR305 when none is left), or one fewer (used < 0).
CREATE FUNCTION crm.coupon_take_use(golden bigint, template integer, delta integer)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.coupon_template;
BEGIN
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = template;
	INSERT INTO crm.coupon_usage AS u (customer_id, template_id, used)
	VALUES (golden, template, GREATEST(delta, 0))
	ON CONFLICT (customer_id, template_id) DO UPDATE SET used = u.used + excluded.used + LEAST(delta, 0);
	IF delta > 0 AND t.per_customer_limit IS NOT NULL
	   AND (SELECT u.used FROM crm.coupon_usage u WHERE u.customer_id = golden AND u.template_id = template) > t.per_customer_limit THEN
		RAISE EXCEPTION 'customer % has used % coupons of template "%" already, its limit', golden, t.per_customer_limit, t.name
			USING ERRCODE = 'CR305', HINT = 'Coupons reserved for an order count until they are released or their reservation lapses.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_use(bigint, integer, integer) IS
	'Internal: counts delta uses of a template for a golden customer (the usage row locked); CR305 past the template''s per_customer_limit';

-- A coupon (locked by the caller) back to issued, its use given back and
-- the change journaled: a reservation released ('release', also one that
-- lapsed, found by the tick or the next checkout), or a redemption undone
-- by a refund ('restore', the budget's share given back too).
CREATE FUNCTION crm.coupon_give_back(c crm.coupon, change text, at timestamptz) RETURNS crm.coupon
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	was crm.coupon := c;
BEGIN
	UPDATE crm.coupon x SET status = 'issued', order_ref = NULL, reserved_until = NULL,
		order_id = NULL, discount = NULL, redeemed_at = NULL
	WHERE x.coupon_id = c.coupon_id AND x.customer_id = c.customer_id
	RETURNING * INTO c;
	PERFORM crm.coupon_take_use(crm.golden_customer(c.customer_id), c.template_id, -1);
	IF was.status = 'redeemed' THEN
		PERFORM crm.coupon_take_budget(x, was.redeemed_at, -1, was.discount) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	END IF;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_id, at)
	VALUES (c.coupon_id, c.customer_id, change, was.order_id, at);
	RETURN c;
END
$$;
COMMENT ON FUNCTION crm.coupon_give_back(crm.coupon, text, timestamptz) IS
	'Internal: a reserved or redeemed coupon (locked by the caller) issued again, its use (and a redemption''s budget share) given back, journaled as change (release or restore)';

-- Refuses a coupon that cannot be used at "at": expired (CR302), not yet
-- valid (CR303), used or reserved for another order (CR308).
CREATE FUNCTION crm.coupon_check_usable(c crm.coupon, at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF c.status = 'redeemed' THEN
		RAISE EXCEPTION 'coupon % was used on order %', c.code, c.order_id USING ERRCODE = 'CR308';
	END IF;
	IF c.status = 'reserved' THEN
		RAISE EXCEPTION 'coupon % is reserved for order "%" until %', c.code, c.order_ref, c.reserved_until
			USING ERRCODE = 'CR308', HINT = 'crm.release_coupon gives it back; the reservation also lapses by itself.';
	END IF;
	IF c.status = 'expired' OR c.valid_until <= at THEN
		RAISE EXCEPTION 'coupon % expired at %', c.code, c.valid_until USING ERRCODE = 'CR302';
	END IF;
	IF c.valid_from > at THEN
		RAISE EXCEPTION 'coupon % is valid from %', c.code, c.valid_from USING ERRCODE = 'CR303';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_usable(crm.coupon, timestamptz) IS
	'Internal: CR302 expired, CR303 not yet valid, CR308 used or reserved, for a coupon at a time';

-- Refuses a coupon of template t to a golden customer outside its
-- eligible tiers (CR307; a customer without an account is at the lowest
-- tier), when the template names any.
CREATE FUNCTION crm.coupon_check_eligible(t crm.coupon_template, golden bigint) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tier text;
BEGIN
	IF t.eligible_tiers IS NULL THEN
		RETURN;
	END IF;
	tier := crm.customer_tier(golden);
	IF tier IS NULL OR NOT tier = ANY (t.eligible_tiers) THEN
		RAISE EXCEPTION 'coupons of template "%" are for tiers %, customer % is %', t.name,
			pg_catalog.array_to_string(t.eligible_tiers, ', '), golden, tier
			USING ERRCODE = 'CR307';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_eligible(crm.coupon_template, bigint) IS
	'Internal: CR307 when a golden customer''s tier is not among the template''s eligible_tiers';

CREATE FUNCTION crm.reserve_coupon(code text, customer_id bigint, order_ref text,
	ttl interval DEFAULT '15 minutes', at timestamptz DEFAULT pg_catalog.now())
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns until when the coupon is held.
DECLARE
	c crm.coupon;
	g bigint;
BEGIN
	IF order_ref IS NULL OR ttl IS NULL OR ttl <= '0'::interval OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'a reservation needs an order reference, a positive ttl and a finite time'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	c := crm.coupon_of(code, g);
	IF c.status = 'reserved' AND c.reserved_until > at AND c.order_ref = reserve_coupon.order_ref THEN
		RETURN c.reserved_until;		-- a retry: the first reservation stands
	END IF;
	IF c.status = 'reserved' AND c.reserved_until <= at THEN
		c := crm.coupon_give_back(c, 'release', at);
	END IF;
	PERFORM crm.coupon_check_usable(c, at);
	PERFORM crm.coupon_check_eligible(x, g) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	PERFORM crm.coupon_take_use(g, c.template_id, 1);
	UPDATE crm.coupon x SET status = 'reserved', order_ref = reserve_coupon.order_ref, reserved_until = at + ttl
	WHERE x.coupon_id = c.coupon_id;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_ref, at)
	VALUES (c.coupon_id, c.customer_id, 'reserve', reserve_coupon.order_ref, at);
	RETURN at + ttl;
END
$$;
COMMENT ON FUNCTION crm.reserve_coupon(text, bigint, text, interval, timestamptz) IS
	'Holds a coupon for an order at checkout until at + ttl (counted against the customer''s limit meanwhile) and returns that time; a retry for the same order returns the first reservation; CR301 unknown code, CR302 expired, CR303 not yet valid, CR305 customer limit, CR307 tier not eligible, CR308 used or reserved for another order, CR309 another customer''s';

CREATE FUNCTION crm.release_coupon(code text, customer_id bigint, order_ref text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  False when the coupon was not reserved
-- for this order (released already, say): releasing is safe to retry.
DECLARE
	c crm.coupon;
BEGIN
	IF order_ref IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'releasing needs the order reference it was reserved for'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	c := crm.coupon_of(code, crm.lock_customer(customer_id));
	IF c.status <> 'reserved' OR c.order_ref <> release_coupon.order_ref THEN
		RETURN false;
	END IF;
	PERFORM crm.coupon_give_back(c, 'release', at);
	RETURN true;
END
$$;
COMMENT ON FUNCTION crm.release_coupon(text, bigint, text, timestamptz) IS
	'Gives back a coupon reserved for an order (checkout abandoned); false when it was not reserved for that order';

-- The discount a coupon of template t gives on an order of this amount.
CREATE FUNCTION crm.coupon_discount(t crm.coupon_template, amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE t.kind
	WHEN 'amount_off' THEN LEAST(t.amount_off, amount)
	WHEN 'percent_off' THEN LEAST(pg_catalog.round(amount * t.percent_off / 100, 2), COALESCE(t.max_discount, amount))
	ELSE 0 END;
COMMENT ON FUNCTION crm.coupon_discount(crm.coupon_template, numeric) IS
	'The discount a coupon of a template gives on an order amount: amount_off up to the amount, percent_off rounded to cents up to max_discount; 0 for free delivery and gift items';

-- Refuses a coupon of template t on an order that has coupons already
-- (CR310) unless all of them and t are combinable and none is of t.
CREATE FUNCTION crm.coupon_check_stacking(t crm.coupon_template, order_id bigint) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	other record;
BEGIN
	SELECT k.code, x.name, x.stacking, x.template_id INTO other
	FROM crm.coupon k JOIN crm.coupon_template x ON x.template_id = k.template_id
	WHERE k.order_id = coupon_check_stacking.order_id AND k.status = 'redeemed'
	  AND (t.stacking = 'exclusive' OR x.stacking = 'exclusive' OR x.template_id = t.template_id)
	ORDER BY k.coupon_id LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'order % has a coupon of template "%" already, which does not stack with one of "%"', order_id, other.name, t.name
			USING ERRCODE = 'CR310',
			      HINT = 'Only combinable coupons of different templates are used together on one order.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_stacking(crm.coupon_template, bigint) IS
	'Internal: CR310 when an order has a coupon already that a coupon of template t may not join (either exclusive, or the same template)';

-- The start of the budget period of template t that time "at" falls in:
-- the day, week or month in the loyalty programme's time zone, or
-- -infinity for a budget over the template's whole life.
CREATE FUNCTION crm.coupon_budget_period(t crm.coupon_template, at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN t.budget_period IS NULL THEN '-infinity'::timestamptz
            ELSE pg_catalog.date_trunc(t.budget_period, at, (SELECT p.time_zone FROM crm.loyalty_program p)) END;
COMMENT ON FUNCTION crm.coupon_budget_period(crm.coupon_template, timestamptz) IS
	'Internal: the start of the budget period of a coupon template that a time falls in (-infinity without a budget_period)';

-- Counts n redemptions giving value against the budget of template t in
-- the period of "at" (the budget row locked); CR306 past budget_count or
-- budget_value.  n = -1 gives a redemption back (a restored coupon).
CREATE FUNCTION crm.coupon_take_budget(t crm.coupon_template, at timestamptz, n integer, value numeric) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b crm.coupon_budget;
BEGIN
	IF t.budget_count IS NULL AND t.budget_value IS NULL THEN
		RETURN;
	END IF;
	IF n < 0 THEN
		-- (the row exists: the redemption given back was counted in it)
		UPDATE crm.coupon_budget x SET redeemed = x.redeemed + n, discount = x.discount + n * value
		WHERE x.template_id = t.template_id AND x.period_start = crm.coupon_budget_period(t, at);
		RETURN;
	END IF;
	INSERT INTO crm.coupon_budget AS x (template_id, period_start, redeemed, discount)
	VALUES (t.template_id, crm.coupon_budget_period(t, at), n, n * value)
	ON CONFLICT (template_id, period_start) DO UPDATE SET redeemed = x.redeemed + excluded.redeemed, discount = x.discount + excluded.discount
	RETURNING * INTO b;
	IF b.redeemed > t.budget_count OR b.discount > t.budget_value THEN
		RAISE EXCEPTION 'the budget of coupon template "%" is spent%: % redemptions (cap %), % of discount given (cap %)', t.name,
			CASE WHEN t.budget_period IS NULL THEN '' ELSE ' for this ' || t.budget_period END,
			b.redeemed - 1, COALESCE(t.budget_count::text, 'none'), b.discount - value, COALESCE(t.budget_value::text, 'none')
			USING ERRCODE = 'CR306';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_budget(crm.coupon_template, timestamptz, integer, numeric) IS
	'Internal: counts redemptions and their discount against a coupon template''s budget for the period (row locked); CR306 past budget_count or budget_value';

-- What of order o a coupon of template t applies to: the order's net
-- amount, or with eligible categories or skus the amount of its lines of
-- those (scaled down as the order was partly refunded).
CREATE FUNCTION crm.coupon_eligible_amount(t crm.coupon_template, o crm.orders) RETURNS numeric
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN t.eligible_categories IS NULL AND t.eligible_skus IS NULL THEN o.net_amount
            WHEN o.amount = 0 THEN 0
            ELSE pg_catalog.round(COALESCE((SELECT pg_catalog.sum(l.amount) FROM crm.order_line l
                                             WHERE l.order_id = o.order_id
                                               AND (l.category = ANY (t.eligible_categories) OR l.sku = ANY (t.eligible_skus))), 0)
                                  * o.net_amount / o.amount, 2) END;
COMMENT ON FUNCTION crm.coupon_eligible_amount(crm.coupon_template, crm.orders) IS
	'Internal: the amount of an order a coupon of a template applies to: its net amount, or the amount of its lines in the eligible categories or skus (scaled as the order was refunded)';

CREATE FUNCTION crm.redeem_coupon(code text, customer_id bigint, order_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS numeric
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns the discount given.
DECLARE
	c crm.coupon;
	g bigint;
	o crm.orders;
	t crm.coupon_template;
	d numeric;
	base numeric;
BEGIN
	IF order_id IS NULL OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'redeeming needs an order and a finite time' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Lock order: the customer, the order (so that coupons used on one
	-- order are decided one at a time: stacking), the coupon.
	g := crm.lock_customer(customer_id);
	SELECT * INTO o FROM crm.orders x WHERE x.order_id = redeem_coupon.order_id FOR NO KEY UPDATE;
	IF NOT FOUND OR o.customer_id <> g THEN
		RAISE EXCEPTION 'order % is not an order of customer %', order_id, customer_id
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	c := crm.coupon_of(code, g);
	IF c.status = 'redeemed' AND c.order_id = redeem_coupon.order_id THEN
		RETURN c.discount;				-- a retry on the same order: the first result
	END IF;
	-- A live reservation for this order (its reference, or the order id) is
	-- consumed; a lapsed one is released first; any other is refused.
	IF c.status = 'reserved' AND c.reserved_until <= at THEN
		c := crm.coupon_give_back(c, 'release', at);
	END IF;
	IF c.status = 'reserved' AND c.order_ref IN (o.external_ref, o.order_id::text) THEN
		PERFORM 1;						-- its use is counted already
	ELSE
		PERFORM crm.coupon_check_usable(c, at);
		PERFORM crm.coupon_check_eligible(x, g) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
		PERFORM crm.coupon_take_use(g, c.template_id, 1);
	END IF;
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	base := crm.coupon_eligible_amount(t, o);
	IF o.status <> 'paid' OR base < t.min_spend OR base = 0 THEN
		RAISE EXCEPTION 'order % does not qualify for coupon %: % spent%, % needed', order_id, c.code, base,
			CASE WHEN t.eligible_categories IS NULL AND t.eligible_skus IS NULL THEN '' ELSE ' on eligible lines' END,
			GREATEST(t.min_spend, 0.01)
			USING ERRCODE = 'CR307';
	END IF;
	PERFORM crm.coupon_check_stacking(t, o.order_id);
	d := crm.coupon_discount(t, GREATEST(base - CASE WHEN t.percent_base = 'after_discounts'
		THEN (SELECT COALESCE(pg_catalog.sum(k.discount), 0) FROM crm.coupon k WHERE k.order_id = o.order_id AND k.status = 'redeemed')
		ELSE 0 END, 0));
	PERFORM crm.coupon_take_budget(t, at, 1, d);
	UPDATE crm.coupon x SET status = 'redeemed', order_id = o.order_id, discount = d, redeemed_at = at,
		order_ref = COALESCE(x.order_ref, o.external_ref), reserved_until = NULL
	WHERE x.coupon_id = c.coupon_id;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_ref, order_id, discount, at)
	VALUES (c.coupon_id, c.customer_id, 'redeem', o.external_ref, o.order_id, d, at);
	RETURN d;
END
$$;
COMMENT ON FUNCTION crm.redeem_coupon(text, bigint, bigint, timestamptz) IS
	'Uses a coupon on a paid order of the customer and returns the discount, exactly once: a retry on the same order returns the first result; consumes a reservation for the order (its external_ref or order id); CR301 unknown code, CR302 expired, CR303 not yet valid, CR305 customer limit, CR306 budget spent, CR307 order below min_spend or not paid, CR308 used or reserved for another order, CR309 another customer''s, CR310 does not stack with a coupon used on the order, 23503 an order not the customer''s';

-- ---------------------------------------------------------------------------
-- Refunds: a fully refunded order gives its coupon back
-- ---------------------------------------------------------------------------

-- AFTER UPDATE statement trigger on crm.orders: the coupons redeemed on
-- orders this statement fully refunded come back (issued again, their use
-- given back, journaled 'restore') when their template says so
-- (restore_on_refund) and they are still valid; the others stay used.  On
-- a Citus shard it does nothing (coupons do not run on a cluster yet).
CREATE FUNCTION crm.coupons_on_refund() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c crm.coupon;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;
	END IF;
	FOR c IN
		SELECT k.* FROM crm_new n
		JOIN crm_old o ON o.order_id = n.order_id
		JOIN crm.coupon k ON k.order_id = n.order_id AND k.status = 'redeemed'
		JOIN crm.coupon_template t ON t.template_id = k.template_id
		WHERE n.status = 'refunded' AND o.status <> 'refunded'
		  AND t.restore_on_refund AND k.valid_until > pg_catalog.now()
		ORDER BY k.coupon_id
		FOR UPDATE OF k
	LOOP
		PERFORM crm.coupon_give_back(c, 'restore', pg_catalog.now());
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.coupons_on_refund() IS
	'Trigger: the coupons redeemed on orders an UPDATE fully refunded come back when their template has restore_on_refund and they are still valid (journaled restore, use given back)';
CREATE TRIGGER orders_coupons_refund AFTER UPDATE ON crm.orders
	REFERENCING OLD TABLE AS crm_old NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.coupons_on_refund();

-- ---------------------------------------------------------------------------
-- Time: reservations lapse, coupons expire (crm.tick)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.coupons_expire(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	c crm.coupon;
	n bigint := 0;
BEGIN
	-- Lapsed reservations give their use back, coupon by coupon in id
	-- order, each locked as a checkout would lock it (one being used now
	-- is left to its checkout, which releases or redeems it).
	FOR r IN SELECT x.coupon_id, x.customer_id FROM crm.coupon x
	         WHERE x.status = 'reserved' AND x.reserved_until <= at ORDER BY x.coupon_id LOOP
		SELECT * INTO c FROM crm.coupon x
		WHERE x.coupon_id = r.coupon_id AND x.customer_id = r.customer_id
		  AND x.status = 'reserved' AND x.reserved_until <= at
		FOR UPDATE SKIP LOCKED;
		IF FOUND THEN
			PERFORM crm.coupon_give_back(c, 'release', at);
			n := n + 1;
		END IF;
	END LOOP;
	-- Coupons past their validity that nobody holds expire.
	WITH gone AS (
		UPDATE crm.coupon x SET status = 'expired'
		WHERE x.status = 'issued' AND x.valid_until <= at
		RETURNING x.coupon_id, x.customer_id),
	j AS (
		INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, at)
		SELECT g.coupon_id, g.customer_id, 'expire', at FROM gone g)
	SELECT n + pg_catalog.count(*) INTO n FROM gone;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.coupons_expire(timestamptz) IS
	'crm.tick task: releases reservations that lapsed by "at" (their use given back) and expires unused coupons past valid_until; returns how many changed; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('coupons_expire', 120, 'crm.coupons_expire(timestamptz)'::regprocedure, true);

CREATE FUNCTION crm.coupons_expiring(within interval DEFAULT '7 days', at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (coupon_id bigint, code text, customer_id bigint, template text, valid_until timestamptz)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT c.coupon_id, c.code, c.customer_id, t.name, c.valid_until
	FROM crm.coupon c JOIN crm.coupon_template t ON t.template_id = c.template_id
	WHERE c.status = 'issued' AND c.valid_until > at AND c.valid_until <= at + within
	ORDER BY c.valid_until, c.coupon_id;
END;
COMMENT ON FUNCTION crm.coupons_expiring(interval, timestamptz) IS
	'Unused coupons that expire within the interval after "at" (a reminder campaign''s audience), soonest first';

-- ---------------------------------------------------------------------------
-- Merges: a customer's limits count on the golden customer
-- ---------------------------------------------------------------------------

-- The usage rows (coupons reserved or redeemed, per template) of golden
-- customers, recounted from their records' coupons: after a merge the
-- survivor holds both sides' uses, after an unmerge each side its own.  The
-- coupons are locked first (FOR SHARE, after the customers the merge
-- locked), so a tick releasing one of them decides before or after.
CREATE FUNCTION crm.coupon_recount(goldens bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	records bigint[] := ARRAY(SELECT c.customer_id FROM crm.customer c
	                          WHERE c.customer_id = ANY (goldens) OR c.merged_into = ANY (goldens) ORDER BY 1);
BEGIN
	PERFORM crm.lock_rows('crm.coupon', records, 'SHARE');
	DELETE FROM crm.coupon_usage u WHERE u.customer_id = ANY (records);
	INSERT INTO crm.coupon_usage (customer_id, template_id, used)
	SELECT COALESCE(r.merged_into, r.customer_id), k.template_id, pg_catalog.count(*)
	FROM crm.customer r JOIN crm.coupon k ON k.customer_id = r.customer_id
	WHERE r.customer_id = ANY (records) AND k.status IN ('reserved', 'redeemed')
	GROUP BY 1, 2;
END
$$;
COMMENT ON FUNCTION crm.coupon_recount(bigint[]) IS
	'Internal: recounts the coupon uses (reserved or redeemed, per template) of golden customers from their records'' coupons';

CREATE FUNCTION crm.coupons_on_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.coupon_recount(ARRAY[survivor, merged]);
END
$$;
COMMENT ON FUNCTION crm.coupons_on_merge(bigint, bigint) IS
	'Customer hook (merge, unmerge): the coupon uses of both customers recounted, so per-customer limits count on the golden customer';

CREATE FUNCTION crm.coupons_on_merge_set(survivors bigint[], merged bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.coupon_recount(survivors || merged);
END
$$;
COMMENT ON FUNCTION crm.coupons_on_merge_set(bigint[], bigint[]) IS
	'Customer hook (merge, set_fn): crm.coupons_on_merge for many merges at once';

INSERT INTO crm.customer_hook (event, hook, run_order, fn, builtin, set_fn) VALUES
	('merge', 'coupons', 200, 'crm.coupons_on_merge(bigint, bigint)'::regprocedure, true,
	 'crm.coupons_on_merge_set(bigint[], bigint[])'::regprocedure),
	('unmerge', 'coupons', 200, 'crm.coupons_on_merge(bigint, bigint)'::regprocedure, true, NULL);

-- ---------------------------------------------------------------------------
-- Tier benefits: crm.tier.benefits that come as coupons, issued by crm.tick
-- ---------------------------------------------------------------------------

-- Which coupon template a benefit of crm.tier.benefits gives, and how often:
-- every month, or once a year in the customer's birthday month.  A benefit
-- no row names (concierge, say) is a service, not a coupon.
CREATE TABLE crm.tier_benefit_coupon (
	benefit				text PRIMARY KEY CONSTRAINT tier_benefit_coupon_name_format CHECK (benefit ~ '^[a-z][a-z0-9_]{0,39}$'),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	every				text NOT NULL CONSTRAINT tier_benefit_coupon_every_valid CHECK (every IN ('month', 'birthday'))
);
COMMENT ON TABLE crm.tier_benefit_coupon IS
	'The tier benefits (keys of crm.tier.benefits set to true) that come as a coupon of template_id: every month, or every year in the member''s birthday month (every = birthday); issued by the tick task tier_benefits, once per member and period';
SELECT pg_catalog.pg_extension_config_dump('crm.tier_benefit_coupon', '');

CREATE FUNCTION crm.tier_benefits(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- For each benefit that comes as a coupon, one coupon to every golden
-- member whose tier has it (and, yearly, whose birthday month it is in the
-- programme's time zone), once per period: the period is in the coupon's
-- issue key (benefit:<benefit>:<period>:<customer>), which is unique, so a
-- second tick in the same period issues nothing.  Returns the coupons issued.
DECLARE
	b record;
	tz text := (SELECT p.time_zone FROM crm.loyalty_program p);
	period text;
	members bigint[];
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;		-- coupons do not run on a cluster yet
	END IF;
	FOR b IN SELECT * FROM crm.tier_benefit_coupon x ORDER BY x.benefit LOOP
		period := pg_catalog.to_char(at AT TIME ZONE tz, CASE b.every WHEN 'month' THEN 'YYYY-MM' ELSE 'YYYY' END);
		members := ARRAY(
			SELECT a.customer_id
			FROM crm.loyalty_account a
			JOIN crm.tier t ON t.tier = a.tier AND (t.benefits ->> b.benefit) = 'true'
			JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
			WHERE (b.every = 'month' OR pg_catalog.date_part('month', c.birthday) = pg_catalog.date_part('month', at AT TIME ZONE tz))
			  AND NOT EXISTS (SELECT 1 FROM crm.coupon k
			                  WHERE k.issue_key = pg_catalog.format('benefit:%s:%s:%s', b.benefit, period, a.customer_id))
			ORDER BY 1);
		IF members = '{}' THEN
			CONTINUE;
		END IF;
		PERFORM crm.lock_rows('crm.customer', members, 'SHARE');
		n := n + (SELECT pg_catalog.count(*) FROM crm.coupon_insert(
			crm.coupon_take_stock(b.template_id, pg_catalog.cardinality(members), at), members,
			ARRAY(SELECT pg_catalog.format('benefit:%s:%s:%s', b.benefit, period, u.c) FROM pg_catalog.unnest(members) WITH ORDINALITY u(c, i) ORDER BY u.i),
			at));
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.tier_benefits(timestamptz) IS
	'crm.tick task: issues the coupons of the tier benefits in crm.tier_benefit_coupon to every golden member whose tier has them (yearly ones in the birthday month), once per member and period (the period is in the issue key); returns how many; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('tier_benefits', 130, 'crm.tier_benefits(timestamptz)'::regprocedure, true);

-- ---------------------------------------------------------------------------
-- Reports
-- ---------------------------------------------------------------------------
CREATE VIEW crm.v_coupon_templates AS
SELECT t.template_id, t.name, t.kind, t.issued, t.stock,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'issued') AS open,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'reserved') AS reserved,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'redeemed') AS redeemed,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'expired') AS expired,
       pg_catalog.round(pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'redeemed')::numeric
                        / NULLIF(pg_catalog.count(c.coupon_id), 0), 4) AS redemption_rate,
       COALESCE(pg_catalog.sum(c.discount) FILTER (WHERE c.status = 'redeemed'), 0) AS discount_given
FROM crm.coupon_template t
LEFT JOIN crm.coupon c ON c.template_id = t.template_id
GROUP BY t.template_id;
COMMENT ON VIEW crm.v_coupon_templates IS
	'Per coupon template: coupons issued (and stock), open, reserved, redeemed and expired now, the redemption rate (redeemed / issued) and the discount given';
