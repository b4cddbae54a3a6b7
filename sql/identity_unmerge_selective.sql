-- Selective unmerge (issue 13, defect 4).  Undoing a merge takes back
-- exactly the merged record, the records merged into it before, and the
-- rows and points that arrived on them (origin_customer_id); merges made
-- later stay.  Only the pair a person separated is kept apart.  Each part
-- one transaction, rolled back.
\i sql/include/expect_error.sql
-- Sequences are not rolled back: remember them, so that later files see
-- the ids they expect (identity_stitch prints merge ids).
CREATE TEMP TABLE seq_before AS
	SELECT format('%I.%I', schemaname, sequencename) AS seq, start_value, last_value
	FROM pg_sequences WHERE schemaname = 'crm';

-- 1. A wrong manual merge M (A+B), then a right online merge N (A+C, a
--    shared phone).  B was the survivor of an earlier merge Q (B+D).
--    Undoing M gives B back with D, their orders (one placed for B while
--    merged) and their points; A and C stay one customer.
BEGIN;
SET LOCAL TimeZone = 'UTC';
SET LOCAL crm.loyalty_now = '2025-04-01 00:00+00';
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'A', '2020-01-01'), (2, 'B', '2020-01-02'), (3, 'C', '2020-01-03'), (4, 'D', '2020-01-04');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES
	(2, 'web', '2025-01-10', 200.00, 'b1'),		-- lots of January expire 2026-02-01
	(4, 'web', '2025-01-20', 50.00, 'd1'),
	(1, 'web', '2025-02-10', 100.00, 'a1'),		-- February's 2026-03-01
	(3, 'web', '2025-03-10', 300.00, 'c1');		-- March's 2026-04-01
CREATE TEMP TABLE m (name text PRIMARY KEY, merge_id bigint);
INSERT INTO m SELECT 'Q', crm.merge_customers(2, 4, 'B and D: one person');
INSERT INTO m SELECT 'M', crm.merge_customers(1, 2, 'wrong');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000701', 1), ('phone', '13900000701', 3);
INSERT INTO m SELECT 'N', l.merge_id FROM crm.merge_log l WHERE l.survivor = 1 AND l.merged = 3;
SELECT name, l.survivor, l.merged, l.members, l.source FROM m JOIN crm.merge_log l USING (merge_id) ORDER BY l.merge_id;
-- while merged: an order for B's record (it goes to the golden, A) and one
-- for C's; the golden spends 300 points, FIFO: B's and D's January lots
-- (250) first, then 50 of A's February lot
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES
	(2, 'web', '2025-03-20', 40.00, 'b2'),
	(3, 'web', '2025-03-25', 60.00, 'c2');
SELECT crm.redeem_points(1, 300, 'selective-1', '2025-04-01+00') AS balance_after_spend;
SELECT external_ref, customer_id, origin_customer_id FROM crm.orders ORDER BY external_ref;
SELECT crm.unmerge((SELECT merge_id FROM m WHERE name = 'M')) AS undone;
SELECT customer_id, merged_into FROM crm.customer ORDER BY 1;
SELECT external_ref, customer_id, origin_customer_id FROM crm.orders ORDER BY external_ref;
SELECT customer_id, count(*) AS orders, sum(amount) AS amount FROM crm.orders GROUP BY 1 ORDER BY 1;
SELECT customer_id, kind, value FROM crm.identity ORDER BY identity_id;
-- points: B's rows go back; the 250 the golden spent of B's and D's lots
-- are charged to B (the earner): A 50 + 300 + 60 = 410, B 40
SELECT crm.points_balance(1, '2025-04-01+00') AS a_points, crm.points_balance(2, '2025-04-01+00') AS b_points;
SELECT customer_id, origin_customer_id, kind, points, reason FROM crm.points_journal
WHERE kind IN ('merge', 'spend') ORDER BY journal_id;
SELECT customer_id, orders, spend FROM crm.customer_stats WHERE customer_id IN (1, 2) ORDER BY 1;
SELECT name, l.undone_at IS NOT NULL AS undone FROM m JOIN crm.merge_log l USING (merge_id) ORDER BY l.merge_id;
-- only A-B is kept apart, never A-C
SELECT customer_a, customer_b, conflict_kind, source, merge_id = (SELECT merge_id FROM m WHERE name = 'M') AS by_m, resolution
FROM crm.identity_review ORDER BY review_id;
-- stitching leaves the pair apart: B gets A's phone, nothing merges
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000701', 2);
SELECT merges FROM crm.stitch_identities();
SELECT customer_id, merged_into FROM crm.customer ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
-- undoing Q and N now: every record on its own
SELECT crm.unmerge((SELECT merge_id FROM m WHERE name = 'Q')) AS undone_q, crm.unmerge((SELECT merge_id FROM m WHERE name = 'N')) AS undone_n;
SELECT customer_id, merged_into, (SELECT count(*) FROM crm.orders o WHERE o.customer_id = c.customer_id) AS orders,
       CASE WHEN merged_into IS NULL THEN crm.points_balance(customer_id, '2025-04-01+00') END AS points
