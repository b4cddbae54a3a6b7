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
\c :regress_db
DROP DATABASE crm_kept_plans;
