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
\c :regress_db
DROP DATABASE crm_kept_plans;
