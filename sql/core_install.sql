-- Installing crm_ext: the guard against a schema "crm" that somebody prepared
-- (objects or grants there would run as the caller of our C code), and
-- DROP EXTENSION / CREATE EXTENSION in one backend (kept plans must not
-- outlive the objects they were made for).  Runs in a database of its own.
SET client_min_messages = warning;
CREATE DATABASE crm_install_test;
CREATE ROLE crm_install_other NOLOGIN;
\c crm_install_test
SET client_min_messages = warning;
\i sql/include/expect_error.sql

-- A schema crm that belongs to another role.
CREATE SCHEMA crm AUTHORIZATION crm_install_other;
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP SCHEMA crm;

-- Ours and empty, but another role may create objects in it (or use it).
CREATE SCHEMA crm;
GRANT CREATE ON SCHEMA crm TO crm_install_other;
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
REVOKE CREATE ON SCHEMA crm FROM crm_install_other;
GRANT USAGE ON SCHEMA crm TO PUBLIC;
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP SCHEMA crm;

-- Ours, without grants, but holding an object of any kind.
CREATE FUNCTION public.planted_times(numeric, integer) RETURNS numeric
LANGUAGE sql AS 'SELECT $1 OPERATOR(pg_catalog.*) 1000';
CREATE SCHEMA crm;
CREATE OPERATOR crm.* (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = public.planted_times);
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP OPERATOR crm.* (numeric, integer);
CREATE TABLE crm.orders (x integer);
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP TABLE crm.orders;
CREATE FUNCTION crm.tick() RETURNS integer LANGUAGE sql AS 'SELECT 1';
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP FUNCTION crm.tick();
CREATE DOMAIN crm.money_amount AS numeric;
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP DOMAIN crm.money_amount;
CREATE COLLATION crm.planted (provider = libc, locale = 'C');
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP COLLATION crm.planted;
CREATE TEXT SEARCH CONFIGURATION crm.planted (COPY = pg_catalog.simple);
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
DROP TEXT SEARCH CONFIGURATION crm.planted;
ALTER DEFAULT PRIVILEGES IN SCHEMA crm GRANT SELECT ON TABLES TO crm_install_other;
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
ALTER DEFAULT PRIVILEGES IN SCHEMA crm REVOKE SELECT ON TABLES FROM crm_install_other;
DROP FUNCTION public.planted_times(numeric, integer);

-- Nothing left in it: accepted, and nobody but the owner has rights on it.
SELECT pg_temp.expect_error('CREATE EXTENSION crm_ext');
SELECT n.nspacl FROM pg_catalog.pg_namespace n WHERE n.nspname = 'crm';
DROP EXTENSION crm_ext;
DROP SCHEMA crm;

-- DROP EXTENSION and CREATE EXTENSION again in the same backend: every
-- trigger and entry point works on the new objects.
SET TimeZone = 'UTC';
CREATE EXTENSION crm_ext;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Ann (app)');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2026-01-10 10:00+00', 100.00);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
SELECT o.order_id, 1, 'FRE-0001', 'fresh', 1, 100.00 FROM crm.orders o;
UPDATE crm.orders SET refunded_amount = 10.00;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'ann@example.com', 1), ('email', 'ann@example.com', 2);
SELECT crm.redeem_points(1, 10, 'first-life', '2026-01-11 00:00+00');
SELECT crm.points_balance(1, '2026-01-12 00:00+00'), s.orders, s.spend FROM crm.customer_stats s WHERE s.customer_id = 1;
DROP EXTENSION crm_ext;
CREATE EXTENSION crm_ext;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Ann (app)');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2026-01-10 10:00+00', 200.00);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
SELECT o.order_id, 1, 'FRE-0001', 'fresh', 1, 200.00 FROM crm.orders o;
UPDATE crm.orders SET refunded_amount = 20.00;
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'ann@example.com', 1), ('email', 'ann@example.com', 2);
SELECT crm.redeem_points(1, 10, 'second-life', '2026-01-11 00:00+00');
SELECT crm.points_balance(1, '2026-01-12 00:00+00'), s.orders, s.spend FROM crm.customer_stats s WHERE s.customer_id = 1;
SELECT c.customer_id, c.merged_into FROM crm.customer c ORDER BY 1;
SELECT * FROM crm.verify_ledgers();

\c contrib_regression
SET client_min_messages = warning;
DROP DATABASE crm_install_test;
DROP ROLE crm_install_other;
SELECT * FROM crm.verify();
