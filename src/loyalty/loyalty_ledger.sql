
-- ===========================================================================
-- loyalty_ledger.sql: the crm.loyalty_ledger type (C, src/loyalty/loyalty_ledger.c)
-- ===========================================================================

CREATE TYPE crm.loyalty_ledger;

CREATE FUNCTION crm.loyalty_ledger_in(cstring) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_in';
COMMENT ON FUNCTION crm.loyalty_ledger_in(cstring) IS
	'Text input of crm.loyalty_ledger: {(points,expires_at,earned_at,source_order),...} with UTC timestamps YYYY-MM-DDTHH:MM:SSZ; sorts and coalesces lots';
CREATE FUNCTION crm.loyalty_ledger_out(crm.loyalty_ledger) RETURNS cstring
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_out';
COMMENT ON FUNCTION crm.loyalty_ledger_out(crm.loyalty_ledger) IS 'Text output of crm.loyalty_ledger';
CREATE FUNCTION crm.loyalty_ledger_recv(internal) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_recv';
COMMENT ON FUNCTION crm.loyalty_ledger_recv(internal) IS 'Binary input of crm.loyalty_ledger; validates every field';
CREATE FUNCTION crm.loyalty_ledger_send(crm.loyalty_ledger) RETURNS bytea
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_send';
COMMENT ON FUNCTION crm.loyalty_ledger_send(crm.loyalty_ledger) IS 'Binary output of crm.loyalty_ledger';

CREATE TYPE crm.loyalty_ledger (
	INPUT = crm.loyalty_ledger_in,
	OUTPUT = crm.loyalty_ledger_out,
	RECEIVE = crm.loyalty_ledger_recv,
	SEND = crm.loyalty_ledger_send,
	INTERNALLENGTH = VARIABLE,
	ALIGNMENT = double,
	STORAGE = extended
);
COMMENT ON TYPE crm.loyalty_ledger IS
	'A customer''s points as lots (points, expires_at, earned_at, source order) sorted by expiry; lots of equal expiry coalesce';

CREATE FUNCTION crm.ledger_earn(ledger crm.loyalty_ledger, points bigint, earned_at timestamptz,
	expires_at timestamptz, source_order bigint DEFAULT NULL) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_earn';
COMMENT ON FUNCTION crm.ledger_earn(crm.loyalty_ledger, bigint, timestamptz, timestamptz, bigint) IS
	'Adds a lot of points earned at earned_at that expire at expires_at (not STRICT: a NULL source_order means none; NULL elsewhere gives NULL)';

CREATE FUNCTION crm.ledger_spend(ledger crm.loyalty_ledger, points bigint, at timestamptz)
	RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_spend';
COMMENT ON FUNCTION crm.ledger_spend(crm.loyalty_ledger, bigint, timestamptz) IS
	'Spends points FIFO by expiry from the lots still valid at "at"; SQLSTATE CR001 (insufficient points) when short';

CREATE FUNCTION crm.ledger_balance(ledger crm.loyalty_ledger, at timestamptz) RETURNS bigint
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_balance';
COMMENT ON FUNCTION crm.ledger_balance(crm.loyalty_ledger, timestamptz) IS
	'Points valid at "at" (lots with expires_at > at)';

CREATE FUNCTION crm.ledger_total(ledger crm.loyalty_ledger) RETURNS bigint
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_total';
COMMENT ON FUNCTION crm.ledger_total(crm.loyalty_ledger) IS
	'Every point the ledger holds, including lots past their expiry that crm.tick has not removed yet';

CREATE FUNCTION crm.ledger_expiring(ledger crm.loyalty_ledger, at timestamptz, within interval) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_expiring';
COMMENT ON FUNCTION crm.ledger_expiring(crm.loyalty_ledger, timestamptz, interval) IS
	'Points valid at "at" that expire by at + within (STABLE: adding months and days follows the session TimeZone)';

CREATE FUNCTION crm.ledger_expire(ledger crm.loyalty_ledger, at timestamptz) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_expire';
COMMENT ON FUNCTION crm.ledger_expire(crm.loyalty_ledger, timestamptz) IS
	'The ledger without the lots that expired by "at" (expires_at <= at)';

CREATE FUNCTION crm.ledger_merge(a crm.loyalty_ledger, b crm.loyalty_ledger) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_merge';
COMMENT ON FUNCTION crm.ledger_merge(crm.loyalty_ledger, crm.loyalty_ledger) IS
	'Every lot of both ledgers, lots of equal expiry coalesced (operator +)';

CREATE FUNCTION crm.ledger_minus(a crm.loyalty_ledger, b crm.loyalty_ledger) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_minus';
COMMENT ON FUNCTION crm.ledger_minus(crm.loyalty_ledger, crm.loyalty_ledger) IS
	'a with b''s points taken out of a''s lots of the same expiry; CR001 when a lacks them (operator -)';

CREATE FUNCTION crm.ledger_eq(a crm.loyalty_ledger, b crm.loyalty_ledger) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_eq';
COMMENT ON FUNCTION crm.ledger_eq(crm.loyalty_ledger, crm.loyalty_ledger) IS
	'True when both ledgers hold the same lots (operator =)';

