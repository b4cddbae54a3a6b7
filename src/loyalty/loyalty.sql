
-- ===========================================================================
-- loyalty.sql: the member programme (tables, C triggers, entry points, tick
-- tasks, merge hooks).  The C side is src/loyalty/loyalty_{config,account,triggers}.c.
-- ===========================================================================

-- ---------------------------------------------------------------------------
-- Configuration
-- ---------------------------------------------------------------------------
CREATE TABLE crm.loyalty_program (
	program			text PRIMARY KEY DEFAULT 'default' CONSTRAINT loyalty_program_single CHECK (program = 'default'),
	time_zone		text NOT NULL DEFAULT 'UTC'
					CONSTRAINT loyalty_program_time_zone_valid CHECK (pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL),
	expiry_months	integer NOT NULL DEFAULT 12 CONSTRAINT loyalty_program_expiry_months_range CHECK (expiry_months BETWEEN 1 AND 120),
	expiry_rounding	text NOT NULL DEFAULT 'month_end' CONSTRAINT loyalty_program_expiry_rounding_valid CHECK (expiry_rounding IN ('month_end', 'exact')),
	tier_hold_months integer NOT NULL DEFAULT 12 CONSTRAINT loyalty_program_tier_hold_range CHECK (tier_hold_months BETWEEN 0 AND 120),
	builtin			boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.loyalty_program IS 'Programme-wide loyalty settings (one row): time zone of months and days, expiry policy, tier hold period';
COMMENT ON COLUMN crm.loyalty_program.time_zone IS 'Time zone in which months (expiry, qualifying spend, birthday month) and member days are counted';
COMMENT ON COLUMN crm.loyalty_program.expiry_months IS 'Points expire this many months after the month they were earned in';
COMMENT ON COLUMN crm.loyalty_program.expiry_rounding IS 'month_end: at the end of that month (default); exact: at the same local time of day and day of month (clamped to the month''s length)';
COMMENT ON COLUMN crm.loyalty_program.tier_hold_months IS 'A tier is kept at least this long after it was reached before crm.tick may lower it';
INSERT INTO crm.loyalty_program (program, builtin) VALUES ('default', true);

CREATE TABLE crm.tier (
	tier		text PRIMARY KEY CONSTRAINT tier_name_format CHECK (tier ~ '^[a-z][a-z0-9_]{0,39}$'),
	rank		integer NOT NULL CONSTRAINT tier_rank_unique UNIQUE CONSTRAINT tier_rank_positive CHECK (rank >= 1),
	threshold	numeric(14,2) NOT NULL CONSTRAINT tier_threshold_range CHECK (threshold >= 0 AND threshold <> 'NaN'::numeric),
	multiplier	numeric(6,3) NOT NULL DEFAULT 1 CONSTRAINT tier_multiplier_range CHECK (multiplier >= 0 AND multiplier <> 'NaN'::numeric),
	benefits	jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT tier_benefits_object CHECK (pg_catalog.jsonb_typeof(benefits) = 'object'),
	builtin		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.tier IS 'Member tiers: a higher rank needs a higher rolling 12-month qualifying spend (threshold) and multiplies earned points';
COMMENT ON COLUMN crm.tier.threshold IS 'Rolling 12-month qualifying spend that reaches this tier; the lowest rank must have threshold 0';
COMMENT ON COLUMN crm.tier.multiplier IS 'Multiplies the base points of every paid order of a member of this tier';
INSERT INTO crm.tier (tier, rank, threshold, multiplier, benefits, builtin) VALUES
	('bronze', 1,     0.00, 1.000, '{"birthday_gift": false}', true),
	('silver', 2,  1000.00, 1.250, '{"birthday_gift": true}', true),
	('gold',   3,  5000.00, 1.500, '{"birthday_gift": true, "free_delivery": true}', true),
	('black',  4, 20000.00, 2.000, '{"birthday_gift": true, "free_delivery": true, "concierge": true}', true);

CREATE TABLE crm.earn_rule (
	rule				text PRIMARY KEY CONSTRAINT earn_rule_name_format CHECK (rule ~ '^[a-z][a-z0-9_]{0,39}$'),
	priority			integer NOT NULL DEFAULT 0,
	valid_from			timestamptz NOT NULL DEFAULT '-infinity',
	valid_to			timestamptz NOT NULL DEFAULT 'infinity',
	points_per_unit		numeric(10,4) NOT NULL DEFAULT 1 CONSTRAINT earn_rule_points_per_unit_range CHECK (points_per_unit >= 0 AND points_per_unit <> 'NaN'::numeric),
	category_bonus		jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT earn_rule_category_bonus_valid
						CHECK (pg_catalog.jsonb_typeof(category_bonus) = 'object'
						       AND NOT pg_catalog.jsonb_path_exists(category_bonus, '$.* ? (@.type() != "number" || @ < 0 || @ > 100000)')),
	birthday_multiplier	numeric(6,3) NOT NULL DEFAULT 1 CONSTRAINT earn_rule_birthday_multiplier_range CHECK (birthday_multiplier >= 0 AND birthday_multiplier <> 'NaN'::numeric),
	member_day			integer CONSTRAINT earn_rule_member_day_range CHECK (member_day BETWEEN 1 AND 31),
	member_day_multiplier numeric(6,3) NOT NULL DEFAULT 1 CONSTRAINT earn_rule_member_day_multiplier_range CHECK (member_day_multiplier >= 0 AND member_day_multiplier <> 'NaN'::numeric),
	builtin				boolean NOT NULL DEFAULT false,
	CONSTRAINT earn_rule_window_valid CHECK (valid_from < valid_to)
);
COMMENT ON TABLE crm.earn_rule IS 'How paid orders earn points; the rule valid at the order time with the highest priority applies';
COMMENT ON COLUMN crm.earn_rule.points_per_unit IS 'Base points per currency unit of the order''s net amount (before multipliers)';
COMMENT ON COLUMN crm.earn_rule.category_bonus IS 'Extra points per currency unit of line amount, by category: {"baby": 2}; earned when the lines arrive, not multiplied';
COMMENT ON COLUMN crm.earn_rule.birthday_multiplier IS 'Multiplies base points of orders in the member''s birthday month (Feb 29 birthdays: February, every year)';
COMMENT ON COLUMN crm.earn_rule.member_day IS 'Day of the month that is member day (programme time zone); NULL for none';
INSERT INTO crm.earn_rule (rule, points_per_unit, category_bonus, birthday_multiplier, member_day, member_day_multiplier, builtin)
VALUES ('standard', 1, '{"baby": 1, "organic": 1}', 2, 8, 2, true);

-- Config changes reach every backend's cache (crm.config_changed), also when
-- they arrive with session_replication_role = replica (a restore): ALWAYS.
CREATE TRIGGER loyalty_program_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.loyalty_program
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.loyalty_program ENABLE ALWAYS TRIGGER loyalty_program_changed;
CREATE TRIGGER tier_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.tier
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.tier ENABLE ALWAYS TRIGGER tier_changed;
CREATE TRIGGER earn_rule_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.earn_rule
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.earn_rule ENABLE ALWAYS TRIGGER earn_rule_changed;

-- ---------------------------------------------------------------------------
-- Accounts, journal, tier history
-- ---------------------------------------------------------------------------
-- The row rules of accounts and journal entries are C calls: PostgreSQL
-- re-plans every CHECK expression at the start of each statement that
-- writes a table, and every paid order's statement writes both; as SQL
-- expressions these rules cost about a fifth of the points trigger on
-- single-row inserts.
CREATE FUNCTION crm.loyalty_account_valid(debt bigint, spend_cents bigint[])
	RETURNS boolean LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_loyalty_account_valid';
COMMENT ON FUNCTION crm.loyalty_account_valid(bigint, bigint[]) IS
	'CHECK of crm.loyalty_account: debt >= 0; spend_cents has 13 elements (12 in rows written before 0.2.0), none NULL';
CREATE TABLE crm.loyalty_account (
	customer_id		bigint PRIMARY KEY REFERENCES crm.customer (customer_id) ON DELETE CASCADE,
	ledger			crm.loyalty_ledger NOT NULL DEFAULT '{}',
	debt			bigint NOT NULL DEFAULT 0,
	tier			text NOT NULL REFERENCES crm.tier (tier) ON UPDATE CASCADE,
	tier_since		timestamptz NOT NULL,
	qualifying_spend numeric(20,2) NOT NULL DEFAULT 0,
	spend_month		integer NOT NULL DEFAULT 0,
	spend_cents		bigint[] NOT NULL DEFAULT '{0,0,0,0,0,0,0,0,0,0,0,0,0}',
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- No rule that the balance is >= 0: crm.loyalty_ledger guarantees it
	-- (every lot holds at least one point).
	CONSTRAINT loyalty_account_valid CHECK (crm.loyalty_account_valid(debt, spend_cents))
);
COMMENT ON TABLE crm.loyalty_account IS 'A member''s points (ledger, a cache of crm.points_journal), debt, tier and qualifying spend';
COMMENT ON COLUMN crm.loyalty_account.ledger IS 'Points as lots by expiry; crm.verify_ledgers() checks it against the journal';
COMMENT ON COLUMN crm.loyalty_account.debt IS 'Points clawed back by refunds that the balance could not cover; repaid from the next points earned';
COMMENT ON COLUMN crm.loyalty_account.qualifying_spend IS 'Rolling 12-month qualifying spend as of spend_month (the newest month with an order)';
COMMENT ON COLUMN crm.loyalty_account.spend_month IS 'Newest month with a qualifying order, as year * 12 + month - 1 in the programme time zone; never past the month after now()';
COMMENT ON COLUMN crm.loyalty_account.spend_cents IS 'Qualifying spend in cents of spend_month (element 1) and the 12 months before it: one more than a rolling spend counts, so an order dated into next month keeps every month that counts now';

-- Not STRICT: a row without an idempotency key is checked too.
CREATE FUNCTION crm.points_journal_entry_valid(kind text, points bigint, lots crm.loyalty_ledger, debt bigint,
	at timestamptz, idempotency_key text)
	RETURNS boolean LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_points_journal_entry_valid';
COMMENT ON FUNCTION crm.points_journal_entry_valid(text, bigint, crm.loyalty_ledger, bigint, timestamptz, text) IS
	'CHECK of crm.points_journal: kind is earn, spend, expire, adjust, clawback, reinstate or merge; points = +/- ledger_total(lots); earn and reinstate > 0, spend and expire < 0 (none of these with debt), clawback <= 0; at finite; a key has 1 to 200 characters, not all spaces';

CREATE SEQUENCE crm.points_journal_id_seq;
CREATE TABLE crm.points_journal (
	journal_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.points_journal_id_seq'::pg_catalog.regclass),
	-- No foreign keys here: rows are written only by crm_ext's own code for
	-- customers that have an account (which does reference crm.customer),
	-- and bulk loads would pay two key checks per row.
	customer_id		bigint NOT NULL,
	origin_customer_id bigint NOT NULL,
	kind			text NOT NULL,
	points			bigint NOT NULL,
	lots			crm.loyalty_ledger NOT NULL DEFAULT '{}',
	debt			bigint NOT NULL DEFAULT 0,
	order_id		bigint,
	idempotency_key	text,
	balance_after	bigint,
	reason			text,
	at				timestamptz NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by		name NOT NULL DEFAULT CURRENT_USER,
	CONSTRAINT points_journal_entry_valid CHECK (crm.points_journal_entry_valid(kind, points, lots, debt, at, idempotency_key))
);
ALTER SEQUENCE crm.points_journal_id_seq OWNED BY crm.points_journal.journal_id;
-- Partial: earn, expire and clawback rows (nearly all of them) have no key.
CREATE UNIQUE INDEX points_journal_idempotency_key_unique ON crm.points_journal (idempotency_key)
	WHERE idempotency_key IS NOT NULL;
CREATE INDEX points_journal_customer_idx ON crm.points_journal (customer_id);
CREATE INDEX points_journal_order_idx ON crm.points_journal (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX points_journal_origin_idx ON crm.points_journal (origin_customer_id) WHERE origin_customer_id <> customer_id;
COMMENT ON TABLE crm.points_journal IS 'Append-only journal of every points change (earn, spend, expire, adjust, clawback, reinstate, merge); the ledgers are its cache';
COMMENT ON COLUMN crm.points_journal.points IS 'Signed change to the balance: > 0 adds the lots, < 0 takes them out, 0 (merge notes) changes nothing';
COMMENT ON COLUMN crm.points_journal.lots IS 'The lots the entry added or took out (magnitudes); crm.ledger_agg(lots, points) over a customer''s rows rebuilds the ledger';
COMMENT ON COLUMN crm.points_journal.debt IS 'Signed change to the account''s debt (clawback shortfall > 0, repayment < 0)';
COMMENT ON COLUMN crm.points_journal.origin_customer_id IS 'The customer the points were earned or spent on; never changes (merges move customer_id)';
COMMENT ON COLUMN crm.points_journal.idempotency_key IS 'Redemptions and adjustments: a retry with the same key returns the first result';
COMMENT ON COLUMN crm.points_journal.balance_after IS 'Spend and adjust: the balance right after the entry (what a retry returns)';

CREATE FUNCTION crm.loyalty_merged_along(record bigint, target bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_loyalty_merged_along';
COMMENT ON FUNCTION crm.loyalty_merged_along(bigint, bigint) IS
	'Internal: is target the record itself or a record it is merged into now (directly or through others)';

CREATE FUNCTION crm.points_journal_guard() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_points_journal_guard';
COMMENT ON FUNCTION crm.points_journal_guard() IS
	'Rejects UPDATE, DELETE and TRUNCATE on crm.points_journal; only customer_id may change, to the row''s origin or a record the origin is merged into (in C: a merge moves every journal row of the merged record through it)';
CREATE TRIGGER points_journal_append_only BEFORE UPDATE OR DELETE ON crm.points_journal
	FOR EACH ROW EXECUTE FUNCTION crm.points_journal_guard();
CREATE TRIGGER points_journal_no_truncate BEFORE TRUNCATE ON crm.points_journal
	FOR EACH STATEMENT EXECUTE FUNCTION crm.points_journal_guard();
REVOKE UPDATE, DELETE, TRUNCATE ON crm.points_journal FROM PUBLIC;

CREATE SEQUENCE crm.tier_history_id_seq;
CREATE TABLE crm.tier_history (
	tier_history_id	bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.tier_history_id_seq'::pg_catalog.regclass),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id) ON DELETE CASCADE,
	from_tier		text,
	to_tier			text NOT NULL,
	changed_at		timestamptz NOT NULL,
	reason			text NOT NULL CONSTRAINT tier_history_reason_valid CHECK (reason IN ('upgrade', 'downgrade', 'merge', 'unmerge')),
	order_id		bigint,
	qualifying_spend numeric(20,2)
);
ALTER SEQUENCE crm.tier_history_id_seq OWNED BY crm.tier_history.tier_history_id;
CREATE INDEX tier_history_customer_idx ON crm.tier_history (customer_id, changed_at);
COMMENT ON TABLE crm.tier_history IS 'Every tier change: upgrades by orders, downgrades by crm.tick, and changes by merges';

SELECT pg_catalog.pg_extension_config_dump('crm.loyalty_program', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('crm.tier', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('crm.earn_rule', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('crm.loyalty_account', '');
SELECT pg_catalog.pg_extension_config_dump('crm.points_journal', '');
SELECT pg_catalog.pg_extension_config_dump('crm.points_journal_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('crm.tier_history', '');
SELECT pg_catalog.pg_extension_config_dump('crm.tier_history_id_seq', '');

-- ---------------------------------------------------------------------------
-- C helpers and triggers
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.loyalty_expires_at(earned_at timestamptz) RETURNS timestamptz
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_loyalty_expires_at';
COMMENT ON FUNCTION crm.loyalty_expires_at(timestamptz) IS
	'When points earned at earned_at expire, by the programme''s expiry policy (crm.loyalty_program)';

CREATE FUNCTION crm.loyalty_month(at timestamptz) RETURNS integer
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_loyalty_month';
COMMENT ON FUNCTION crm.loyalty_month(timestamptz) IS
	'The month of "at" in the programme time zone as year * 12 + month - 1';

-- The business rules of tiers and qualifying spend live once, in C
-- (src/loyalty/loyalty_account.c); the triggers use them directly and the
-- SQL paths (crm.qualifying_spend, tick tasks, merge hooks) through these.
CREATE FUNCTION crm.tier_for_spend(spend numeric) RETURNS text
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_tier_for_spend';
COMMENT ON FUNCTION crm.tier_for_spend(numeric) IS
	'The tier a rolling 12-month qualifying spend reaches: the highest rank whose threshold is at most spend; NULL for a negative spend; 22023 for NaN';

CREATE FUNCTION crm.tier_held(tier text, tier_since timestamptz, spend_month integer, spend_cents bigint[], at timestamptz)
	RETURNS text LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_tier_held';
COMMENT ON FUNCTION crm.tier_held(text, timestamptz, integer, bigint[], timestamptz) IS
	'The tier policy: the tier an account (tier, tier_since, spend buckets) holds at "at": the higher of the tier its rolling spend as of the month of "at" reaches and its tier while reached less than tier_hold_months before "at"; merges, unmerges and crm.tick''s downgrade set it, orders only raise it';

CREATE FUNCTION crm.spend_buckets_total(spend_month integer, spend_cents bigint[], at timestamptz) RETURNS numeric
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_spend_buckets_total';
COMMENT ON FUNCTION crm.spend_buckets_total(integer, bigint[], timestamptz) IS
	'Rolling qualifying spend at "at" of monthly buckets in cents (spend_cents[k] is month spend_month - k + 1): those of the month of "at" and the 11 before it (programme time zone), NULL elements counting 0';

CREATE FUNCTION crm.spend_buckets(ordered_at timestamptz[], net_amount numeric[],
	OUT spend_month integer, OUT spend_cents bigint[], OUT qualifying_spend numeric)
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_spend_buckets';
COMMENT ON FUNCTION crm.spend_buckets(timestamptz[], numeric[]) IS
	'An account''s 13 monthly qualifying-spend buckets built from its orders (pairs of ordered_at and net_amount): net amounts above 0 count, in cents, in the programme month of ordered_at (at most the month after now()); spend_month is the newest such month (0 for none); qualifying_spend the total of it and the 11 months before; pairs with a NULL are skipped';

CREATE FUNCTION crm.loyalty_orders_insert() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_loyalty_orders_insert';
COMMENT ON FUNCTION crm.loyalty_orders_insert() IS
	'AFTER INSERT statement trigger on crm.orders: paid orders earn points, add qualifying spend and upgrade tiers';
CREATE FUNCTION crm.loyalty_orders_update() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_loyalty_orders_update';
COMMENT ON FUNCTION crm.loyalty_orders_update() IS
	'AFTER UPDATE statement trigger on crm.orders: refunds (status refunded or refunded_amount raised) claw points back proportionally; an order crm.reassign_order moved takes the points it holds and its qualifying spend to the new customer';
CREATE FUNCTION crm.loyalty_orders_delete() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_loyalty_orders_delete';
COMMENT ON FUNCTION crm.loyalty_orders_delete() IS
	'AFTER DELETE statement trigger on crm.orders: a deleted paid order gives back its points (journaled as clawback, reason order deleted) and its qualifying spend';
CREATE FUNCTION crm.loyalty_lines_insert() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_loyalty_lines_insert';
COMMENT ON FUNCTION crm.loyalty_lines_insert() IS
	'AFTER INSERT statement trigger on crm.order_line: category bonus points for the lines of paid orders';

CREATE TRIGGER orders_loyalty_insert AFTER INSERT ON crm.orders
	REFERENCING NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_orders_insert();
CREATE TRIGGER orders_loyalty_update AFTER UPDATE ON crm.orders
	REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_orders_update();
CREATE TRIGGER orders_loyalty_delete AFTER DELETE ON crm.orders
	REFERENCING OLD TABLE AS loyalty_old
	FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_orders_delete();
CREATE TRIGGER order_line_loyalty_insert AFTER INSERT ON crm.order_line
	REFERENCING NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.loyalty_lines_insert();

-- ---------------------------------------------------------------------------
-- Entry points
-- ---------------------------------------------------------------------------
-- The journal entry with this idempotency key answers a retry with its first
-- result, or the key was used for something else (CR002); NULL when no
-- entry has the key.
CREATE FUNCTION crm.loyalty_replay(key text, customer_id bigint, kind text, points bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: a NULL key is no key; the other arguments are checked by the callers.
DECLARE
	j crm.points_journal;
BEGIN
	IF key IS NULL THEN
		RETURN NULL;
	END IF;
	SELECT * INTO j FROM crm.points_journal p WHERE p.idempotency_key OPERATOR(pg_catalog.=) key;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	IF j.origin_customer_id OPERATOR(pg_catalog.=) customer_id AND j.kind OPERATOR(pg_catalog.=) kind
	   AND j.points OPERATOR(pg_catalog.=) points THEN
		RETURN j.balance_after;
	END IF;
	RAISE EXCEPTION 'idempotency key "%" was already used with other arguments', j.idempotency_key
		USING ERRCODE = 'CR002',
		      DETAIL = pg_catalog.format('It was used for %s of %s points by customer %s.', j.kind, pg_catalog.abs(j.points), j.origin_customer_id),
		      HINT = 'Use a new key for a new request.';
END
$$;
COMMENT ON FUNCTION crm.loyalty_replay(text, bigint, text, bigint) IS
	'Internal: the first result of an idempotency key, NULL when the key is new, SQLSTATE CR002 when it was used with other arguments';

CREATE FUNCTION crm.loyalty_check_args(customer_id bigint, points bigint, key text, at timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: it reports NULLs.
BEGIN
	IF customer_id IS NULL OR points IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'customer_id, points and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF key IS NOT NULL AND (pg_catalog.btrim(key) OPERATOR(pg_catalog.=) '' OR pg_catalog.length(key) OPERATOR(pg_catalog.>) 200) THEN
		RAISE EXCEPTION 'an idempotency key must be 1 to 200 characters, not blank' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The range orders and events must lie in (crm.fill_origin_customer): a
	-- credit dated 9999-12-31 would never expire.  crm.max_future is unset
	-- only before the library is loaded, when it has its default.
	IF at OPERATOR(pg_catalog.<) '1900-01-01 00:00:00+00'::timestamptz THEN
		RAISE EXCEPTION 'at lies before 1900-01-01' USING ERRCODE = 'datetime_field_overflow',
			HINT = 'Correct the time: a date this old is a typing or feed error.';
	END IF;
	IF at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.+)
	   coalesce(pg_catalog.current_setting('crm.max_future', true), '1 day')::pg_catalog.interval) THEN
		RAISE EXCEPTION 'at lies more than crm.max_future (%) after now()',
			coalesce(pg_catalog.current_setting('crm.max_future', true), '1 day')
			USING ERRCODE = 'datetime_field_overflow',
			      HINT = 'Correct the time (and its time zone), or have a superuser raise crm.max_future.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) loyalty_check_args.customer_id) THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.loyalty_check_args(bigint, bigint, text, timestamptz) IS
	'Internal: argument checks shared by crm.redeem_points and crm.adjust_points';

CREATE FUNCTION crm.loyalty_now() RETURNS timestamptz
	LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_loyalty_now';
COMMENT ON FUNCTION crm.loyalty_now() IS
	'The time redemptions take for now() when deciding which lots have expired: setting crm.loyalty_now (superuser only; tests and replays of history) when set, else the transaction start';

-- The write both crm.redeem_points and crm.adjust_points make once their
-- arguments are checked: delta < 0 spends FIFO, delta > 0 adds a lot
-- expiring by policy.  customer_id may name a merged record: the golden
-- customer's account is used (locked FOR SHARE first, DEVELOPER.md "Lock
-- order"), and the journal row's origin_customer_id is the record named,
-- so an unmerge gives the entry back to it.  Exactly once per key: the key
-- is looked up before and after the account lock, and a unique violation
-- on insert means another customer's request with the same key committed
-- first.
CREATE FUNCTION crm.loyalty_post(customer_id bigint, kind text, delta bigint, idempotency_key text,
	reason text, at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_ledger crm.loyalty_ledger;
	new_ledger crm.loyalty_ledger;
	moved crm.loyalty_ledger;
	bal bigint;
	golden bigint;
BEGIN
	bal := crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	IF bal IS NOT NULL THEN
		RETURN bal;
	END IF;
	golden := crm.lock_customer(customer_id);
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		-- a credit opens the account at the lowest tier if there is none yet
		INSERT INTO crm.loyalty_account AS a (customer_id, tier, tier_since)
		SELECT golden, t.tier, at FROM crm.tier t ORDER BY t.rank LIMIT 1
		ON CONFLICT ON CONSTRAINT loyalty_account_pkey DO NOTHING;
	END IF;
	SELECT a.ledger INTO old_ledger FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'insufficient points: 0 available, % requested', - delta USING ERRCODE = 'CR001';
	END IF;
	-- A retry may have committed while this one waited for the lock.
	bal := crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	IF bal IS NOT NULL THEN
		RETURN bal;
	END IF;
	-- Lots expired by now() (crm.loyalty_now()) are gone, whatever "at"
	-- says: a backdated redemption spends, and the balance counts, only lots
	-- valid at both.
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		new_ledger := crm.ledger_earn(old_ledger, delta, at, crm.loyalty_expires_at(at));
	ELSE
		new_ledger := crm.ledger_spend(old_ledger, - delta, GREATEST(at, crm.loyalty_now()));
	END IF;
	bal := crm.ledger_balance(new_ledger, GREATEST(at, crm.loyalty_now()));
	-- (the lots that moved are computed here, not in the INSERT: Citus
	-- evaluates both branches of a CASE there, and the other one fails)
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		moved := new_ledger OPERATOR(crm.-) old_ledger;
	ELSE
		moved := old_ledger OPERATOR(crm.-) new_ledger;
	END IF;
	BEGIN
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, idempotency_key, balance_after, reason, at)
		VALUES (golden, customer_id, kind, delta, moved,
		        idempotency_key, bal, reason, at);
	EXCEPTION WHEN unique_violation THEN
		RETURN crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	END;
	UPDATE crm.loyalty_account a SET ledger = new_ledger, updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN bal;
END
$$;
COMMENT ON FUNCTION crm.loyalty_post(bigint, text, bigint, text, text, timestamptz) IS
	'Internal: the exactly-once journal entry and ledger change of crm.redeem_points (spend) and crm.adjust_points (adjust)';

CREATE FUNCTION crm.redeem_points(customer_id bigint, points bigint, idempotency_key text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments get a clear error instead of a silent NULL.
BEGIN
	PERFORM crm.loyalty_check_args(customer_id, points, idempotency_key, at);
	IF idempotency_key IS NULL THEN
		RAISE EXCEPTION 'a redemption needs an idempotency key' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'Pass a key unique to this redemption; a retry with the same key returns the first result.';
	END IF;
	IF points OPERATOR(pg_catalog.<=) 0 THEN
		RAISE EXCEPTION 'points to redeem must be positive, not %', points USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN crm.loyalty_post(customer_id, 'spend', - points, idempotency_key, NULL, at);
END
$$;
COMMENT ON FUNCTION crm.redeem_points(bigint, bigint, text, timestamptz) IS
	'Spends points FIFO by expiry, exactly once per idempotency key; returns the balance left.  A merged record''s id spends its golden customer''s points.  CR001 insufficient points, CR002 key reused with other arguments, 23503 unknown customer';

CREATE FUNCTION crm.adjust_points(customer_id bigint, points bigint, reason text,
	idempotency_key text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments get a clear error; idempotency_key may be NULL.
BEGIN
	PERFORM crm.loyalty_check_args(customer_id, points, idempotency_key, at);
	IF points OPERATOR(pg_catalog.=) 0 THEN
		RAISE EXCEPTION 'an adjustment must change the balance' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF reason IS NULL OR pg_catalog.btrim(reason) OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'an adjustment needs a reason' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'The reason is kept in crm.points_journal for audit.';
	END IF;
	RETURN crm.loyalty_post(customer_id, 'adjust', points, idempotency_key, reason, at);
END
$$;
COMMENT ON FUNCTION crm.adjust_points(bigint, bigint, text, text, timestamptz) IS
	'Audited manual correction: adds a lot (points > 0, expiring by policy) or spends FIFO (points < 0, CR001 when short) on the golden customer of the id given; journaled with reason and role; returns the balance';

-- The read entry points below find the account with one index probe; only
-- a customer without an account costs a second, here.
CREATE FUNCTION crm.loyalty_no_account(customer_id bigint) RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) loyalty_no_account.customer_id) THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	RETURN 0;
END
$$;
COMMENT ON FUNCTION crm.loyalty_no_account(bigint) IS
	'Internal: 0 for a customer without a loyalty account; SQLSTATE 23503 when no such customer exists';

CREATE FUNCTION crm.points_balance(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
-- (PL/pgSQL: the account is read by its golden id, a single-shard query on
-- Citus, and the customer without one checked in a statement of its own)
AS $$
DECLARE
	golden bigint := crm.resolve_customer(points_balance.customer_id);
	points bigint;
BEGIN
	SELECT crm.ledger_balance(a.ledger, at) INTO points FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(points, crm.loyalty_no_account(customer_id));
END $$;
COMMENT ON FUNCTION crm.points_balance(bigint, timestamptz) IS
	'Points a customer can spend at "at" (default now): lots not yet expired; 0 without an account; a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE FUNCTION crm.points_expiring(customer_id bigint, within interval DEFAULT '30 days',
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	golden bigint := crm.resolve_customer(points_expiring.customer_id);
	points bigint;
BEGIN
	SELECT crm.ledger_expiring(a.ledger, at, within) INTO points FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(points, crm.loyalty_no_account(customer_id));
END $$;
COMMENT ON FUNCTION crm.points_expiring(bigint, interval, timestamptz) IS
	'Points valid at "at" (default now) that expire within the interval (default 30 days); a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE FUNCTION crm.qualifying_spend(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS numeric
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	golden bigint := crm.resolve_customer(qualifying_spend.customer_id);
	spend numeric(20,2);
BEGIN
	SELECT crm.spend_buckets_total(a.spend_month, a.spend_cents, at)::pg_catalog.numeric(20,2) INTO spend
	FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(spend, crm.loyalty_no_account(customer_id)::pg_catalog.numeric(20,2));
END $$;
COMMENT ON FUNCTION crm.qualifying_spend(bigint, timestamptz) IS
	'Rolling qualifying spend: net paid amount of the month of "at" and the 11 before it (programme time zone); a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE FUNCTION crm.verify_ledgers()
RETURNS TABLE (customer_id bigint, what text, ledger_value bigint, journal_value bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH j AS (
		SELECT p.customer_id, l.expires_at,
		       pg_catalog.sum(CASE WHEN p.points OPERATOR(pg_catalog.>) 0 THEN l.points ELSE - l.points END)::bigint AS pts
		FROM crm.points_journal p, LATERAL crm.ledger_lots(p.lots) l
		WHERE p.points OPERATOR(pg_catalog.<>) 0
		GROUP BY 1, 2),
	a AS (
		SELECT a.customer_id, l.expires_at, l.points AS pts
		FROM crm.loyalty_account a, LATERAL crm.ledger_lots(a.ledger) l)
	SELECT coalesce(a.customer_id, j.customer_id),
	       'lot expiring ' OPERATOR(pg_catalog.||) coalesce(a.expires_at, j.expires_at)::text,
	       a.pts, j.pts
	FROM a FULL JOIN (SELECT * FROM j WHERE j.pts OPERATOR(pg_catalog.<>) 0) j
	  ON j.customer_id OPERATOR(pg_catalog.=) a.customer_id AND j.expires_at OPERATOR(pg_catalog.=) a.expires_at
	WHERE a.pts IS DISTINCT FROM j.pts
	UNION ALL
	SELECT a.customer_id, 'debt', a.debt, coalesce(d.debt, 0)
	FROM crm.loyalty_account a
	LEFT JOIN (SELECT p.customer_id, pg_catalog.sum(p.debt)::bigint AS debt FROM crm.points_journal p GROUP BY 1) d
	  ON d.customer_id OPERATOR(pg_catalog.=) a.customer_id
	WHERE a.debt OPERATOR(pg_catalog.<>) coalesce(d.debt, 0)
	UNION ALL
	SELECT p.customer_id, 'journal without account', NULL, pg_catalog.sum(p.points)::bigint
	FROM crm.points_journal p
	WHERE NOT EXISTS (SELECT 1 FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) p.customer_id)
	GROUP BY 1
	ORDER BY 1, 2
$$;
COMMENT ON FUNCTION crm.verify_ledgers() IS
	'Every account whose ledger or debt differs from what its journal rows add up to (points per expiry); must always be empty';

-- ---------------------------------------------------------------------------
-- Tick tasks: expiry and tier downgrade
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.loyalty_expire_points(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.loyalty_each_account('crm.loyalty_expire_account(timestamptz,bigint)',
		'crm.ledger_next_expiry(a.ledger) OPERATOR(pg_catalog.<=) $1', at);
END
$$;
COMMENT ON FUNCTION crm.loyalty_expire_points(timestamptz) IS
	'crm.tick task: journals and removes every lot that expired by "at"; returns the number of accounts changed';

CREATE FUNCTION crm.loyalty_expire_account(at timestamptz, customer bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- (Custom plans: with a customer, Citus routes the statement to its shard.)
-- Not STRICT: customer NULL is every account.
DECLARE
	n bigint;
BEGIN
	-- Lock in customer order (as redemptions do), then journal and remove
	-- every lot that expired by "at".  Idempotent: nothing is left to expire.
	WITH locked AS (
		SELECT a.customer_id, a.ledger FROM crm.loyalty_account a
		WHERE crm.ledger_next_expiry(a.ledger) OPERATOR(pg_catalog.<=) at
		  AND (customer IS NULL OR a.customer_id OPERATOR(pg_catalog.=) customer)
		ORDER BY a.customer_id FOR UPDATE),
	gone AS (
		SELECT l.customer_id, l.ledger, l.ledger OPERATOR(crm.-) crm.ledger_expire(l.ledger, at) AS lots
		FROM locked l
		WHERE crm.ledger_next_expiry(l.ledger) OPERATOR(pg_catalog.<=) at),
	j AS (
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, reason, at)
		SELECT g.customer_id, g.customer_id, 'expire', - crm.ledger_total(g.lots), g.lots, 'expired', at FROM gone g),
	u AS (
		UPDATE crm.loyalty_account a SET ledger = crm.ledger_expire(g.ledger, at), updated_at = pg_catalog.now()
		FROM gone g WHERE a.customer_id OPERATOR(pg_catalog.=) g.customer_id
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM u;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_expire_account(timestamptz, bigint) IS
	'Internal: crm.loyalty_expire_points for one customer''s account (NULL: every account); returns the accounts changed';

CREATE FUNCTION crm.loyalty_downgrade_tiers(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.loyalty_each_account('crm.loyalty_downgrade_account(timestamptz,bigint)',
		'a.tier OPERATOR(pg_catalog.<>) (SELECT t.tier FROM crm.tier t ORDER BY t.rank LIMIT 1)', at);
END
$$;
COMMENT ON FUNCTION crm.loyalty_downgrade_tiers(timestamptz) IS
	'crm.tick task: lowers tiers held at least tier_hold_months whose rolling 12-month spend at "at" no longer reaches them; returns how many changed';

CREATE FUNCTION crm.loyalty_downgrade_account(at timestamptz, customer bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- (Custom plans: with a customer, Citus routes the statement to its shard.)
-- Not STRICT: customer NULL is every account.
DECLARE
	n bigint;
	hold integer := (SELECT p.tier_hold_months FROM crm.loyalty_program p);
BEGIN
	-- Policy (crm.tier_held): a tier held at least tier_hold_months drops to
	-- the highest tier that the rolling 12-month spend at "at" still
	-- reaches.  Only lowers.  The tier_since filter only spares the lock on
	-- accounts whose tier is protected anyway.
	WITH cand AS (
		-- the account's own spend (crm.qualifying_spend would read a merged record's golden)
		SELECT a.customer_id, a.tier AS old_tier, cur.rank AS old_rank,
		       crm.spend_buckets_total(a.spend_month, a.spend_cents, at)::pg_catalog.numeric(20,2) AS spend,
		       crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, at) AS new_tier
		FROM crm.loyalty_account a JOIN crm.tier cur ON cur.tier OPERATOR(pg_catalog.=) a.tier
		WHERE cur.rank OPERATOR(pg_catalog.>) (SELECT pg_catalog.min(t.rank) FROM crm.tier t)
		  AND a.tier_since OPERATOR(pg_catalog.<=) (at OPERATOR(pg_catalog.-) pg_catalog.make_interval(months => hold))
		  AND (customer IS NULL OR a.customer_id OPERATOR(pg_catalog.=) customer)
		ORDER BY a.customer_id FOR UPDATE OF a),
	down AS (
		SELECT t.customer_id, t.old_tier, t.spend, t.new_tier FROM cand t JOIN crm.tier nt ON nt.tier OPERATOR(pg_catalog.=) t.new_tier
		JOIN crm.tier ot ON ot.tier OPERATOR(pg_catalog.=) t.old_tier
		WHERE nt.rank OPERATOR(pg_catalog.<) ot.rank),
	h AS (
		INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason, qualifying_spend)
		SELECT d.customer_id, d.old_tier, d.new_tier, at, 'downgrade', d.spend FROM down d),
	u AS (
		UPDATE crm.loyalty_account a SET tier = d.new_tier, tier_since = at, updated_at = pg_catalog.now()
		FROM down d WHERE a.customer_id OPERATOR(pg_catalog.=) d.customer_id
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM u;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_downgrade_account(timestamptz, bigint) IS
	'Internal: crm.loyalty_downgrade_tiers for one customer''s account (NULL: every account); returns the tiers lowered';

-- A tick task over accounts: fn(at, NULL) once on one node; on Citus, where
-- a statement locks rows of one shard, fn(at, customer) account by account
-- for the accounts that match cond (SQL over alias a; $1 is at), each
-- statement on the account's shard, in customer order (the lock order).
CREATE FUNCTION crm.loyalty_each_account(fn regprocedure, cond text, at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint := 0;
	k bigint;
	c bigint;
BEGIN
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('SELECT %s($1, NULL)', fn::oid::regproc) INTO n USING at;
		RETURN n;
	END IF;
	FOR c IN EXECUTE pg_catalog.format('SELECT a.customer_id FROM crm.loyalty_account a WHERE %s ORDER BY 1', cond) USING at LOOP
		EXECUTE pg_catalog.format('SELECT %s($1, $2)', fn::oid::regproc) INTO k USING at, c;
		n := n OPERATOR(pg_catalog.+) k;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_each_account(regprocedure, text, timestamptz) IS
	'Internal: runs a loyalty tick task fn(at, customer): once for every account on one node, account by account (those matching cond) on Citus; returns the sum';

INSERT INTO crm.tick_task (task, run_order, fn, builtin) VALUES
	('loyalty_expire_points', 100, 'crm.loyalty_expire_points(timestamptz)', true),
	('loyalty_downgrade_tiers', 110, 'crm.loyalty_downgrade_tiers(timestamptz)', true);

-- ---------------------------------------------------------------------------
-- Merge hooks
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.loyalty_recompute_spends(customer_ids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	id bigint;
BEGIN
	-- Which orders count and in which month is crm.spend_buckets' rule.
	IF crm.on_citus() THEN
		-- A statement per customer, on its shard (Citus routes a statement
		-- by its values, with a custom plan).
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
		FOREACH id IN ARRAY customer_ids LOOP
			UPDATE crm.loyalty_account a SET spend_month = s.spend_month, spend_cents = s.spend_cents,
				qualifying_spend = s.qualifying_spend, updated_at = pg_catalog.now()
			FROM (SELECT pg_catalog.array_agg(o.ordered_at) AS ordered_at, pg_catalog.array_agg(o.net_amount) AS net_amount
			      FROM crm.orders o WHERE o.customer_id OPERATOR(pg_catalog.=) id) o,
			     LATERAL crm.spend_buckets(coalesce(o.ordered_at, '{}'), coalesce(o.net_amount, '{}')) s
			WHERE a.customer_id OPERATOR(pg_catalog.=) id;
		END LOOP;
		RETURN;
	END IF;
	UPDATE crm.loyalty_account a SET spend_month = b.spend_month, spend_cents = b.spend_cents,
		qualifying_spend = b.qualifying_spend,
		updated_at = pg_catalog.now()
	FROM (SELECT u.id, s.spend_month, s.spend_cents, s.qualifying_spend
	      FROM pg_catalog.unnest(customer_ids) u(id),
	           LATERAL (SELECT pg_catalog.array_agg(o.ordered_at) AS ordered_at, pg_catalog.array_agg(o.net_amount) AS net_amount
	                    FROM crm.orders o
	                    WHERE o.customer_id OPERATOR(pg_catalog.=) u.id) o,
	           LATERAL crm.spend_buckets(coalesce(o.ordered_at, '{}'), coalesce(o.net_amount, '{}')) s) b
	WHERE a.customer_id OPERATOR(pg_catalog.=) b.id;
END
$$;
COMMENT ON FUNCTION crm.loyalty_recompute_spends(bigint[]) IS
	'Internal: rebuilds the monthly qualifying-spend buckets of the accounts of customer_ids from their orders (after merges), in one statement';

CREATE FUNCTION crm.loyalty_recompute_spend(customer_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.loyalty_recompute_spends(ARRAY[customer_id]);
END
$$;
COMMENT ON FUNCTION crm.loyalty_recompute_spend(bigint) IS
	'Internal: rebuilds an account''s monthly qualifying-spend buckets from its orders (after merges): crm.loyalty_recompute_spends for one';

-- A golden customer's tier: its account's, or the lowest tier for a
-- customer without an account (one who has earned nothing yet).
CREATE FUNCTION crm.customer_tier(golden bigint) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN COALESCE((SELECT a.tier FROM crm.loyalty_account a WHERE a.customer_id = golden),
                (SELECT x.tier FROM crm.tier x ORDER BY x.rank LIMIT 1));
COMMENT ON FUNCTION crm.customer_tier(bigint) IS
	'The tier of a golden customer: its loyalty account''s, or the lowest tier without an account';

CREATE FUNCTION crm.loyalty_ensure_account(customer_id bigint, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- PL/pgSQL, not SQL: its plan is kept per session (every merge calls it).
	INSERT INTO crm.loyalty_account (customer_id, tier, tier_since)
	SELECT loyalty_ensure_account.customer_id, t.tier, loyalty_ensure_account.at FROM crm.tier t ORDER BY t.rank LIMIT 1
	ON CONFLICT ON CONSTRAINT loyalty_account_pkey DO NOTHING;
END
$$;
COMMENT ON FUNCTION crm.loyalty_ensure_account(bigint, timestamptz) IS
	'Internal: creates a customer''s account at the lowest tier when it has none';

CREATE FUNCTION crm.loyalty_set_tier(customer_id bigint, tier text, tier_since timestamptz, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old text;
BEGIN
	-- The caller holds the account's lock.
	SELECT a.tier INTO old FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
	IF old OPERATOR(pg_catalog.=) tier THEN
		UPDATE crm.loyalty_account a SET tier_since = loyalty_set_tier.tier_since
		WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id
		  AND a.tier_since OPERATOR(pg_catalog.<>) loyalty_set_tier.tier_since;
		RETURN;
	END IF;
	UPDATE crm.loyalty_account a SET tier = loyalty_set_tier.tier, tier_since = loyalty_set_tier.tier_since,
		updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
	INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason, qualifying_spend)
	SELECT a.customer_id, old, a.tier, pg_catalog.now(), reason,
	       crm.spend_buckets_total(a.spend_month, a.spend_cents, crm.loyalty_now())::pg_catalog.numeric(20,2)
	FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
END
$$;
COMMENT ON FUNCTION crm.loyalty_set_tier(bigint, text, timestamptz, text) IS
	'Internal: sets an account''s tier and tier_since after a merge or unmerge; a change of tier goes to crm.tier_history with the reason and the rolling spend';

CREATE FUNCTION crm.loyalty_merge_tier(survivor bigint, s_tier text, s_since timestamptz, m_tier text, m_since timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a crm.loyalty_account;
	ts text;
	tm text;
	t text;
BEGIN
	-- The survivor's account holds the combined spend buckets by now.  Each
	-- side's tier counts as crm.tier_held says on the combined spend: the
	-- tier that spend reaches, or the side's own tier while it is protected
	-- (reached less than tier_hold_months ago); an unprotected tier above
	-- it is dropped, as crm.tick's downgrade would drop it.  The higher of
	-- the two wins and keeps its tier_since; a tier only the combined spend
	-- reaches starts now.
	SELECT * INTO a FROM crm.loyalty_account x WHERE x.customer_id OPERATOR(pg_catalog.=) survivor;
	ts := crm.tier_held(s_tier, s_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	tm := crm.tier_held(m_tier, m_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	t := CASE WHEN (SELECT r.rank FROM crm.tier r WHERE r.tier OPERATOR(pg_catalog.=) tm)
	               OPERATOR(pg_catalog.>) (SELECT r.rank FROM crm.tier r WHERE r.tier OPERATOR(pg_catalog.=) ts)
	          THEN tm ELSE ts END;
	PERFORM crm.loyalty_set_tier(survivor, t,
		CASE WHEN t OPERATOR(pg_catalog.=) s_tier THEN s_since
		     WHEN t OPERATOR(pg_catalog.=) m_tier THEN m_since
		     ELSE pg_catalog.now() END,
		'merge');
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge_tier(bigint, text, timestamptz, text, timestamptz) IS
	'Internal: the survivor''s tier after a merge, by crm.tier_held on the combined rolling spend for both sides'' tiers; the higher wins (tier history reason merge)';

CREATE FUNCTION crm.loyalty_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF survivor OPERATOR(pg_catalog.=) merged THEN
		RAISE EXCEPTION 'cannot merge customer % into itself', survivor USING ERRCODE = 'CR004';
	END IF;
	-- One merge is the set form's smallest case (one owner of the rules).
	PERFORM crm.loyalty_merge_set(ARRAY[survivor], ARRAY[merged]);
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge(bigint, bigint) IS
	'Customer hook (merge): moves the merged customer''s points, debt and journal rows into the survivor, whose tier is re-evaluated on the combined rolling spend (crm.loyalty_merge_set for one merge)';

CREATE FUNCTION crm.loyalty_unmerge_tier(customer_id bigint, merged_at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: merged_at is NULL for the restored side (its account's tier
-- was left alone while it was merged) and when the merge moved no points.
DECLARE
	a crm.loyalty_account;
	pre_tier text;
	pre_since timestamptz;
	t text;
BEGIN
	-- The tier the side held before the merge counts, not one it reached
	-- with the other side's spend (the merge's own re-evaluation and
	-- upgrades since): the first tier change since merged_at tells which.
	SELECT * INTO a FROM crm.loyalty_account x WHERE x.customer_id OPERATOR(pg_catalog.=) loyalty_unmerge_tier.customer_id;
	pre_tier := a.tier;
	pre_since := a.tier_since;
	IF merged_at IS NOT NULL THEN
		SELECT h.from_tier INTO t FROM crm.tier_history h
		WHERE h.customer_id OPERATOR(pg_catalog.=) a.customer_id AND h.changed_at OPERATOR(pg_catalog.>=) merged_at
		ORDER BY h.changed_at, h.tier_history_id LIMIT 1;
		IF t IS NOT NULL THEN
			pre_tier := t;
			pre_since := coalesce((SELECT pg_catalog.max(h.changed_at) FROM crm.tier_history h
			                       WHERE h.customer_id OPERATOR(pg_catalog.=) a.customer_id
			                         AND h.changed_at OPERATOR(pg_catalog.<) merged_at), pg_catalog.now());
		END IF;
	END IF;
	t := crm.tier_held(pre_tier, pre_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	PERFORM crm.loyalty_set_tier(a.customer_id, t,
		CASE WHEN t OPERATOR(pg_catalog.=) pre_tier THEN pre_since ELSE pg_catalog.now() END, 'unmerge');
END
$$;
COMMENT ON FUNCTION crm.loyalty_unmerge_tier(bigint, timestamptz) IS
	'Internal: one side''s tier after an unmerge: crm.tier_held on its own rolling spend for the tier it held before the merge (tier history reason unmerge)';

CREATE FUNCTION crm.loyalty_unmerge(survivor bigint, restored bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	side bigint;
	other bigint;
	merged_at timestamptz;
BEGIN
	PERFORM crm.loyalty_ensure_account(survivor, pg_catalog.now());
	PERFORM crm.loyalty_ensure_account(restored, pg_catalog.now());
	PERFORM crm.lock_rows('crm.loyalty_account', ARRAY[survivor, restored], 'UPDATE');
	-- When the merge moved points it left a note on the survivor: the
	-- survivor's tier changes since then came with the merged spend.
	SELECT pg_catalog.max(p.at) INTO merged_at FROM crm.points_journal p
	WHERE p.customer_id OPERATOR(pg_catalog.=) survivor AND p.origin_customer_id OPERATOR(pg_catalog.=) restored
	  AND p.kind OPERATOR(pg_catalog.=) 'merge' AND p.points OPERATOR(pg_catalog.=) 0;
	-- 1. Every journal row goes back to the golden record of the customer it
	--    was earned or spent on.
	PERFORM crm.move_customer_rows('crm.points_journal', restored,
		't.customer_id OPERATOR(pg_catalog.=) $2[1] AND t.origin_customer_id OPERATOR(pg_catalog.=) ANY ($3)',
		ARRAY[survivor], crm.records_under(restored));
	-- 2. Points one side spent (or lost to expiry) out of lots the other side
	--    earned, while merged, are charged to the side that earned them: a
	--    pair of 'merge' entries moves them per lot, so neither side ends with
	--    a negative lot.
	FOR r IN
		SELECT p.customer_id, l.expires_at,
		       pg_catalog.sum(CASE WHEN p.points OPERATOR(pg_catalog.>) 0 THEN l.points ELSE - l.points END)::bigint AS pts
		FROM crm.points_journal p, LATERAL crm.ledger_lots(p.lots) l
		WHERE p.customer_id IN (survivor, restored) AND p.points OPERATOR(pg_catalog.<>) 0
		GROUP BY 1, 2
		HAVING pg_catalog.sum(CASE WHEN p.points OPERATOR(pg_catalog.>) 0 THEN l.points ELSE - l.points END) OPERATOR(pg_catalog.<) 0
		ORDER BY 1, 2
	LOOP
		side := r.customer_id;
		other := CASE WHEN side OPERATOR(pg_catalog.=) survivor THEN restored ELSE survivor END;
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, reason, at) VALUES
			(other, other, 'merge', r.pts,
			 crm.ledger_earn('{}', - r.pts, r.expires_at OPERATOR(pg_catalog.-) '1 second'::interval, r.expires_at),
			 pg_catalog.format('unmerge of %s from %s: points of customer %s used by customer %s', restored, survivor, other, side), pg_catalog.now()),
			(side, side, 'merge', - r.pts,
			 crm.ledger_earn('{}', - r.pts, r.expires_at OPERATOR(pg_catalog.-) '1 second'::interval, r.expires_at),
			 pg_catalog.format('unmerge of %s from %s: points of customer %s used by customer %s', restored, survivor, other, side), pg_catalog.now());
	END LOOP;
	-- Debt follows the same rule.
	FOR r IN
		SELECT p.customer_id, pg_catalog.sum(p.debt)::bigint AS d FROM crm.points_journal p
		WHERE p.customer_id IN (survivor, restored) GROUP BY 1 HAVING pg_catalog.sum(p.debt) OPERATOR(pg_catalog.<) 0
	LOOP
		other := CASE WHEN r.customer_id OPERATOR(pg_catalog.=) survivor THEN restored ELSE survivor END;
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, debt, reason, at) VALUES
			(other, other, 'merge', 0, r.d, 'unmerge: debt repaid by the other customer', pg_catalog.now()),
			(r.customer_id, r.customer_id, 'merge', 0, - r.d, 'unmerge: debt repaid by the other customer', pg_catalog.now());
	END LOOP;
	INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, reason, at)
	VALUES (restored, restored, 'merge', 0, pg_catalog.format('unmerged customer %s from %s', restored, survivor), pg_catalog.now());
	-- 3. Both ledgers are rebuilt from their journal rows.
	UPDATE crm.loyalty_account a
	SET ledger = (SELECT crm.ledger_agg(p.lots, p.points) FROM crm.points_journal p WHERE p.customer_id OPERATOR(pg_catalog.=) a.customer_id),
	    debt = (SELECT coalesce(pg_catalog.sum(p.debt), 0) FROM crm.points_journal p WHERE p.customer_id OPERATOR(pg_catalog.=) a.customer_id),
	    updated_at = pg_catalog.now()
	WHERE a.customer_id IN (survivor, restored);
	PERFORM crm.loyalty_recompute_spend(survivor);
	PERFORM crm.loyalty_recompute_spend(restored);
	-- 4. Both sides' tiers are re-evaluated on their own spend.
	PERFORM crm.loyalty_unmerge_tier(survivor, merged_at);
	PERFORM crm.loyalty_unmerge_tier(restored, NULL);
END
$$;
COMMENT ON FUNCTION crm.loyalty_unmerge(bigint, bigint) IS
	'Customer hook (unmerge): journal rows return to the record they were earned or spent on; points one side used of the other''s lots are charged to the earner; both ledgers rebuilt; both tiers re-evaluated on their own rolling spend (crm.loyalty_unmerge_tier)';

CREATE FUNCTION crm.loyalty_merge_set(survivors bigint[], merged bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- The loyalty merge hook for many merges at once (survivors[i] absorbed
-- merged[i], in that order; crm.loyalty_merge is one, batch stitching
-- passes thousands): one statement per step over
-- all pairs, and each survivor's account and spend written once, so a
-- component of thousands of records costs one pass over its journal rows
-- instead of one pass per merge.  No customer may be both a survivor and a
-- merged one.
DECLARE
	ss bigint[];
	ms bigint[];
	ledgers crm.loyalty_ledger[];
	debts bigint[];
	r record;
	led crm.loyalty_ledger;
	l crm.loyalty_ledger;
	cur record;
BEGIN
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	IF EXISTS (SELECT s.id FROM pg_catalog.unnest(survivors) s(id)
	           INTERSECT SELECT m.id FROM pg_catalog.unnest(merged) m(id)) THEN
		RAISE EXCEPTION 'cannot merge a customer into itself or into a customer merged in the same step'
			USING ERRCODE = 'CR004';
	END IF;
	-- Pairs whose merged record has an account (the others have nothing to move).
	SELECT pg_catalog.array_agg(p.s ORDER BY p.i), pg_catalog.array_agg(p.m ORDER BY p.i) INTO ss, ms
	FROM ROWS FROM (pg_catalog.unnest(survivors), pg_catalog.unnest(merged)) WITH ORDINALITY p(s, m, i)
	WHERE p.m IN (SELECT a.customer_id FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) ANY (merged));
	IF ms IS NULL THEN
		RETURN;
	END IF;
	PERFORM crm.loyalty_ensure_account(x.s, pg_catalog.now())
	FROM (SELECT DISTINCT u.s FROM pg_catalog.unnest(ss) u(s)) x;
	-- Lock every account involved in customer-id order.
	PERFORM crm.lock_rows('crm.loyalty_account', ss OPERATOR(pg_catalog.||) ms, 'UPDATE');
	SELECT pg_catalog.array_agg(a.ledger ORDER BY p.i), pg_catalog.array_agg(a.debt ORDER BY p.i) INTO ledgers, debts
	FROM pg_catalog.unnest(ms) WITH ORDINALITY p(m, i) JOIN crm.loyalty_account a ON a.customer_id OPERATOR(pg_catalog.=) p.m;
	-- (one statement for thousands of merges: batch stitching)
	PERFORM crm.move_customers('crm.points_journal', ms, ss);
	INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, reason, at)
	SELECT p.s, p.m, 'merge', 0,
	       pg_catalog.format('merged customer %s into %s: %s points, %s debt moved', p.m, p.s, crm.ledger_total(p.l), p.d),
	       pg_catalog.now()
	FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ms), pg_catalog.unnest(ledgers), pg_catalog.unnest(debts)) WITH ORDINALITY p(s, m, l, d, i) ORDER BY p.i;
	-- Each survivor's ledger absorbs its merged ledgers, in merge order.
	FOR r IN
		SELECT p.s, pg_catalog.array_agg(p.l ORDER BY p.i) AS ls, pg_catalog.sum(p.d)::bigint AS d
		FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ledgers), pg_catalog.unnest(debts)) WITH ORDINALITY p(s, l, d, i)
		GROUP BY p.s ORDER BY p.s
	LOOP
		SELECT a.ledger INTO led FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
		FOREACH l IN ARRAY r.ls LOOP
			led := led OPERATOR(crm.+) l;
		END LOOP;
		UPDATE crm.loyalty_account a SET ledger = led, debt = a.debt OPERATOR(pg_catalog.+) r.d, updated_at = pg_catalog.now()
		WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
	END LOOP;
	UPDATE crm.loyalty_account a SET ledger = '{}', debt = 0, updated_at = pg_catalog.now()
	FROM pg_catalog.unnest(ms) u(id) WHERE a.customer_id OPERATOR(pg_catalog.=) u.id;
	PERFORM crm.loyalty_recompute_spends(ARRAY(SELECT DISTINCT u.c FROM pg_catalog.unnest(ss OPERATOR(pg_catalog.||) ms) u(c) ORDER BY 1));
	-- Each survivor's tier, re-evaluated on its combined spend merge by merge
	-- (crm.loyalty_merge_tier).  After a survivor's first merge, a merged
	-- account at the lowest tier cannot change it (its tier held is what the
	-- spend reaches, which the survivor's holds already), so only the first
	-- merge and merged accounts above the lowest tier are evaluated.
	FOR r IN
		SELECT q.s, q.tier, q.tier_since
		FROM (SELECT p.s, p.i, a.tier, a.tier_since, t.rank,
		             pg_catalog.row_number() OVER (PARTITION BY p.s ORDER BY p.i) AS nth
		      FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ms)) WITH ORDINALITY p(s, m, i)
		      JOIN crm.loyalty_account a ON a.customer_id OPERATOR(pg_catalog.=) p.m
		      JOIN crm.tier t ON t.tier OPERATOR(pg_catalog.=) a.tier) q
		WHERE q.nth OPERATOR(pg_catalog.=) 1 OR q.rank OPERATOR(pg_catalog.>) (SELECT pg_catalog.min(b.rank) FROM crm.tier b)
		ORDER BY q.i
	LOOP
		SELECT a.tier, a.tier_since INTO cur FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
		PERFORM crm.loyalty_merge_tier(r.s, cur.tier, cur.tier_since, r.tier, r.tier_since);
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge_set(bigint[], bigint[]) IS
	'Customer hook (merge, set_fn): moves each merged customer''s points, debt and journal rows into its survivor (survivors[i] absorbed merged[i], in order) in one pass over the journal rows; each survivor''s tier is re-evaluated on its combined rolling spend (crm.loyalty_merge_tier); crm.loyalty_merge is its one-merge case';

INSERT INTO crm.customer_hook (event, hook, run_order, fn, builtin, set_fn) VALUES
	('merge', 'loyalty', 100, 'crm.loyalty_merge(bigint, bigint)', true, 'crm.loyalty_merge_set(bigint[], bigint[])'),
	('unmerge', 'loyalty', 100, 'crm.loyalty_unmerge(bigint, bigint)', true, NULL);
