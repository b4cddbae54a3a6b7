-- crm.loyalty_ledger: text and binary I/O, operations, the aggregate, and
-- the bad-input matrix (TESTING.md).  Pure type tests: nothing is stored.
\i sql/include/expect_error.sql
SET TimeZone = 'Asia/Shanghai';

-- Text form: sorted by expiry, equal expiries coalesced (earliest earned_at,
-- source kept only when equal), whitespace tolerated.
SELECT '{}'::crm.loyalty_ledger AS empty;
SELECT ' { ( 5 , 2026-03-01T00:00:00Z , 2025-01-01T00:00:00Z , ) , (100,2026-02-01T00:00:00Z,2025-01-15T09:30:00.5Z,42) } '::crm.loyalty_ledger AS sorted;
SELECT '{(10,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,7),(20,2026-02-01T00:00:00Z,2025-01-10T00:00:00Z,7)}'::crm.loyalty_ledger AS same_source;
SELECT '{(10,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,7),(20,2026-02-01T00:00:00Z,2025-01-10T00:00:00Z,8)}'::crm.loyalty_ledger AS mixed_source;
SELECT '{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,9223372036854775807)}'::crm.loyalty_ledger AS max_points;
SELECT '{(1,9999-12-31T23:59:59.999999Z,0001-01-01T00:00:00Z,)}'::crm.loyalty_ledger AS extreme_dates;
-- text round trip
SELECT l::text::crm.loyalty_ledger OPERATOR(crm.=) l AS text_round_trip
FROM (SELECT '{(5,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,),(100,2026-02-01T00:00:00Z,2025-01-15T09:30:00.123456Z,42)}'::crm.loyalty_ledger l) s;

-- Bad text input: every one a clean ERROR with a specific SQLSTATE.
SELECT v AS input, pg_temp.expect_error(format('SELECT %L::crm.loyalty_ledger', v)) AS result
FROM unnest(ARRAY[
	'', '   ', '{', '}', '{}x', '[]', '{()}', '{(1)}', '{(1,2026-02-01T00:00:00Z)}',
	'{(0,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(-5,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(abc,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(9223372036854775808,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(99999999999999999999999,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-30T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2025-02-29T00:00:00Z,2024-01-01T00:00:00Z,)}',
	'{(1,2026-02-01 00:00:00+00,2025-01-01T00:00:00Z,)}',
	'{(1,infinity,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-01T24:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-01T00:00:00.1234567Z,2025-01-01T00:00:00Z,)}',
	'{(1,2025-01-01T00:00:00Z,2026-02-01T00:00:00Z,)}',
	'{(1,2025-01-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,0)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,-3)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,99999999999999999999)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,),}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)(2,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,))}',
	'{{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}}',
	'{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,),(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,),(1,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}',
	'{(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}' || chr(233)
]) v ORDER BY v;
-- huge and deeply nested inputs
SELECT pg_temp.expect_error($$SELECT repeat(' ', 1024 * 1024)::crm.loyalty_ledger$$) AS one_mb_blank;
SELECT pg_temp.expect_error($$SELECT ('{' || repeat('(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,),', 20000) || '}')::crm.loyalty_ledger$$) AS one_mb_trailing_comma;
SELECT pg_temp.expect_error($$SELECT repeat('(', 100 * 1024 * 1024)::crm.loyalty_ledger$$) AS hundred_mb_nested;
SELECT pg_temp.expect_error($$SELECT ('{' || repeat('[', 100000) || '}')::crm.loyalty_ledger$$) AS deeply_nested;
-- 20,000 lots of distinct expiry are fine; more than 100,000 are refused
SELECT crm.ledger_lot_count(('{' || string_agg(format('(1,%sZ,2000-01-01T00:00:00Z,)',
	to_char(timestamp '2001-01-01' + i * interval '1 hour', 'YYYY-MM-DD"T"HH24:MI:SS')), ',') || '}')::crm.loyalty_ledger) AS lots
