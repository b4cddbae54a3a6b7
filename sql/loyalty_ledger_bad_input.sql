-- crm.loyalty_ledger bad input: ledger_agg rows whose points disagree with
-- their lots, and random or mutated bytes through binary input (COPY
-- BINARY) and text input, each a clean ERROR with a documented SQLSTATE.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';

-- ledger_agg(lots, points): |points| is the total of the row's lots, as in
-- crm.points_journal; a row that disagrees is 22023, not ignored.
CREATE TEMP TABLE ten (lots crm.loyalty_ledger);
INSERT INTO ten VALUES ('{(4,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1),(6,2026-03-01T00:00:00Z,2025-02-15T00:00:00Z,2)}');
SELECT crm.ledger_total(lots) AS lots_total FROM ten;
SELECT crm.ledger_total(crm.ledger_agg(lots, 10)) AS agg_matching FROM ten;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, 3) FROM ten$$) AS agg_fewer_points;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, 11) FROM ten$$) AS agg_more_points;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, 0) FROM ten$$) AS agg_zero_with_lots;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, -3) FROM ten$$) AS agg_negative_fewer;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, -9223372036854775808) FROM ten$$) AS agg_min_bigint;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg('{}', 5)$$) AS agg_points_without_lots;
SELECT crm.ledger_agg('{}', 0) AS agg_zero_empty, crm.ledger_agg(NULL, 5) AS agg_null_lots, crm.ledger_agg(lots, NULL) AS agg_null_points FROM ten;
-- taking out more than was put in is the caller's mistake too: 22023
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(l, p) FROM (VALUES
	('{(5,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,)}'::crm.loyalty_ledger, 5::bigint),
	('{(7,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,)}'::crm.loyalty_ledger, -7::bigint)) v(l, p)$$) AS agg_takes_too_much;
-- the same check in parallel workers (the transition function runs there)
CREATE TEMP TABLE many AS
SELECT g, crm.ledger_earn('{}', 1 + g % 7, '2025-01-01+00', timestamptz '2026-01-01+00' + (g % 13) * interval '1 month', g) AS lots,
       (1 + g % 7)::bigint + CASE WHEN g = 15000 THEN 1 ELSE 0 END AS points
FROM generate_series(1, 20000) g;
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, points) FROM many$$) AS agg_parallel_mismatch;
RESET parallel_setup_cost; RESET parallel_tuple_cost; RESET min_parallel_table_scan_size; RESET max_parallel_workers_per_gather;

-- Binary input through COPY BINARY: 400 payloads from md5 of a counter:
-- random bytes, a valid two-lot payload with one byte set, truncated or
-- extended, and a valid header over random lots.  Every payload is either
-- accepted (and then round-trips through text) or 22P03.
CREATE TEMP TABLE bin_dst (l crm.loyalty_ledger);
CREATE FUNCTION pg_temp.rnd(seed text, n int) RETURNS bytea LANGUAGE sql AS $$
	SELECT coalesce(substr(decode(string_agg(md5(seed || ':' || k), '' ORDER BY k), 'hex'), 1, n), '\x')
	FROM generate_series(0, n / 16) k
$$;
CREATE FUNCTION pg_temp.copy_in(payload bytea) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	f text := format('/tmp/crm_ext_ledger_fuzz_%s.bin', pg_backend_pid());
	o oid;
