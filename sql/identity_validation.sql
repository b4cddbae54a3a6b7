-- Identity inputs that used to succeed silently (issue 11, item 6): values
-- that do not fit their kind (crm.identity_kind.pattern) and NULL
-- arguments of the merge entry points.  Errors name the kind, never the value.
\i sql/include/expect_error.sql
BEGIN;
SET LOCAL crm.stitch_on_insert = off;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');
SELECT kind, pattern FROM crm.identity_kind ORDER BY kind;

-- 1. Values that do not match their kind's pattern are refused (23514).
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', 'not-a-phone@example.com', 1)$$) AS email_as_phone;
SELECT v AS phone, pg_temp.expect_error(format($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', %L, 1)$$, v)) AS result
FROM (VALUES ('13900000001'), ('+86 139 0000 0001'), ('139-0000-0001'), ('123456'), ('12345678901234567890'),
             ('00000000000'), ('12345'), ('123456789012345678901'), ('139--0000-0001'), ('++8613900000001'),
             (' 13900000001'), ('1390000000x'), ('-13900000001'), ('139 0000 0001 ')) t(v)
ORDER BY v;
SELECT v AS email, pg_temp.expect_error(format($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', %L, 2)$$, v)) AS result
FROM (VALUES ('ann@example.com'), ('no-at-sign'), ('a@b@c'), ('ann @example.com')) t(v)
ORDER BY v;
SELECT v AS member_no, pg_temp.expect_error(format($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('member_no', %L, 3)$$, v)) AS result
FROM (VALUES ('M0000000001'), ('M-26'), ('M 26'), ('-M26'), ('M26-'), ('M#26')) t(v)
ORDER BY v;
SELECT v AS device, pg_temp.expect_error(format($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('device', %L, 3)$$, v)) AS result
FROM (VALUES ('dev-0039d5e3'), ('tablet 934')) t(v)
ORDER BY v;
-- blocklisted placeholders are stored (they never link) whatever the pattern
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'Unknown', 1), ('phone', 'n/a', 1);
SELECT kind, value FROM crm.identity WHERE customer_id = 1 ORDER BY kind, value;

-- 2. Updates are checked when they change kind or value; moving a row to
--    another customer (a merge) never re-checks it.
SELECT pg_temp.expect_error($$UPDATE crm.identity SET value = 'call me' WHERE kind = 'phone' AND value = '13900000001'$$) AS bad_value;
SELECT pg_temp.expect_error($$UPDATE crm.identity SET kind = 'phone' WHERE kind = 'email' AND value = 'ann@example.com'$$) AS bad_kind;
UPDATE crm.identity_kind SET pattern = '^1[0-9]{10}$' WHERE kind = 'phone';
UPDATE crm.customer SET merged_into = 2 WHERE customer_id = 1;  -- rows move only along merges
UPDATE crm.identity SET customer_id = 2 WHERE kind = 'phone' AND value = '+86 139 0000 0001';
SELECT customer_id FROM crm.identity WHERE kind = 'phone' AND value = '+86 139 0000 0001';
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '+86 139 0000 0002', 1)$$) AS tightened;
-- undo the merge made by hand above (its other rows never moved), so
-- crm.verify() below checks the rest
UPDATE crm.identity SET customer_id = 1 WHERE kind = 'phone' AND value = '+86 139 0000 0001';
UPDATE crm.customer SET merged_into = NULL WHERE customer_id = 1;

-- 3. The pattern is configurable: NULL accepts anything; a new kind may
--    have its own; an invalid regular expression is refused.
UPDATE crm.identity_kind SET pattern = NULL WHERE kind = 'phone';
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', 'call the shop', 3);
INSERT INTO crm.identity_kind (kind, strength, pattern) VALUES ('loyalty_card', 'strong', '^LC[0-9]{4}$');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('loyalty_card', 'LC1234', 3);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('loyalty_card', 'LC12345', 3)$$) AS own_kind;
SELECT pg_temp.expect_error($$INSERT INTO crm.identity_kind (kind, strength, pattern) VALUES ('broken', 'strong', '([a-z]')$$) AS invalid_regex;
-- COPY goes through the same check
SELECT pg_temp.expect_error($$COPY crm.identity (kind, value, customer_id) FROM PROGRAM 'printf "loyalty_card\tLC99\t3\n"'$$) AS copy;
SELECT * FROM crm.verify();
ROLLBACK;

-- 4. NULL arguments of the merge entry points are errors (22004), not defaults.
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (1, 'a', '2025-01-01'), (2, 'b', '2025-01-02');
SELECT crm.merge_customers(1, 2) AS merge_id \gset
SELECT pg_temp.expect_error(format('SELECT crm.unmerge(%s, NULL)', :merge_id)) AS unmerge_null_cascade;
SELECT pg_temp.expect_error('SELECT crm.unmerge(NULL)') AS unmerge_null_id;
SELECT pg_temp.expect_error('SELECT crm.merge_customers(1, NULL)') AS merge_null;
SELECT merged_into FROM crm.customer WHERE customer_id = 2;
SELECT crm.unmerge(:merge_id, false) AS undone;
SELECT * FROM crm.verify();
ROLLBACK;
