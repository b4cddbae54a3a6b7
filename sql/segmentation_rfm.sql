-- crm.rfm_score type, crm.rfm, crm.refresh_rfm, crm.rfm_segment
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';

-- text I/O, case-insensitive, blanks
SELECT 'R5F4M3'::crm.rfm_score, 'r1f2m9'::crm.rfm_score, '  R3f3M3 '::crm.rfm_score;
SELECT crm.rfm_score(5, 4, 3), crm.r('R5F4M3'), crm.f('R5F4M3'), crm.m('R5F4M3');
SELECT pg_temp.expect_error($$SELECT 'R5F4'::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT 'R0F4M3'::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT 'R5F4M3x'::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT 'F5R4M3'::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT ''::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT 'R10F1M1'::crm.rfm_score$$);
SELECT pg_temp.expect_error($$SELECT crm.rfm_score(0, 1, 1)$$);
SELECT pg_temp.expect_error($$SELECT crm.rfm_score(1, 10, 1)$$);
-- binary I/O round trip and bad binary input
SELECT crm.rfm_score_send('R5F4M3');
-- crm's operators: put crm on the search_path (or write OPERATOR(crm.=))
SET search_path = public, crm;
CREATE TEMP TABLE bin_rt (s crm.rfm_score);
INSERT INTO bin_rt VALUES ('R1F2M3'), ('R9F9M9');
COPY bin_rt TO '/tmp/crm_rfm_score.bin' WITH (FORMAT binary);
CREATE TEMP TABLE bin_rt2 (s crm.rfm_score);
COPY bin_rt2 FROM '/tmp/crm_rfm_score.bin' WITH (FORMAT binary);
SELECT s FROM bin_rt2 ORDER BY s;
-- bad binary input: a field of the wrong length, a score of 0
CREATE TEMP TABLE bin_bad (b bytea);
INSERT INTO bin_bad VALUES ('\x00010101');
COPY bin_bad TO '/tmp/crm_rfm_score_bad1.bin' WITH (FORMAT binary);
UPDATE bin_bad SET b = '\x000101';
COPY bin_bad TO '/tmp/crm_rfm_score_bad2.bin' WITH (FORMAT binary);
SELECT pg_temp.expect_error($$COPY bin_rt2 FROM '/tmp/crm_rfm_score_bad1.bin' WITH (FORMAT binary)$$);
SELECT pg_temp.expect_error($$COPY bin_rt2 FROM '/tmp/crm_rfm_score_bad2.bin' WITH (FORMAT binary)$$);
-- comparison: by R, then F, then M
SELECT 'R5F1M1'::crm.rfm_score > 'R4F9M9', 'R4F5M1'::crm.rfm_score < 'R4F5M2', 'R3F3M3'::crm.rfm_score = 'r3f3m3',
       'R3F3M3'::crm.rfm_score <> 'R3F3M4', 'R3F3M3'::crm.rfm_score <= 'R3F3M3', 'R3F3M3'::crm.rfm_score >= 'R3F3M4';
-- GROUP BY, ORDER BY, btree index, hash join
CREATE TEMP TABLE scores AS
	SELECT crm.rfm_score(1 + i % 5, 1 + (i / 5) % 5, 1 + (i / 25) % 5) AS s, i FROM generate_series(0, 999) i;
SELECT s, count(*) FROM scores GROUP BY s ORDER BY s DESC LIMIT 3;
CREATE INDEX ON scores (s);
CREATE INDEX scores_hash ON scores USING hash (s);
SET enable_seqscan = off;
SELECT count(*) FROM scores WHERE s = 'R2F3M4';
SELECT count(*) FROM scores WHERE s > 'R5F5M4';
RESET enable_seqscan;
SET enable_mergejoin = off; SET enable_nestloop = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM scores a JOIN scores b ON a.s = b.s;
SELECT count(*) FROM scores a JOIN scores b ON a.s = b.s;
RESET enable_mergejoin; RESET enable_nestloop;
SELECT count(DISTINCT s) FROM scores;

-- segments (default map)
SELECT s, crm.rfm_segment(s) FROM (VALUES ('R5F5M1'::crm.rfm_score), ('R4F4M2'), ('R5F3M3'), ('R5F1M5'), ('R4F1M1'),
	('R3F3M3'), ('R3F2M1'), ('R2F5M5'), ('R1F3M2'), ('R1F1M1'), ('R2F2M2'), ('R3F5M1'), ('R9F9M9')) v(s) ORDER BY s;
SELECT priority, segment, r_min, r_max, f_min, f_max FROM crm.rfm_segment_map ORDER BY priority;