FROM generate_series(1, 20000) i;
SELECT pg_temp.expect_error($$SELECT ('{' || repeat('(1,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,),', 100001) || '}')::crm.loyalty_ledger$$) AS too_many_lots;
SELECT NULL::crm.loyalty_ledger IS NULL AS null_in;
-- invalid UTF-8 never reaches the type: the server rejects it first
SELECT pg_temp.expect_error($$SELECT convert_from('\x7b28ff'::bytea, 'UTF8')::crm.loyalty_ledger$$) AS invalid_utf8;

-- Operations
CREATE TEMP TABLE l AS SELECT
	'{(100,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1),(50,2026-03-01T00:00:00Z,2025-02-15T00:00:00Z,2),(30,2026-04-01T00:00:00Z,2025-03-15T00:00:00Z,3)}'::crm.loyalty_ledger AS l;
SELECT crm.ledger_balance(l, '2026-01-31 23:59:59.999999+00') AS all_valid,
       crm.ledger_balance(l, '2026-02-01 00:00:00+00') AS first_expired_at_its_instant,
       crm.ledger_balance(l, '2026-04-01 00:00:00+00') AS none,
       crm.ledger_total(l) AS total, crm.ledger_lot_count(l) AS lots,
       crm.ledger_next_expiry(l) AS next_expiry
FROM l;
-- FIFO by expiry; spending skips lots already expired at "at"
SELECT crm.ledger_spend(l, 120, '2026-01-01+00') AS fifo,
       crm.ledger_spend(l, 60, '2026-02-15+00') AS skips_expired,
       crm.ledger_spend(l, 180, '2026-01-01+00') AS everything
FROM l;
-- by date, not by label or by when earned: the lot earned later but expiring
-- first is spent first
SELECT crm.ledger_spend('{(5,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,1),(100,2026-02-01T00:00:00Z,2025-06-15T00:00:00Z,2)}', 7, '2025-07-01+00') AS expiry_first;
SELECT pg_temp.expect_error($$SELECT crm.ledger_spend(l, 181, '2026-01-01+00') FROM l$$) AS short;
SELECT pg_temp.expect_error($$SELECT crm.ledger_spend(l, 100, '2026-02-15+00') FROM l$$) AS expired_lots_do_not_count;
SELECT pg_temp.expect_error($$SELECT crm.ledger_spend(l, 0, '2026-01-01+00') FROM l$$) AS zero;
SELECT pg_temp.expect_error($$SELECT crm.ledger_spend(l, -5, '2026-01-01+00') FROM l$$) AS negative;
SELECT pg_temp.expect_error($$SELECT crm.ledger_spend(l, 5, 'infinity') FROM l$$) AS infinite_at;
-- expiring within a window (months follow the session time zone)
SELECT crm.ledger_expiring(l, '2026-01-15+00', '1 month') AS within_month,
       crm.ledger_expiring(l, '2026-01-15+00', '0') AS nothing,
       crm.ledger_expiring(l, '2026-02-01+00', '2 months') AS after_first
FROM l;
SELECT pg_temp.expect_error($$SELECT crm.ledger_expiring(l, '2026-01-15+00', '-1 day') FROM l$$) AS negative_window;
-- expire drops lots with expires_at <= at
SELECT crm.ledger_expire(l, '2026-02-01 00:00:00+00') AS at_boundary,
       crm.ledger_expire(l, '2026-01-31 23:59:59+00') AS before_boundary
FROM l;
-- earn coalesces; merge, +, -
SELECT crm.ledger_earn(l, 5, '2025-01-01+00', '2026-02-01+00', 9) AS coalesced,
       crm.ledger_earn('{}', 5, '2025-01-01+00', '2026-02-01+00') AS no_source,
       crm.ledger_earn(l, NULL, '2025-01-01+00', '2026-02-01+00') IS NULL AS null_points
