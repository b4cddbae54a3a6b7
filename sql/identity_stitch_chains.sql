-- Merge chains and stray duplicates (issue 13, defects 6 and 9).  A golden
-- customer is never itself merged: manual merges, online and batch stitching
-- all merge golden into golden, and whatever was merged into a record moves
-- on with it.  Batch stitching redirects stray identifiers without breaking
-- unique (kind, value, customer_id).  Each part one transaction, rolled back.
\i sql/include/expect_error.sql
-- Before the fix a merge touching a chain looped for ever; fail instead.
SET statement_timeout = '2min';

-- 1. Defect 6: batch stitching after a manual merge.  1-2 share a phone,
--    3-4 another; 2 and 3 are merged by hand; then one batch run.  All
--    four are one customer, 1 (the oldest): no record is merged into a
--    merged one, and the order, its points and the stats are on 1.
BEGIN;
SET LOCAL TimeZone = 'UTC';
SELECT set_config('crm.stitch_on_insert', 'off', true);
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT k, 'c' || k, '2025-01-01'::timestamptz + (k || ' days')::interval FROM generate_series(1, 4) k;
INSERT INTO crm.identity (kind, value, customer_id) VALUES
	('phone', '13900000601', 1), ('phone', '13900000601', 2),
	('phone', '13900000602', 3), ('phone', '13900000602', 4);
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (4, 'app', '2025-03-01', 100.00, 'D6');
SELECT crm.merge_customers(2, 3) IS NOT NULL AS merged_by_hand;
SELECT * FROM crm.stitch_identities();
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 4 ORDER BY 1;
SELECT count(*) AS records_merged_into_merged_records FROM crm.customer c
JOIN crm.customer p ON p.customer_id = c.merged_into WHERE p.merged_into IS NOT NULL;
SELECT survivor, merged, members, source, orders_moved FROM crm.merge_log ORDER BY merge_id;
SELECT external_ref, customer_id, origin_customer_id FROM crm.orders WHERE external_ref = 'D6';
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 4 ORDER BY 1;
SELECT crm.points_balance(1, '2025-03-02') AS points_of_1;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id <= 4 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
-- a second run changes nothing; merging any two of the records again is
-- refused as one customer
SELECT * FROM crm.stitch_identities();
SELECT pg_temp.expect_error($$SELECT crm.merge_customers(4, 3)$$);
-- undoing everything, newest first, gives every record its own rows back
SELECT sum(crm.unmerge(merge_id)) AS undone FROM (SELECT merge_id FROM crm.merge_log ORDER BY merge_id DESC) m;
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 4 ORDER BY 1;
SELECT external_ref, customer_id FROM crm.orders WHERE external_ref = 'D6';
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 4 ORDER BY 1;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id <= 4 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 2. The same with online stitching: the manual merge first, then the
--    identifiers arrive one by one.
BEGIN;
SET LOCAL TimeZone = 'UTC';
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT k, 'c' || k, '2025-01-01'::timestamptz + (k || ' days')::interval FROM generate_series(1, 4) k;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (4, 'app', '2025-03-01', 100.00, 'D6');
SELECT crm.merge_customers(2, 3) IS NOT NULL AS merged_by_hand;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000602', 3), ('phone', '13900000602', 4);
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000601', 1), ('phone', '13900000601', 2);
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 4 ORDER BY 1;
SELECT survivor, merged, members, source FROM crm.merge_log ORDER BY merge_id;
SELECT external_ref, customer_id FROM crm.orders WHERE external_ref = 'D6';
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 4 ORDER BY 1;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id <= 4 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 3. Chains an older release left (the end state of defect 6 under 0.1.0,
--    made here by hand with triggers off: 4 merged into 2, 2 and 3 into 1,
--    the order and its 100 points on 2).  A manual merge resolves both
--    sides to golden 1; the next batch run repairs the chain.
BEGIN;
SET LOCAL TimeZone = 'UTC';
SELECT set_config('crm.stitch_on_insert', 'off', true);
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT k, 'c' || k, '2025-01-01'::timestamptz + (k || ' days')::interval FROM generate_series(1, 5) k;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (4, 'app', '2025-03-01', 100.00, 'D6');
SET LOCAL session_replication_role = replica;
UPDATE crm.customer SET merged_into = 1 WHERE customer_id IN (2, 3);
UPDATE crm.customer SET merged_into = 2 WHERE customer_id = 4;
UPDATE crm.orders SET customer_id = 2 WHERE external_ref = 'D6';
RESET session_replication_role;
SELECT crm.run_customer_hooks('merge', 1, 2) >= 2 AS hooks_ran, crm.run_customer_hooks('merge', 2, 4) >= 2 AS hooks_ran;
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 4 ORDER BY 1;
SELECT crm.golden_customer(4) AS golden_of_4, crm.golden_customer(2) AS golden_of_2, crm.golden_customer(1) AS golden_of_1;
SELECT pg_temp.expect_error($$SELECT crm.merge_customers(4, 3)$$);
SELECT * FROM crm.stitch_identities();
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 5 ORDER BY 1;
SELECT external_ref, customer_id, origin_customer_id FROM crm.orders WHERE external_ref = 'D6';
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 4 ORDER BY 1;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id <= 4 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.stitch_identities();
SELECT * FROM crm.verify();
ROLLBACK;

