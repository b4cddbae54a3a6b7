-- Settings that change stored results are not a session's to set, and the
-- journal's guard has no switch to turn it off.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
CREATE ROLE crm_settings_app NOLOGIN;
GRANT USAGE ON SCHEMA crm TO crm_settings_app;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA crm TO crm_settings_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA crm TO crm_settings_app;

-- crm.as_of moves the time that stages and tags are written as of: only a
-- superuser (or a role granted SET on it) may change it.  Set before
-- crm_ext's library is loaded in a session, it is only a placeholder, and the
-- load throws it away (with a WARNING) when the role that set it may not.
SET LOCAL ROLE crm_settings_app;
SET LOCAL crm.as_of = '2030-01-01 00:00+00';
SELECT crm.segmentation_now() = pg_catalog.now() AS transaction_start;
SELECT pg_temp.expect_error($$SET crm.as_of = '2030-01-01'$$);
SELECT pg_temp.expect_error($$SELECT pg_catalog.set_config('crm.as_of', '2030-01-01', true)$$);
RESET ROLE;
-- a superuser may still give a role or database its own value, or grant SET
SELECT pg_temp.expect_error($$ALTER ROLE crm_settings_app SET crm.as_of = '2030-01-01'$$);
ALTER ROLE crm_settings_app RESET crm.as_of;
GRANT SET ON PARAMETER crm.as_of TO crm_settings_app;
SET LOCAL ROLE crm_settings_app;
SET LOCAL crm.as_of = '2030-01-01 00:00+00';
SELECT crm.segmentation_now();
RESET ROLE;
REVOKE SET ON PARAMETER crm.as_of FROM crm_settings_app;
SET LOCAL crm.as_of = '';
SELECT crm.segmentation_now() = pg_catalog.now() AS transaction_start;
-- every crm.* setting is declared, with its type and range checked when set
SELECT pg_temp.expect_error($$SET LOCAL crm.as_of = 'next tuesday'$$);
SELECT pg_temp.expect_error($$SET LOCAL crm.loyalty_now = '2026-02-30'$$);
SELECT pg_temp.expect_error($$SET LOCAL crm.max_future = '-1 day'$$);
SELECT pg_temp.expect_error($$SET LOCAL crm.stitch_on_insert = 'maybe'$$);
SELECT pg_temp.expect_error($$SET LOCAL crm.at_risk_treshold = 0.3$$);
SELECT name, setting, vartype, context, min_val, max_val FROM pg_catalog.pg_settings
WHERE name LIKE 'crm.%' ORDER BY 1;

-- The journal: the old switch does nothing, and a row moves only along the
-- merges of its customer records.
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Bob'), (3, 'Ann (app)');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES
	(1, 'web', '2026-01-10 10:00+00', 100.00), (2, 'web', '2026-01-10 11:00+00', 50.00);
-- the old switch is ignored (declared only so that 0.1.0's SQL still runs
-- on this library until ALTER EXTENSION crm_ext UPDATE)
SET LOCAL crm.loyalty_repoint = 'on';
SELECT pg_temp.expect_error($$UPDATE crm.points_journal SET customer_id = 2 WHERE customer_id = 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.points_journal SET points = 1000 WHERE customer_id = 1$$);
SELECT pg_temp.expect_error($$DELETE FROM crm.points_journal WHERE customer_id = 1$$);
-- the merge hook called by hand, without a merge, moves nothing
SELECT pg_temp.expect_error($$SELECT crm.loyalty_merge(2, 1)$$);
SELECT customer_id, crm.points_balance(customer_id, '2026-01-11 00:00+00') FROM crm.customer ORDER BY 1;
-- a real merge moves the rows, and so does its unmerge
SELECT crm.merge_customers(1, 3, 'same person') IS NOT NULL AS merged;
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (3, 'app', '2026-01-12 10:00+00', 30.00);
SELECT customer_id, origin_customer_id, kind, points FROM crm.points_journal ORDER BY journal_id;
SELECT crm.unmerge(m.merge_id) FROM crm.merge_log m ORDER BY m.merge_id DESC LIMIT 1;
SELECT customer_id, origin_customer_id, kind, points FROM crm.points_journal WHERE kind = 'earn' ORDER BY journal_id;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