FROM l;
SELECT pg_temp.expect_error(q) FROM unnest(ARRAY[
	$$SELECT crm.ledger_earn('{}', 0, '2025-01-01+00', '2026-02-01+00')$$,
	$$SELECT crm.ledger_earn('{}', 5, '2026-02-01+00', '2026-02-01+00')$$,
	$$SELECT crm.ledger_earn('{}', 5, '-infinity', '2026-02-01+00')$$,
	$$SELECT crm.ledger_earn('{}', 5, '2025-01-01+00', '2026-02-01+00', 0)$$,
	$$SELECT crm.ledger_earn('{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}', 1, '2025-01-01+00', '2026-02-01+00')$$,
	$$SELECT crm.ledger_earn('{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}', 1, '2025-01-01+00', '2026-03-01+00')$$,
	$$SELECT '{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-01T00:00:00Z,)}'::crm.loyalty_ledger OPERATOR(crm.+) '{(1,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}'$$
]) q;
SELECT l OPERATOR(crm.+) '{(7,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,2)}' AS plus,
       crm.ledger_merge('{}', l) OPERATOR(crm.=) l AS merge_with_empty,
       l OPERATOR(crm.-) '{(50,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}' AS minus,
       l OPERATOR(crm.<>) '{}' AS differs
FROM l;
SELECT pg_temp.expect_error($$SELECT l OPERATOR(crm.-) '{(51,2026-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}' FROM l$$) AS minus_too_much;
SELECT pg_temp.expect_error($$SELECT l OPERATOR(crm.-) '{(1,2027-03-01T00:00:00Z,2025-01-01T00:00:00Z,)}' FROM l$$) AS minus_missing_lot;
SELECT * FROM crm.ledger_lots((SELECT l FROM l)) ORDER BY expires_at;

-- ledger_agg: order-independent, subtracts rows with negative points
CREATE TEMP TABLE j (id int, lots crm.loyalty_ledger, points bigint);
INSERT INTO j VALUES
	(1, '{(100,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1)}', 100),
	(2, '{(50,2026-03-01T00:00:00Z,2025-02-15T00:00:00Z,2)}', 50),
	(3, '{(80,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1)}', -80),
	(4, '{(20,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,1),(10,2026-03-01T00:00:00Z,2025-02-15T00:00:00Z,2)}', -30),
	(5, '{}', 0),
	(6, NULL, NULL);
SELECT crm.ledger_agg(lots, points ORDER BY id) AS forward,
       crm.ledger_agg(lots, points ORDER BY id DESC) OPERATOR(crm.=) crm.ledger_agg(lots, points ORDER BY id) AS order_free
FROM j;
SELECT crm.ledger_agg(lots, points) AS no_rows FROM j WHERE false;
SELECT pg_temp.expect_error($$SELECT crm.ledger_agg(lots, points) FROM (VALUES ('{(5,2026-02-01T00:00:00Z,2025-01-15T00:00:00Z,)}'::crm.loyalty_ledger, -5::bigint)) v(lots, points)$$) AS corrupt_journal;
-- parallel aggregation (combine, serialize, deserialize) gives the same ledger
CREATE TEMP TABLE big AS
SELECT g, crm.ledger_earn('{}', 1 + g % 7, '2025-01-01+00', timestamptz '2026-01-01+00' + (g % 13) * interval '1 month', g) AS lots, (1 + g % 7)::bigint AS points
FROM generate_series(1, 20000) g;
SELECT crm.ledger_total(crm.ledger_agg(lots, points)) AS total, crm.ledger_lot_count(crm.ledger_agg(lots, points)) AS lots FROM big;
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
SELECT crm.ledger_agg(lots, points) OPERATOR(crm.=) (SELECT crm.ledger_agg(lots, points ORDER BY g) FROM big) AS parallel_same FROM big;
RESET parallel_setup_cost; RESET parallel_tuple_cost; RESET min_parallel_table_scan_size; RESET max_parallel_workers_per_gather; RESET parallel_leader_participation;

