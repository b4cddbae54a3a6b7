-- crm.tick runs registered tasks in order; crm.run_customer_hooks runs the
-- merge/unmerge/forget hooks; crm.fill_origin_customer refuses misuse.
\i sql/include/expect_error.sql
BEGIN;
CREATE TABLE tick_log (task text, at timestamptz);
CREATE FUNCTION tick_a(at timestamptz) RETURNS bigint LANGUAGE sql
	AS $$ INSERT INTO public.tick_log VALUES ('a', at) RETURNING 2 $$;
CREATE FUNCTION tick_b(at timestamptz) RETURNS bigint LANGUAGE sql
	AS $$ INSERT INTO public.tick_log VALUES ('b', at) RETURNING 0 $$;
-- tasks other features registered are disabled here, so only ours run
UPDATE crm.tick_task SET enabled = false;
INSERT INTO crm.tick_task (task, run_order, fn) VALUES
	('second', 1000002, 'tick_b(timestamptz)'), ('first', 1000001, 'tick_a(timestamptz)');
SELECT * FROM crm.tick('2026-03-01 12:00+00');
SELECT task, at AT TIME ZONE 'UTC' AS at_utc FROM tick_log ORDER BY at, task;
UPDATE crm.tick_task SET enabled = false WHERE task = 'first';
SELECT * FROM crm.tick('2026-03-02 00:00+00');
SELECT pg_temp.expect_error($$SELECT * FROM crm.tick('infinity')$$);
SELECT count(*) AS rows_for_null FROM crm.tick(NULL);
SELECT pg_temp.expect_error($$INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('Bad Name', 5, 'tick_a(timestamptz)')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('dup_order', 1000001, 'tick_a(timestamptz)')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('missing', 7, 'no_such_fn(timestamptz)')$$);
-- a function crm.tick could not call is refused when it is registered
CREATE FUNCTION tick_wrong_ret(at timestamptz) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION tick_wrong_arg(at date) RETURNS bigint LANGUAGE sql AS $$ SELECT 1::bigint $$;
SELECT pg_temp.expect_error($$INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('wrong_ret', 8, 'tick_wrong_ret(timestamptz)')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('wrong_arg', 8, 'tick_wrong_arg(date)')$$);
SELECT pg_temp.expect_error($$UPDATE crm.tick_task SET fn = 'tick_wrong_ret(timestamptz)' WHERE task = 'first'$$);
SELECT * FROM crm.verify();
ROLLBACK;

BEGIN;
CREATE TABLE hook_log (event text, a bigint, b bigint);
CREATE FUNCTION log_merge(survivor bigint, merged bigint) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.hook_log VALUES ('merge', survivor, merged) $$;
CREATE FUNCTION log_forget(customer bigint) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.hook_log VALUES ('forget', customer, NULL) $$;
DELETE FROM crm.customer_hook;
INSERT INTO crm.customer_hook (event, hook, run_order, fn) VALUES
	('merge', 'log', 1, 'log_merge(bigint, bigint)'), ('forget', 'log', 1, 'log_forget(bigint)');
SELECT crm.run_customer_hooks('merge', 1, 2) AS merge_hooks_run,
       crm.run_customer_hooks('unmerge', 1, 2) AS unmerge_hooks_run,
       crm.run_customer_hooks('forget', 7) AS forget_hooks_run;
SELECT * FROM hook_log ORDER BY event;
SELECT pg_temp.expect_error($$SELECT crm.run_customer_hooks('split', 1, 2)$$);
SELECT pg_temp.expect_error($$SELECT crm.run_customer_hooks(NULL, 1, 2)$$);
SELECT pg_temp.expect_error($$SELECT crm.run_customer_hooks('merge', 1, NULL)$$);
SELECT pg_temp.expect_error($$SELECT crm.run_customer_hooks('forget', NULL)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer_hook (event, hook, run_order, fn) VALUES ('split', 'x', 1, 'log_forget(bigint)')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer_hook (event, hook, run_order, fn) VALUES ('merge', 'x', 2, 'log_forget(bigint)')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer_hook (event, hook, run_order, fn) VALUES ('forget', 'x', 2, 'log_merge(bigint, bigint)')$$);
SELECT pg_temp.expect_error($$UPDATE crm.customer_hook SET event = 'unmerge' WHERE hook = 'log' AND event = 'forget'$$);
-- merge hooks for many merges at once: a hook's set_fn once, else fn pair by pair
CREATE FUNCTION log_merge_set(survivors bigint[], merged bigint[]) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO public.hook_log VALUES ('merge_set', pg_catalog.cardinality(survivors), pg_catalog.cardinality(merged)) $$;
INSERT INTO crm.customer_hook (event, hook, run_order, fn, set_fn) VALUES
	('merge', 'log_set', 2, 'log_merge(bigint, bigint)', 'log_merge_set(bigint[], bigint[])');
DELETE FROM hook_log;
SELECT crm.run_merge_hooks('{1,1,5}', '{2,3,6}') AS merge_hooks_run, crm.run_merge_hooks('{}', '{}') AS none_run;
SELECT * FROM hook_log ORDER BY event, a, b;
SELECT pg_temp.expect_error($$SELECT crm.run_merge_hooks('{1,2}', '{3}')$$);
SELECT pg_temp.expect_error($$SELECT crm.run_merge_hooks('{1,NULL}', '{3,4}')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer_hook (event, hook, run_order, fn, set_fn) VALUES ('forget', 'y', 3, 'log_forget(bigint)', 'log_merge_set(bigint[], bigint[])')$$);
SELECT pg_temp.expect_error($$UPDATE crm.customer_hook SET set_fn = 'log_merge(bigint, bigint)' WHERE hook = 'log_set'$$);
SELECT * FROM crm.verify();
ROLLBACK;

-- the origin trigger checks how it is called
BEGIN;
CREATE TABLE t_no_origin (customer_id bigint);
CREATE TRIGGER t BEFORE INSERT ON t_no_origin FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer();
SELECT pg_temp.expect_error($$INSERT INTO t_no_origin VALUES (1)$$);
CREATE TABLE t_after (customer_id bigint, origin_customer_id bigint);
CREATE TRIGGER t AFTER INSERT ON t_after FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer();
SELECT pg_temp.expect_error($$INSERT INTO t_after VALUES (1, NULL)$$);
CREATE TABLE t_stmt (customer_id bigint, origin_customer_id bigint);
CREATE TRIGGER t BEFORE INSERT ON t_stmt FOR EACH STATEMENT EXECUTE FUNCTION crm.fill_origin_customer();
SELECT pg_temp.expect_error($$INSERT INTO t_stmt VALUES (1, NULL)$$);
CREATE TABLE t_args (customer_id bigint, origin_customer_id bigint);
CREATE TRIGGER t BEFORE INSERT ON t_args FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('x');
SELECT pg_temp.expect_error($$INSERT INTO t_args VALUES (1, NULL)$$);
CREATE TABLE t_ok (customer_id bigint, origin_customer_id bigint);
CREATE TRIGGER t BEFORE INSERT OR UPDATE ON t_ok FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer();
INSERT INTO t_ok VALUES (5, NULL), (6, 3), (NULL, NULL);
SELECT * FROM t_ok ORDER BY customer_id NULLS LAST;
SELECT * FROM crm.verify();
ROLLBACK;
SELECT pg_temp.expect_error($$SELECT crm.fill_origin_customer()$$);
