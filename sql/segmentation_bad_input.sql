-- Segmentation bad input: arbitrary bytes given to crm.stats_window and
-- crm.stats_categories (clean 22P03, never XX001), and the tag rule length
-- limit at its boundary, in characters (multibyte included).
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.as_of = '2026-03-01 00:00+00';
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'a');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 1, 'web', '2026-01-05 10:00+00', 10), (2, 1, 'web', '2026-02-02 10:00+00', 20);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(1, 1, 'FRE-1', 'fresh', 1, 10), (2, 1, 'DAI-1', 'dairy', 1, 15), (2, 2, 'CAF-1', 'café', 1, 5);
CREATE TEMP TABLE good AS SELECT days, categories FROM crm.customer_stats WHERE customer_id = 1;
SELECT (crm.stats_window(days, '2026-03-01 00:00+00', 60)).* FROM good;
SELECT * FROM crm.stats_categories((SELECT categories FROM good)) ORDER BY 1;

-- hand-made bad values: each problem named in the detail
CREATE FUNCTION pg_temp.expect_detail(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	detail text;
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
	RETURN SQLSTATE || ': ' || SQLERRM || ' / ' || detail;
END
$$;
SELECT name, pg_temp.expect_detail(format('SELECT crm.stats_window(%L::bytea, ''2026-03-01+00'', 30)', b)) AS stats_window
FROM (VALUES
	('empty', '\x'::bytea),
	('count past 400', '\x00000080' || '\x91010000'::bytea),
	('length mismatch', '\x00000080' || '\x01000000'::bytea),
	('unsorted', '\x00000080' || '\x02000000'::bytea || '\x0a000000010000000100000000000000' || '\x09000000010000000100000000000000'),
	('no orders', '\x00000080' || '\x01000000'::bytea || '\x0a000000000000000100000000000000'),
	('negative spend', '\x00000080' || '\x01000000'::bytea || '\x0a00000001000000ffffffffffffffff'),
	('spend overflows', '\x00000080' || '\x02000000'::bytea || '\x0a00000001000000ffffffffffffff7f' || '\x0b00000001000000ffffffffffffff7f'),
	('span past 400 days', '\x00000080' || '\x02000000'::bytea || '\x00000000010000000100000000000000' || '\x90010000010000000100000000000000')
) v(name, b) ORDER BY name;
SELECT name, pg_temp.expect_detail(format('SELECT * FROM crm.stats_categories(%L::bytea)', b)) AS stats_categories
FROM (VALUES
	('empty', '\x'::bytea),
	('count too big', '\x01000000'::bytea),
	('name past the end', '\x01000000' || '\xff00'::bytea || decode(repeat('00', 40), 'hex')),
	('invalid UTF-8 name', '\x01000000' || '\x0100'::bytea || '\xff'::bytea || decode(repeat('00', 40), 'hex')),
	('NUL in name', '\x01000000' || '\x0200'::bytea || '\x6100'::bytea || decode(repeat('00', 40), 'hex')),
	('negative orders', '\x01000000' || '\x0100'::bytea || '\x61'::bytea || '\xffffffff'::bytea || decode(repeat('00', 36), 'hex')),
	('trailing bytes', '\x00000000' || '\x00'::bytea)
) v(name, b) ORDER BY name;

-- 600 values from md5 of a counter: random bytes, and the stored values
-- with one byte set, cut short or extended.  Each is a result or 22P03.
CREATE FUNCTION pg_temp.rnd(seed text, n int) RETURNS bytea LANGUAGE sql AS $$
	SELECT coalesce(substr(decode(string_agg(md5(seed || ':' || k), '' ORDER BY k), 'hex'), 1, n), '\x')
	FROM generate_series(0, n / 16) k
$$;
CREATE FUNCTION pg_temp.mutate(v bytea, i int) RETURNS bytea LANGUAGE sql AS $$
	SELECT CASE i % 4
		WHEN 0 THEN pg_temp.rnd('r' || i, i % 120)
		WHEN 1 THEN set_byte(v, get_byte(pg_temp.rnd('p' || i, 2), 0) % length(v), get_byte(pg_temp.rnd('p' || i, 2), 1))
		WHEN 2 THEN substr(v, 1, i % length(v))
		ELSE v || pg_temp.rnd('x' || i, 1 + i % 50)
	END
$$;
CREATE FUNCTION pg_temp.outcome(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'result';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
CREATE TEMP TABLE fuzz_outcome AS
SELECT 'stats_window' AS fn, i, pg_temp.outcome(format('SELECT crm.stats_window(%L::bytea, ''2026-03-01+00'', 1 + %s %% 400)', pg_temp.mutate(days, i), i)) AS result
FROM good, generate_series(1, 300) i
UNION ALL
SELECT 'stats_categories', i, pg_temp.outcome(format('SELECT count(*) FROM crm.stats_categories(%L::bytea)', pg_temp.mutate(categories, i)))
FROM good, generate_series(1, 300) i;
SELECT fn, result, count(*) FROM fuzz_outcome GROUP BY 1, 2 ORDER BY 1, 2;
SELECT bool_and(result IN ('result', '22P03')) AS every_failure_clean FROM fuzz_outcome;
SELECT * FROM crm.verify();
-- a damaged stored column names itself (22P03 with a hint, not XX001)
UPDATE crm.customer_stats SET days = '\x00' WHERE customer_id = 1;
SELECT pg_temp.expect_detail($$INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (3, 1, 'web', '2026-02-20 10:00+00', 5)$$) AS damaged_stats_row;
ROLLBACK;

-- Tag rules: at most 4,000 characters, whatever their bytes; every rule up
-- to that compiles (a token is at least one character and emits at most one
-- instruction).  A 3,986-character rule of 1,139 instructions used to be
-- refused as too long.
SELECT length(r) AS chars, length(crm.tag_rule_explain(r)) > 0 AS compiles
FROM (VALUES ('orders > 1' || repeat(' or orders > 1', 284))) v(r);
SELECT name, length(r) AS chars, octet_length(r) AS bytes, pg_temp.expect_error(format('SELECT crm.tag_rule_explain(%L)', r)) AS result
FROM (VALUES
	('ascii 4000', 'true' || repeat(' ', 3996)),
	('ascii 4001', 'true' || repeat(' ', 3997)),
	('3999 instructions in 4000', '1' || repeat('+1', 1998) || '>0 '),
	('2-byte 4000', 'stage = ''' || repeat('é', 3990) || ''''),
	('2-byte 4001', 'stage = ''' || repeat('é', 3991) || ''''),
	('4-byte 4000', 'stage = ''' || repeat('😀', 3990) || ''''),
	('4-byte 4001', 'stage = ''' || repeat('😀', 3991) || '''')
) v(name, r) ORDER BY name;
-- error positions count characters, not bytes
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('stage = ''é😀'' and ordrs > 1')$$) AS position_in_characters;
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('stage = ''é😀'' # 1')$$) AS position_of_bad_character;
-- the limit holds for stored tags and segment expressions alike
BEGIN;
INSERT INTO crm.tag (name, rule) VALUES ('long_rule', 'orders > 1' || repeat(' or orders > 1', 284));
SELECT name, length(rule), octet_length(compiled) > 0 AS compiled FROM crm.tag WHERE name = 'long_rule';
SELECT pg_temp.expect_error($$INSERT INTO crm.tag (name, rule) VALUES ('too_long', 'stage = ''' || repeat('é', 3991) || '''')$$) AS stored_too_long;
SELECT crm.audience_count('long_rule' || repeat(' or long_rule', 307)) AS audience_4000_chars;
SELECT pg_temp.expect_error($$SELECT crm.audience_count('long_rule' || repeat(' or long_rule', 307) || ' ')$$) AS audience_4001_chars;
SELECT * FROM crm.verify();
ROLLBACK;