BEGIN;
-- crm.rfm: quantile edge cases
INSERT INTO crm.customer (customer_id, name) SELECT i, 'c' || i FROM generate_series(1, 12) i;
-- no orders: no rows
SELECT count(*) FROM crm.rfm('2026-01-01');
-- one customer
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-12-01', 10);
SELECT * FROM crm.rfm('2026-01-01');
-- all equal: everyone scores 1
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (2, 'web', '2025-12-01', 10), (3, 'web', '2025-12-01', 10);
SELECT * FROM crm.rfm('2026-01-01') ORDER BY customer_id;
-- fewer customers than bins: 3 distinct values over 5 bins
UPDATE crm.orders SET amount = 20 WHERE customer_id = 2;
UPDATE crm.orders SET amount = 30, ordered_at = '2025-12-31' WHERE customer_id = 3;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (3, 'web', '2025-06-01', 5.55);
SELECT * FROM crm.rfm('2026-01-01') ORDER BY customer_id;
-- refunded orders, orders at or after as_of, merged records do not count; partial refunds reduce monetary
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, status) VALUES (1, 'web', '2025-12-20', 99, 'refunded');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2026-01-01', 99);
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, refunded_amount) VALUES (2, 'web', '2025-11-01', 50, 12.5);
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (4, 'web', '2025-11-01', 1000);
UPDATE crm.customer SET merged_into = 1 WHERE customer_id = 4;
SELECT * FROM crm.rfm('2026-01-01') ORDER BY customer_id;
-- ties: ten customers, values in pairs; equal values always equal scores
UPDATE crm.customer SET merged_into = NULL WHERE customer_id = 4;
DELETE FROM crm.orders;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT c, 'web', '2025-12-31'::timestamptz - ((c + 1) / 2) * interval '10 days', 10 * ((c + 1) / 2)
FROM generate_series(1, 10) c, generate_series(1, (c + 1) / 2) k;
SELECT customer_id, recency_days, frequency, monetary, score, segment FROM crm.rfm('2026-01-01') ORDER BY customer_id;
SELECT customer_id, score FROM crm.rfm('2026-01-01', 3) ORDER BY customer_id;
SELECT customer_id, score FROM crm.rfm('2026-01-01', 1) ORDER BY customer_id;
-- fixed cut points
SELECT customer_id, recency_days, frequency, monetary, score FROM crm.rfm('2026-01-01', 5, 'fixed') ORDER BY customer_id;
-- monetary agrees with SQL to the cent
SELECT bool_and(r.monetary = s.m) FROM crm.rfm('2026-01-01') r
	JOIN (SELECT customer_id, sum(net_amount) m FROM crm.orders GROUP BY 1) s USING (customer_id);
-- refresh
SELECT crm.refresh_rfm('2026-01-01');
SELECT customer_id, as_of, score, segment FROM crm.customer_rfm ORDER BY customer_id LIMIT 3;
SELECT crm.refresh_rfm('2026-01-01');
SELECT count(*) FROM crm.customer_rfm;
-- the refresh writes only what changed: nothing when run again, nothing
-- when time passes without orders (quantile scores are ranks), the new
-- buyer's row and the rows whose scores moved after an order
SELECT scored, rows_written, rows_deleted FROM crm.rfm_refresh;
SELECT crm.refresh_rfm('2026-01-08');
SELECT as_of, scored, rows_written, rows_deleted FROM crm.rfm_refresh;
SELECT customer_id, recency_days, last_order_at FROM crm.customer_rfm WHERE customer_id = 1;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (10, 'web', '2026-01-05', 500);
SELECT crm.refresh_rfm('2026-01-08');
SELECT scored, rows_written, rows_deleted FROM crm.rfm_refresh;
-- a merged record and a customer whose only order was refunded drop out
UPDATE crm.customer SET merged_into = 1 WHERE customer_id = 9;
UPDATE crm.orders SET status = 'refunded' WHERE customer_id = 2;
SELECT crm.refresh_rfm('2026-01-08');
SELECT scored, rows_written, rows_deleted FROM crm.rfm_refresh;
-- the stored view equals crm.rfm at the same moment, row for row
SELECT count(*) AS differing FROM (
	(SELECT customer_id, recency_days, frequency, monetary, score, segment FROM crm.customer_rfm
	 EXCEPT SELECT customer_id, recency_days, frequency, monetary, score, segment FROM crm.rfm('2026-01-08'))
	UNION ALL
	(SELECT customer_id, recency_days, frequency, monetary, score, segment FROM crm.rfm('2026-01-08')
	 EXCEPT SELECT customer_id, recency_days, frequency, monetary, score, segment FROM crm.customer_rfm)) d;
-- fixed cut points move with time, and bins are recorded
SELECT crm.refresh_rfm('2026-06-01', 5, 'fixed');
SELECT bins, method, scored, rows_written FROM crm.rfm_refresh;
SELECT count(*) AS differing FROM (SELECT customer_id, score FROM crm.customer_rfm
	EXCEPT SELECT customer_id, score FROM crm.rfm('2026-06-01', 5, 'fixed')) d;
UPDATE crm.customer SET merged_into = NULL WHERE customer_id = 9;
SELECT crm.refresh_rfm('2026-01-08');
-- a changed segment map is seen at once
UPDATE crm.rfm_segment_map SET segment = 'Top' WHERE priority = 10;
SELECT crm.rfm_segment('R5F5M5');
-- and a refresh rewrites exactly the rows whose segment name changed
SELECT count(*) AS renamed FROM crm.customer_rfm WHERE segment <> crm.rfm_segment(score);
SELECT crm.refresh_rfm('2026-01-08');
SELECT rows_written FROM crm.rfm_refresh;
SELECT count(*) AS renamed FROM crm.customer_rfm WHERE segment <> crm.rfm_segment(score);
SELECT * FROM crm.verify();
ROLLBACK;
SELECT crm.rfm_segment('R5F5M5');
-- errors
SELECT pg_temp.expect_error($$SELECT * FROM crm.rfm('2026-01-01', 0)$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.rfm('2026-01-01', 10)$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.rfm('2026-01-01', 5, 'ntile')$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.rfm('infinity')$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_rfm('2026-01-01', 5, 'ntile')$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_rfm('2026-01-01', 12)$$);
SELECT count(*) FROM crm.rfm(NULL);