-- Binary I/O: COPY BINARY round trip, and crafted binary input.
CREATE TEMP TABLE bin_src (l crm.loyalty_ledger);
INSERT INTO bin_src VALUES ('{}'), ((SELECT l FROM l)),
	('{(9223372036854775807,2026-02-01T00:00:00Z,2025-01-15T00:00:00.000001Z,9223372036854775807)}');
CREATE FUNCTION pg_temp.copy_binary_in(hex text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	f text := format('/tmp/crm_ext_ledger_%s.bin', pg_backend_pid());
BEGIN
	EXECUTE format('COPY (SELECT %L) TO PROGRAM %L', hex, format('xxd -r -p > %s', f));
	CREATE TEMP TABLE IF NOT EXISTS bin_dst (l crm.loyalty_ledger);
	TRUNCATE bin_dst;
	EXECUTE format('COPY bin_dst FROM %L WITH (FORMAT binary)', f);
	RETURN (SELECT string_agg(l::text, ' ') FROM bin_dst);
EXCEPTION WHEN OTHERS THEN
	DECLARE
		detail text;
	BEGIN
		GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
		RETURN SQLSTATE || ': ' || SQLERRM || ' / ' || detail;
	END;
END
$$;
SET client_min_messages = warning;
-- one row, one field of the given payload, in COPY BINARY framing
CREATE FUNCTION pg_temp.framed(payload text) RETURNS text LANGUAGE sql AS $$
	SELECT '5047434f50590aff0d0a00' || '00000000' || '00000000' || '0001'
	       || lpad(to_hex(length(payload) / 2), 8, '0') || payload || 'ffff'
$$;
SELECT pg_temp.copy_binary_in(pg_temp.framed(encode(crm.loyalty_ledger_send(s.l), 'hex'))) OPERATOR(pg_catalog.=) s.l::text AS binary_round_trip
FROM bin_src s ORDER BY 1;
SELECT name, pg_temp.copy_binary_in(pg_temp.framed(payload)) AS result FROM (VALUES
	('empty payload', ''),
	('short header', '0001'),
	('version 2', '000200000000'),
	('negative count', '0001ffffffff'),
	('count too big', '000100100000'),
	('count without lots', '000100000001'),
	('trailing bytes', '00010000000000'),
	('zero points', '000100000001' || '0000000000000000' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'),
	('negative points', '000100000001' || 'ffffffffffffffff' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'),
	('infinite expiry', '000100000001' || '0000000000000005' || '7fffffffffffffff' || '0002a1a2a3a4a500' || '0000000000000001'),
	('earned after expiry', '000100000001' || '0000000000000005' || '0002a1a2a3a4a500' || '0002d8c0d2b0c000' || '0000000000000001'),
	('negative source', '000100000001' || '0000000000000005' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || 'ffffffffffffffff'),
	('unsorted', '000100000002' || '0000000000000005' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'
	                            || '0000000000000005' || '0002d8c0d2b0b000' || '0002a1a2a3a4a500' || '0000000000000001'),
	('duplicate expiry', '000100000002' || '0000000000000005' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'
	                            || '0000000000000005' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'),
	('total overflows', '000100000002' || '7fffffffffffffff' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001'
	                            || '0000000000000001' || '0002d8c0d2b0d000' || '0002a1a2a3a4a500' || '0000000000000001'),
	('valid one lot', '000100000001' || '0000000000000005' || '0002d8c0d2b0c000' || '0002a1a2a3a4a500' || '0000000000000001')
) v(name, payload) ORDER BY name;
-- the payload file goes with the test
DO $$ BEGIN
	EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', format('rm -f /tmp/crm_ext_ledger_%s.bin', pg_backend_pid()));
END $$;
SELECT * FROM crm.verify();