-- 4. A golden that heads a chain is merged into an older golden: every
--    record under it, the chained ones included, moves to the survivor
--    with its rows and points.
BEGIN;
SET LOCAL TimeZone = 'UTC';
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT k, 'c' || k, '2025-01-01'::timestamptz + (k || ' days')::interval FROM generate_series(1, 5) k;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (5, 'app', '2025-03-01', 100.00, 'D6');
SET LOCAL session_replication_role = replica;
UPDATE crm.customer SET merged_into = 2 WHERE customer_id IN (3, 4);
UPDATE crm.customer SET merged_into = 3 WHERE customer_id = 5;
UPDATE crm.orders SET customer_id = 3 WHERE external_ref = 'D6';
RESET session_replication_role;
SELECT crm.run_customer_hooks('merge', 2, 3) >= 2 AS hooks_ran, crm.run_customer_hooks('merge', 3, 5) >= 2 AS hooks_ran;
SELECT crm.merge_customers(5, 1) IS NOT NULL AS merged_by_hand;
SELECT survivor, merged, members, source, orders_moved FROM crm.merge_log ORDER BY merge_id;
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 5 ORDER BY 1;
SELECT external_ref, customer_id FROM crm.orders WHERE external_ref = 'D6';
SELECT customer_id, crm.ledger_total(ledger) AS points FROM crm.loyalty_account WHERE customer_id <= 5 ORDER BY 1;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id <= 5 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 5. Defect 9: two records of one golden receive the same stray identifier
--    while online stitching is off.  The batch run moves one to the golden
--    and leaves the other parked on its record; later runs work, and
--    unmerging puts each back on its own record.
BEGIN;
SET LOCAL TimeZone = 'UTC';
SELECT set_config('crm.stitch_on_insert', 'off', true);
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT k, 'c' || k, '2025-01-01'::timestamptz + (k || ' days')::interval FROM generate_series(1, 3) k;
SELECT crm.merge_customers(1, 2) IS NOT NULL AS merged_1_2, crm.merge_customers(1, 3) IS NOT NULL AS merged_1_3;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13912345678', 2), ('phone', '13912345678', 3);
SELECT * FROM crm.stitch_identities();
SELECT kind, value, customer_id, origin_customer_id FROM crm.identity WHERE value = '13912345678' ORDER BY origin_customer_id;
SELECT * FROM crm.stitch_identities();
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 3 ORDER BY 1;
-- a third holder arrives: still one row per (kind, value, customer)
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (4, 'c4', '2025-01-05');
SELECT crm.merge_customers(1, 4) IS NOT NULL AS merged_1_4;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13912345678', 4);
SELECT * FROM crm.stitch_identities();
SELECT kind, value, customer_id, origin_customer_id FROM crm.identity WHERE value = '13912345678' ORDER BY origin_customer_id;
SELECT sum(crm.unmerge(merge_id)) AS undone FROM (SELECT merge_id FROM crm.merge_log ORDER BY merge_id DESC) m;
SELECT kind, value, customer_id, origin_customer_id FROM crm.identity WHERE value = '13912345678' ORDER BY origin_customer_id;
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id <= 4 ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
RESET statement_timeout;