CREATE FUNCTION crm.ledger_ne(a crm.loyalty_ledger, b crm.loyalty_ledger) RETURNS boolean
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN NOT crm.ledger_eq(a, b);
COMMENT ON FUNCTION crm.ledger_ne(crm.loyalty_ledger, crm.loyalty_ledger) IS
	'True when the ledgers differ (operator <>)';

CREATE FUNCTION crm.ledger_next_expiry(ledger crm.loyalty_ledger) RETURNS timestamptz
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_next_expiry';
COMMENT ON FUNCTION crm.ledger_next_expiry(crm.loyalty_ledger) IS
	'When the ledger''s earliest lot expires; NULL for an empty ledger';

CREATE FUNCTION crm.ledger_lot_count(ledger crm.loyalty_ledger) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_lot_count';
COMMENT ON FUNCTION crm.ledger_lot_count(crm.loyalty_ledger) IS 'Number of lots in the ledger';

CREATE FUNCTION crm.ledger_lots(ledger crm.loyalty_ledger,
	OUT points bigint, OUT expires_at timestamptz, OUT earned_at timestamptz, OUT source_order bigint)
	RETURNS SETOF record
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE ROWS 13 AS 'MODULE_PATHNAME', 'crm_ledger_lots';
COMMENT ON FUNCTION crm.ledger_lots(crm.loyalty_ledger) IS
	'The lots of a ledger, one row each, in expiry order (source_order NULL for none or several orders)';

CREATE OPERATOR crm.+ (LEFTARG = crm.loyalty_ledger, RIGHTARG = crm.loyalty_ledger,
	FUNCTION = crm.ledger_merge, COMMUTATOR = OPERATOR(crm.+));
COMMENT ON OPERATOR crm.+ (crm.loyalty_ledger, crm.loyalty_ledger) IS 'crm.ledger_merge';
CREATE OPERATOR crm.- (LEFTARG = crm.loyalty_ledger, RIGHTARG = crm.loyalty_ledger,
	FUNCTION = crm.ledger_minus);
COMMENT ON OPERATOR crm.- (crm.loyalty_ledger, crm.loyalty_ledger) IS 'crm.ledger_minus';
CREATE OPERATOR crm.= (LEFTARG = crm.loyalty_ledger, RIGHTARG = crm.loyalty_ledger,
	FUNCTION = crm.ledger_eq, COMMUTATOR = OPERATOR(crm.=), NEGATOR = OPERATOR(crm.<>));
COMMENT ON OPERATOR crm.= (crm.loyalty_ledger, crm.loyalty_ledger) IS 'crm.ledger_eq';
CREATE OPERATOR crm.<> (LEFTARG = crm.loyalty_ledger, RIGHTARG = crm.loyalty_ledger,
	FUNCTION = crm.ledger_ne, COMMUTATOR = OPERATOR(crm.<>), NEGATOR = OPERATOR(crm.=));
COMMENT ON OPERATOR crm.<> (crm.loyalty_ledger, crm.loyalty_ledger) IS 'crm.ledger_ne';

-- ledger_agg: rebuilds a ledger from journal rows (lots, signed points).
CREATE FUNCTION crm.ledger_agg_trans(internal, crm.loyalty_ledger, bigint) RETURNS internal
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_agg_trans';
COMMENT ON FUNCTION crm.ledger_agg_trans(internal, crm.loyalty_ledger, bigint) IS
	'Transition function of crm.ledger_agg (not STRICT: starts the state on the first row; NULL rows change nothing)';
CREATE FUNCTION crm.ledger_agg_combine(internal, internal) RETURNS internal
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_agg_combine';
COMMENT ON FUNCTION crm.ledger_agg_combine(internal, internal) IS
	'Combine function of crm.ledger_agg (not STRICT: either state may be missing)';
CREATE FUNCTION crm.ledger_agg_serialize(internal) RETURNS bytea
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_agg_serialize';
COMMENT ON FUNCTION crm.ledger_agg_serialize(internal) IS 'Serialize function of crm.ledger_agg';
CREATE FUNCTION crm.ledger_agg_deserialize(bytea, internal) RETURNS internal
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_agg_deserialize';
COMMENT ON FUNCTION crm.ledger_agg_deserialize(bytea, internal) IS 'Deserialize function of crm.ledger_agg; checks lengths';
CREATE FUNCTION crm.ledger_agg_final(internal) RETURNS crm.loyalty_ledger
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_ledger_agg_final';
COMMENT ON FUNCTION crm.ledger_agg_final(internal) IS
	'Final function of crm.ledger_agg (not STRICT: no rows give the empty ledger)';

CREATE AGGREGATE crm.ledger_agg(lots crm.loyalty_ledger, points bigint) (
	SFUNC = crm.ledger_agg_trans,
	STYPE = internal,
	FINALFUNC = crm.ledger_agg_final,
	COMBINEFUNC = crm.ledger_agg_combine,
	SERIALFUNC = crm.ledger_agg_serialize,
	DESERIALFUNC = crm.ledger_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.ledger_agg(crm.loyalty_ledger, bigint) IS
	'Rebuilds a ledger from journal rows: a row with points > 0 adds its lots, points < 0 takes them out; |points| must equal the total of the row''s lots (22023 otherwise); order does not matter';