BEGIN
	o := lo_from_bytea(0, '\x5047434f50590aff0d0a00'::bytea || '\x0000000000000000'::bytea || '\x0001'::bytea
	                      || int4send(length(payload)) || payload || '\xffff'::bytea);
	PERFORM lo_export(o, f);
	PERFORM lo_unlink(o);
	TRUNCATE bin_dst;
	EXECUTE format('COPY bin_dst FROM %L WITH (FORMAT binary)', f);
	RETURN CASE WHEN (SELECT bool_and(l::text::crm.loyalty_ledger OPERATOR(crm.=) l) FROM bin_dst) THEN 'accepted' ELSE 'round trip differs' END;
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
-- lots lie in the years 1 to 9999 UTC, which the text form writes: binary
-- input took lots in year 289790 whose text form did not read back
SELECT name, pg_temp.copy_in('\x0001'::bytea || int4send(1) || int8send(5) || int8send(e) || int8send(r) || int8send(0)) AS result
FROM (VALUES ('last microsecond of 9999', 252455615999999999, 0),
             ('year 10000', 252455616000000000, 0),
             ('first microsecond of year 1', 0, -63082281600000000),
             ('before year 1', 0, -63082281600000001),
             ('year 289790', 9079999999999999999, 0)) v(name, e, r)
ORDER BY name;
SELECT pg_temp.expect_error($$SELECT crm.ledger_earn('{}', 5, '2025-01-01+00', '10000-01-01+00')$$) AS earn_year_10000;
SELECT pg_temp.expect_error($$SELECT crm.ledger_earn('{}', 5, '0001-12-31 23:59:59.999999+00 BC', '2025-01-01+00')$$) AS earn_before_year_1;
SELECT crm.ledger_earn('{}', 5, '0001-01-01+00', '9999-12-31 23:59:59.999999+00') AS earn_bounds;

CREATE TEMP TABLE payload AS
WITH valid AS (
	SELECT crm.loyalty_ledger_send('{(4,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1),(6,2026-03-01T00:00:00Z,2025-02-15T00:00:00Z,)}') AS v
)
SELECT i, CASE i % 4
	WHEN 0 THEN pg_temp.rnd('r' || i, i % 90)
	WHEN 1 THEN set_byte(v, get_byte(pg_temp.rnd('p' || i, 2), 0) % length(v), get_byte(pg_temp.rnd('p' || i, 2), 1))
	WHEN 2 THEN CASE WHEN i % 8 = 2 THEN substr(v, 1, i % length(v)) ELSE v || pg_temp.rnd('x' || i, 1 + i % 40) END
	ELSE '\x0001'::bytea || int4send(i % 3) || pg_temp.rnd('l' || i, 32 * (i % 3))
	END AS p
FROM generate_series(1, 400) i, valid;
CREATE TEMP TABLE outcome AS SELECT i, pg_temp.copy_in(p) AS result FROM payload;
SELECT result, count(*) FROM outcome GROUP BY 1 ORDER BY 1;
SELECT bool_and(result IN ('accepted', '22P03')) AS every_failure_clean FROM outcome;
DO $$ BEGIN
	EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', format('rm -f /tmp/crm_ext_ledger_fuzz_%s.bin', pg_backend_pid()));
END $$;

-- Text input: 400 mutations of a valid text form (one character replaced,
-- cut short, or random printable bytes).  22P02 syntax, 22003 points out of
-- range, or accepted.
CREATE FUNCTION pg_temp.text_in(t text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM t::crm.loyalty_ledger;
	RETURN 'accepted';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
CREATE TEMP TABLE text_outcome AS
WITH valid AS (SELECT '{(4,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1),(6,2026-03-01T00:00:00.5Z,2025-02-15T00:00:00Z,)}'::text AS v)
SELECT i, pg_temp.text_in(CASE i % 3
	WHEN 0 THEN overlay(v PLACING chr(32 + get_byte(pg_temp.rnd('c' || i, 1), 0) % 95) FROM 1 + i % length(v) FOR 1)
	WHEN 1 THEN left(v, i % length(v))
	ELSE translate(encode(pg_temp.rnd('t' || i, 1 + i % 60), 'escape'), E'\\', '')
	END) AS result
FROM generate_series(1, 400) i, valid;
SELECT result, count(*) FROM text_outcome GROUP BY 1 ORDER BY 1;
SELECT bool_and(result IN ('accepted', '22P02', '22003')) AS every_failure_clean FROM text_outcome;
SELECT * FROM crm.verify();
