-- Issue 14, item 4: the statements the triggers keep must stay key lookups
-- whatever the statistics say.  With crm.customer_stats analyzed while
-- empty (what autovacuum does on a new install) the stats trigger's lock
-- query "customer_id = ANY ($1) ... FOR UPDATE", planned when the first
-- order came in, was a sequential scan, kept, and read the whole growing
-- table again for every batch of 2,000 customers of the first bulk load.
-- Now crm's kept statements are planned with sequential scans ruled out:
-- the load reads no row of crm.customer_stats by sequential scan.  The
-- state needs committed statistics, so this test works in a database of
-- its own.
SET TimeZone = 'UTC';
SELECT current_database() AS regress_db \gset
CREATE DATABASE crm_kept_plans;
\c crm_kept_plans
SET TimeZone = 'UTC';
CREATE EXTENSION crm_ext;
INSERT INTO crm.customer (customer_id, name, created_at)
SELECT g, 'customer ' || g, '2024-01-01+00' FROM generate_series(1, 6000) g;
ANALYZE crm.customer_stats;
BEGIN;
-- one order: the statements are planned now, on a one-row table
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-02-10 10:00+00', 20.00);
SELECT pg_stat_get_xact_tuples_returned('crm.customer_stats'::regclass) AS seq_read_before \gset
-- three batches of 2,000 customers fill the table
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT g, 'web', '2025-02-10 10:00+00', 20.00 + g % 7 FROM generate_series(2, 6000) g;
SELECT pg_stat_get_xact_tuples_returned('crm.customer_stats'::regclass) - :seq_read_before AS seq_read;
SELECT count(*) AS stats_rows FROM crm.customer_stats;
SELECT count(*) AS invariant_violations FROM crm.verify();
ROLLBACK;

-- Issue 15: with crm.orders analyzed while it held one order (here; a new
-- Citus shard is another way there), the stats trigger's query over a
-- statement's lines joined the orders on the outside, by the customer
-- index, and read the transition table of lines again for each order: 75 s
-- for 69,000 lines on a shard.  Each line now finds its order by key, once:
-- the orders' primary key is probed at least once per line.
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (1, 1, 'web', '2025-02-10 10:00+00', 20.00);
ANALYZE crm.orders;
BEGIN;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
SELECT g, g % 6000 + 1, 'web', '2025-02-10 10:00+00', 20.00 FROM generate_series(2, 3001) g;
SELECT pg_stat_get_xact_numscans('crm.orders_pkey'::regclass) AS pkey_scans_before \gset
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
SELECT g / 2 + 1, g % 2 + 1, 'SKU-' || g % 40, 'cat' || g % 5, 1, 10.00 FROM generate_series(2, 6001) g;
SELECT pg_stat_get_xact_numscans('crm.orders_pkey'::regclass) - :pkey_scans_before >= 6000 AS each_line_found_its_order_by_key;
SELECT count(*) AS invariant_violations FROM crm.verify();
ROLLBACK;

-- Issue 14: sequential scans ruled out, the planner still chose among
-- indexes by size, and with crm.customer_tag analyzed while empty (and
-- empty when the first order planned the statements) every index costs
-- the same: the lock query read each customer's tags by a full scan of the
-- primary key (tag_id, customer_id), once per customer (a load of 100k
-- customers: 63 s against 26 s never analyzed; here 215 index pages per
-- customer).  Keyed statements now plan every table as at least 1,000 rows
-- in 10 pages, so the tags are read by customer_tag_customer_idx and the
-- primary key is touched only by the tags written, a few pages per customer.
\c crm_kept_plans
SET TimeZone = 'UTC';
INSERT INTO crm.tag (name, kind) SELECT 'manual_' || g, 'manual' FROM generate_series(1, 8) g;
ANALYZE crm.customer_tag;
BEGIN;
-- planned now, with crm.customer_tag empty
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-02-10 10:00+00', 20.00);
INSERT INTO crm.customer_tag (tag_id, customer_id, since)
SELECT t.tag_id, c.customer_id, '2024-06-01+00' FROM crm.tag t, crm.customer c WHERE t.kind = 'manual';
SELECT pg_relation_size('crm.customer_tag_pkey') / 8192 > 100 AS pkey_over_100_pages;
SELECT pg_stat_get_xact_blocks_fetched('crm.customer_tag_pkey'::regclass) AS pkey_pages_before \gset
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT g, 'web', '2025-02-10 10:00+00', 20.00 FROM generate_series(2, 6000) g;
SELECT (pg_stat_get_xact_blocks_fetched('crm.customer_tag_pkey'::regclass) - :pkey_pages_before) / 5999 < 10
	AS under_10_pkey_pages_per_customer;
SELECT count(*) AS stats_rows FROM crm.customer_stats;
SELECT count(*) AS invariant_violations FROM crm.verify();
ROLLBACK;
\c :regress_db
DROP DATABASE crm_kept_plans;