FROM crm.customer c ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 2. cascade => true still undoes the later merges of the same customers
--    first (newest first), and keeps each pair it separates apart.
BEGIN;
SET LOCAL TimeZone = 'UTC';
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (1, 'A', '2020-01-01'), (2, 'B', '2020-01-02'), (3, 'C', '2020-01-03');
SELECT crm.merge_customers(1, 2) AS m \gset
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000702', 1), ('phone', '13900000702', 3);
SELECT crm.unmerge(:m, cascade => true) AS undone;
SELECT customer_id, merged_into FROM crm.customer ORDER BY 1;
SELECT customer_a, customer_b, source, resolution FROM crm.identity_review ORDER BY review_id;
SELECT * FROM crm.verify();
ROLLBACK;

-- 3. Three ways, and a survivor merged on: A+B (M1), A+E (M2), then Z+A
--    (M3, Z older).  Undoing M1 takes B out of Z's customer; A and E stay.
--    Undoing M3 then gives A back with E (merged into A before).
BEGIN;
SET LOCAL TimeZone = 'UTC';
SET LOCAL crm.loyalty_now = '2025-04-01 00:00+00';
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(11, 'Z', '2020-01-01'), (12, 'A', '2020-01-02'), (13, 'B', '2020-01-03'), (14, 'E', '2020-01-04');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES
	(11, 'web', '2025-02-10', 10.00, 'z1'), (12, 'web', '2025-02-11', 20.00, 'a1'),
	(13, 'web', '2025-02-12', 30.00, 'b1'), (14, 'web', '2025-02-13', 40.00, 'e1');
SELECT crm.merge_customers(12, 13) AS m1 \gset
SELECT crm.merge_customers(12, 14) AS m2 \gset
SELECT crm.merge_customers(11, 12) AS m3 \gset
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (13, 'web', '2025-03-01', 5.00, 'b2');
SELECT crm.unmerge(:m1) AS undone_m1;
SELECT customer_id, merged_into, (SELECT string_agg(o.external_ref, ',' ORDER BY o.external_ref) FROM crm.orders o WHERE o.customer_id = c.customer_id) AS orders,
       CASE WHEN merged_into IS NULL THEN crm.points_balance(customer_id, '2025-04-01+00') END AS points
FROM crm.customer c ORDER BY 1;
SELECT crm.unmerge(:m3) AS undone_m3;
SELECT customer_id, merged_into, (SELECT string_agg(o.external_ref, ',' ORDER BY o.external_ref) FROM crm.orders o WHERE o.customer_id = c.customer_id) AS orders,
       CASE WHEN merged_into IS NULL THEN crm.points_balance(customer_id, '2025-04-01+00') END AS points
FROM crm.customer c ORDER BY 1;
SELECT survivor, merged, undone_at IS NOT NULL AS undone FROM crm.merge_log ORDER BY merge_id;
SELECT customer_a, customer_b, resolution FROM crm.identity_review ORDER BY review_id;
SELECT customer_id, orders, spend FROM crm.customer_stats ORDER BY 1;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 4. What is still refused, and why
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'A'), (2, 'B');
SELECT crm.merge_customers(1, 2) AS m \gset
SELECT crm.unmerge(:m) AS undone;
SELECT regexp_replace(pg_temp.expect_error(format('SELECT crm.unmerge(%s)', :m)), '\m[0-9]+\M', 'N', 'g') AS again;
SELECT pg_temp.expect_error($$SELECT crm.unmerge(-1)$$) AS unknown;
SELECT * FROM crm.verify();
ROLLBACK;

-- 5. Parked identities move up when the copy their golden held leaves:
--    A+C moves C's device to A; A+D parks D's (A holds it); undoing A+C
--    takes C's back to C, and D's moves up to A.
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES (1, 'A', '2020-01-01'), (3, 'C', '2020-01-03'), (4, 'D', '2020-01-04');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('device', 'dev-park-1', 3);
SELECT set_config('crm.stitch_on_insert', 'off', true) IS NOT NULL AS stitching_off;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('device', 'dev-park-1', 4);
SELECT crm.merge_customers(1, 3) AS m_ac \gset
SELECT crm.merge_customers(1, 4) AS m_ad \gset
SELECT customer_id, origin_customer_id FROM crm.identity WHERE value = 'dev-park-1' ORDER BY identity_id;
SELECT crm.unmerge(:m_ac) AS undone;
SELECT customer_id, origin_customer_id FROM crm.identity WHERE value = 'dev-park-1' ORDER BY identity_id;
SELECT * FROM crm.verify();
ROLLBACK;

SELECT bool_and(CASE WHEN b.last_value IS NULL THEN setval(b.seq, b.start_value, false)
                     ELSE setval(b.seq, b.last_value) END IS NOT NULL) AS sequences_restored
FROM seq_before b;
