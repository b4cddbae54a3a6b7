-- The identity link policy, crm.identity_may_link (C, identity_policy.c),
-- called directly: blocklist (every kind, one kind, lower-case and trimmed),
-- strong kinds, weak kinds under and over max_customers (counted, or given
-- as holders), unknown kinds, NULLs.  One transaction that rolls back;
-- stitching is off and identity ids are given, so no sequence moves (the
-- other files' merge and identity ids stay as they are).
\i sql/include/expect_error.sql
BEGIN;
SET LOCAL crm.stitch_on_insert = off;
INSERT INTO crm.customer (customer_id, name) SELECT k, 'p' || k FROM generate_series(1, 4) k;
-- device is weak with max_customers 2; phone and email are strong.
SELECT kind, strength, max_customers FROM crm.identity_kind WHERE kind IN ('device', 'phone', 'email') ORDER BY kind;

-- 1. Blocklisted for every kind, for one kind only, compared lower-case and trimmed.
SELECT crm.identity_may_link('email', 'unknown') AS every_kind,
       crm.identity_may_link('phone', ' N/A ') AS every_kind_trimmed,
       crm.identity_may_link('phone', '00000000000') AS junk_phone,
       crm.identity_may_link('email', '00000000000') AS junk_phone_on_email,
       crm.identity_may_link('email', 'TEST@test.com ') AS test_address,
       crm.identity_may_link('phone', 'test@test.com') AS test_address_on_phone;
INSERT INTO crm.identity_blocklist (kind, value, reason) VALUES ('device', 'shop-tablet', 'store counter');
SELECT crm.identity_may_link('device', 'Shop-Tablet') AS device_blocked,
       crm.identity_may_link('email', 'shop-tablet@example.com') AS other_value,
       crm.identity_may_link('device', 'shop-tablet', 1) AS blocked_whatever_holders;

-- 2. Strong kinds link whoever holds the value, up to max_holders records
--    (20; more is a hub, which links nobody: sql/identity_hub_batch.sql).
INSERT INTO crm.identity (identity_id, kind, value, customer_id)
SELECT 900000 + k, 'email', 'shared@example.com', k FROM generate_series(1, 4) k;
SELECT crm.identity_may_link('email', 'shared@example.com') AS strong_held_by_4,
       crm.identity_may_link('email', 'nobody@example.com') AS strong_held_by_none,
       crm.identity_may_link('phone', '13900000001', 1000000) AS strong_given_many;

-- 3. Weak kinds: at most max_customers (2) records.
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES (900011, 'device', 'TAB-1', 1);
SELECT crm.identity_may_link('device', 'TAB-1') AS weak_held_by_1;
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES (900012, 'device', 'TAB-1', 2);
SELECT crm.identity_may_link('device', 'TAB-1') AS weak_held_by_2;
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES (900013, 'device', 'TAB-1', 3);
SELECT crm.identity_may_link('device', 'TAB-1') AS weak_held_by_3,
       crm.identity_may_link('device', 'tab-1') AS other_case_held_by_none;
-- holders given: the rows are not counted
SELECT crm.identity_may_link('device', 'TAB-1', 2) AS weak_given_2,
       crm.identity_may_link('device', 'TAB-1', 3) AS weak_given_3,
       crm.identity_may_link('device', 'TAB-9', 0) AS weak_given_0;
-- a larger limit lets the same value link
UPDATE crm.identity_kind SET max_customers = 3 WHERE kind = 'device';
SELECT crm.identity_may_link('device', 'TAB-1') AS weak_held_by_3_limit_3;

-- 4. Unknown kinds never link; NULLs give NULL; negative holders are refused.
SELECT crm.identity_may_link('fax', '123456') AS unknown_kind,
       crm.identity_may_link('fax', '123456', 2) AS unknown_kind_given;
SELECT crm.identity_may_link(NULL, 'x') IS NULL AS null_kind, crm.identity_may_link('phone', NULL) IS NULL AS null_value,
       crm.identity_may_link('phone', 'x', NULL) IS NULL AS null_holders,
       crm.identity_blocked(NULL, 'unknown') IS NULL AS blocked_null_kind;
SELECT pg_temp.expect_error($$SELECT crm.identity_may_link('device', 'TAB-1', -1)$$);

-- 5. crm.identity_blocked reads the same blocklist.
SELECT crm.identity_blocked('email', ' Unknown') AS every_kind, crm.identity_blocked('device', 'SHOP-TABLET') AS one_kind,
       crm.identity_blocked('phone', 'shop-tablet') AS other_kind, crm.identity_blocked('phone', '13900000001') AS real_phone;

-- 6. The batch form (blocklist and kinds read once per query) agrees with the
--    counting form, value by value.
INSERT INTO crm.identity_blocklist (kind, value, reason) VALUES (NULL, 'shop-tablet', 'everywhere too');
SELECT v.kind, v.value, crm.identity_may_link(v.kind, v.value, v.n) AS batch_form,
       crm.identity_may_link(v.kind, v.value) AS counting_form
FROM (VALUES ('device', 'TAB-1', 3::bigint), ('device', 'SHOP-TABLET ', 1), ('email', 'shop-tablet', 2),
             ('email', 'shared@example.com', 4), ('phone', 'test@test.com', 2), ('email', 'test@test.com', 2),
             ('fax', '123456', 2), ('device', 'TAB-2', 0)) v(kind, value, n)
ORDER BY v.kind, v.value;
SELECT * FROM crm.verify();
ROLLBACK;
