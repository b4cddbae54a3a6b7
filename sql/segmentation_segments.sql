-- Audiences: tag expressions with and/or/not/parentheses, their counts and
-- members, and every expression error with its position.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.as_of = '2026-01-01 00:00+00';
DELETE FROM crm.segment;
DELETE FROM crm.tag;
INSERT INTO crm.customer (customer_id, name) SELECT i, 'c' || i FROM generate_series(1, 10) i;
UPDATE crm.customer SET merged_into = 1 WHERE customer_id = 10;
INSERT INTO crm.tag (name, kind) VALUES ('a', 'manual'), ('b', 'manual'), ('c', 'manual'), ('d', 'manual');
-- a: 1-4, b: 3-6, c: 2, 4, 6, 8; d: nobody
SELECT count(*) FROM (SELECT crm.tag_customer(i, 'a', '2026-01-01') FROM generate_series(1, 4) i
	UNION ALL SELECT crm.tag_customer(i, 'b', '2026-01-01') FROM generate_series(3, 6) i
	UNION ALL SELECT crm.tag_customer(i, 'c', '2026-01-01') FROM generate_series(2, 8, 2) i) x;
SELECT e, crm.audience_count(e), ARRAY(SELECT crm.audience_members(e)) FROM (VALUES
	('a'), ('d'), ('not d'), ('a and b'), ('a or b'), ('a and not b'), ('not a and b'), ('not a and not b'),
	('not a or b'), ('a or not b'), ('not a or not b'), ('not (a or b)'), ('a and b or c'), ('a and (b or c)'),
	('(a or b) and not c'), ('not not a'), ('A AND ''b'''), ('((a))'), ('a and b and c'), ('not (a and b and c)'),
	-- "and" with an unfetched tag on one side probes it for the other side's members
	('d and a'), ('a and not d'), ('not d and a'), ('c and a and not b'), ('not b and not c and a'), ('(a or c) and b'),
	('not a and not b and c')
) v(e) ORDER BY 1;
INSERT INTO crm.segment (name, expression) VALUES ('ab', 'a and b'), ('rest', 'not (a or b or c)');
SELECT crm.segment_count('ab'), ARRAY(SELECT crm.segment_members('ab')), crm.segment_count('rest'), ARRAY(SELECT crm.segment_members('rest'));
SELECT kind, name, customers FROM crm.v_segment_sizes WHERE kind IN ('segment', 'tag') ORDER BY 1, 2;
-- expression errors
SELECT pg_temp.expect_error($$SELECT crm.audience_count('')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a and')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a b')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('(a or b')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a or b)')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a and zz')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a and orders > 1')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a & b')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('-a')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count('a and ''b')$$);
SELECT pg_temp.expect_error($$SELECT crm.audience_count(repeat('(', 70) || 'a' || repeat(')', 70))$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.segment (name, expression) VALUES ('bad', 'a and not')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.segment (name, expression) VALUES ('bad', 'a or nosuchtag')$$);
SELECT pg_temp.expect_error($$UPDATE crm.segment SET expression = 'a (b)' WHERE name = 'ab'$$);
SELECT pg_temp.expect_error($$SELECT crm.segment_count('nosuch')$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.segment_members('nosuch')$$);
SELECT crm.segment_count(NULL), crm.audience_count(NULL);
-- manual tag errors
SELECT pg_temp.expect_error($$SELECT crm.tag_customer(1, 'nosuch')$$);
-- a merged record's id means its golden customer: 10 is merged into 1, which has 'a'
SELECT crm.tag_customer(10, 'a') AS tagged_again, crm.tag_customer(10, 'b', '2026-01-01') AS golden_tagged;
SELECT customer_id, t.name FROM crm.customer_tag JOIN crm.tag t USING (tag_id) WHERE t.name = 'b' ORDER BY 1;
SELECT crm.untag_customer(10, 'b') AS golden_untagged;
SELECT pg_temp.expect_error($$SELECT crm.tag_customer(999, 'a')$$);
SELECT pg_temp.expect_error($$SELECT crm.untag_customer(999, 'a')$$);
INSERT INTO crm.tag (name, rule) VALUES ('r', 'orders > 0');
SELECT pg_temp.expect_error($$SELECT crm.tag_customer(1, 'r')$$);
SELECT pg_temp.expect_error($$SELECT crm.untag_customer(1, 'r')$$);
SELECT crm.untag_customer(1, 'a', '2026-01-02'), crm.untag_customer(1, 'a', '2026-01-02');
SELECT crm.audience_count('a');
SELECT * FROM crm.verify();
ROLLBACK;
