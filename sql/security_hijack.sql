-- search_path hijack (TESTING.md kind 10).  C functions and triggers run
-- with the caller's search_path, so SQL that crm_ext's C code runs must
-- name every operator, function and type with its schema.  Here a role that
-- may create objects plants look-alikes in its own schema "hijack": every
-- pg_catalog operator on the types crm_ext uses (same signature, so they win
-- where "hijack" comes first in the path), cross-type operators pg_catalog
-- does not have (numeric * integer, which wins even behind pg_catalog),
-- functions and aggregates with the names crm_ext calls (exact and more
-- specific signatures), and domains named like the built-in types.  Each
-- look-alike computes the right answer and records that it ran.  Then every
-- trigger and entry point runs, as the superuser and as a role that owns
-- nothing, with search_path = hijack, pg_catalog: nothing may be recorded.
-- Last, every crm function must have been called (track_functions), so a
-- new entry point cannot slip past this test.
-- One transaction, rolled back.
SET TimeZone = 'UTC';
SET client_min_messages = warning;
BEGIN;
SET LOCAL track_functions = 'all';
CREATE ROLE crm_hijacker NOLOGIN;
CREATE ROLE crm_caller NOLOGIN;
CREATE SCHEMA hijack AUTHORIZATION crm_hijacker;
GRANT USAGE ON SCHEMA hijack TO PUBLIC;
CREATE TABLE hijack.ran (what text);
GRANT INSERT ON hijack.ran TO PUBLIC;
GRANT USAGE ON SCHEMA crm TO crm_caller;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO crm_caller;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA crm TO crm_caller;

SET ROLE crm_hijacker;
CREATE FUNCTION hijack.note(what text) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog AS $$ INSERT INTO hijack.ran VALUES (what) RETURNING true $$;

-- Every operator of pg_catalog on these types, again in "hijack".
DO $plant$
DECLARE
	o record;
	fn text;
	body text;
BEGIN
	FOR o IN
		SELECT op.oid, op.oprname, op.oprleft, op.oprright, op.oprresult
		FROM pg_catalog.pg_operator op
		CROSS JOIN (SELECT '{smallint,integer,bigint,numeric,"double precision",real,text,"character varying",character,boolean,date,
			"timestamp with time zone","timestamp without time zone",interval,jsonb,json,tid,oid,name,anyarray,anyelement,
			anycompatible,anycompatiblearray,anynonarray,"bigint[]","text[]"}'::pg_catalog.text[] AS types) t
		WHERE op.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
		  AND op.oprcode::pg_catalog.oid OPERATOR(pg_catalog.<>) 0
		  AND (op.oprleft OPERATOR(pg_catalog.=) 0 OR op.oprleft::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.=) ANY (t.types))
		  AND op.oprright::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.=) ANY (t.types)
		  AND op.oprresult::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.<>) 'internal'
		ORDER BY op.oid
	LOOP
		fn := pg_catalog.format('hijack.op_%s', o.oid);
		IF o.oprleft OPERATOR(pg_catalog.=) 0 THEN
			body := pg_catalog.format('OPERATOR(pg_catalog.%s) $1', o.oprname);
			EXECUTE pg_catalog.format('CREATE FUNCTION %s(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
				fn, o.oprright::pg_catalog.regtype, o.oprresult::pg_catalog.regtype,
				pg_catalog.format('BEGIN PERFORM hijack.note(%L); RETURN %s; END', 'operator ' || o.oprname, body));
			EXECUTE pg_catalog.format('CREATE OPERATOR hijack.%s (RIGHTARG = %s, FUNCTION = %s)', o.oprname, o.oprright::pg_catalog.regtype, fn);
		ELSE
			body := pg_catalog.format('$1 OPERATOR(pg_catalog.%s) $2', o.oprname);
			EXECUTE pg_catalog.format('CREATE FUNCTION %s(%s, %s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
				fn, o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype, o.oprresult::pg_catalog.regtype,
				pg_catalog.format('BEGIN PERFORM hijack.note(%L); RETURN %s; END', 'operator ' || o.oprname, body));
			EXECUTE pg_catalog.format('CREATE OPERATOR hijack.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)',
				o.oprname, o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype, fn);
		END IF;
	END LOOP;
END
$plant$;

-- Mixed numeric operators pg_catalog lacks: an exact match beats pg_catalog's
-- numeric/numeric one even when pg_catalog is searched first.
DO $plant$
DECLARE
	op text;
	pair text[];
	res text;
BEGIN
	FOREACH op IN ARRAY '{+,-,*,/,%,=,<>,<,>,<=,>=}'::pg_catalog.text[] LOOP
		FOREACH pair SLICE 1 IN ARRAY '{{numeric,integer},{integer,numeric},{numeric,bigint},{bigint,numeric},{numeric,"double precision"},{"double precision",numeric},{numeric,smallint},{bigint,"double precision"}}'::pg_catalog.text[] LOOP
			res := CASE WHEN op OPERATOR(pg_catalog.=) ANY ('{+,-,*,/,%}') THEN 'numeric' ELSE 'boolean' END;
			EXECUTE pg_catalog.format('CREATE FUNCTION hijack.mixed_%s(%s, %s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
				pg_catalog.md5(op || pair[1] || pair[2]), pair[1], pair[2], res,
				pg_catalog.format('BEGIN PERFORM hijack.note(%L); RETURN $1::pg_catalog.numeric OPERATOR(pg_catalog.%s) $2::pg_catalog.numeric; END',
					'operator ' || pair[1] || ' ' || op || ' ' || pair[2], op));
			EXECUTE pg_catalog.format('CREATE OPERATOR hijack.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = hijack.mixed_%s)',
				op, pair[1], pair[2], pg_catalog.md5(op || pair[1] || pair[2]));
		END LOOP;
	END LOOP;
END
$plant$;

-- Same-signature copies of the plain pg_catalog functions whose names
-- crm_ext's SQL uses, and more specific versions of polymorphic ones.
DO $plant$
DECLARE
	f record;
	names text[] := '{now,date_part,lower,upper,btrim,hashtext,format,pg_advisory_xact_lock,tideq,current_setting,set_config,
		nextval,length,floor,ceil,round,abs,exp,ln,sqrt,power,date_trunc,timezone,to_jsonb,jsonb_build_object,array_length,
		cardinality,array_position,make_interval,to_char,md5,concat,left,right,substr,extract,age,justify_days,
		jsonb_typeof,trunc,mod,sign,array_cat,array_append,int8,numeric,text,float8,date,timestamptz,clock_timestamp,
		statement_timestamp,transaction_timestamp,pg_trigger_depth,quote_ident,quote_literal,string_agg,regexp_replace,
		split_part,strpos,position,char_length,octet_length,width_bucket,random,setseed,percentile_cont,generate_series}';
	args text;
	call text;
BEGIN
	FOR f IN
		SELECT p.oid, p.proname, p.pronargs, p.proargtypes::pg_catalog.oid[] AS argtypes, p.prorettype
		FROM pg_catalog.pg_proc p
		WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
		  AND p.proname OPERATOR(pg_catalog.=) ANY (names) AND p.prokind OPERATOR(pg_catalog.=) 'f' AND NOT p.proretset
		  AND p.provariadic OPERATOR(pg_catalog.=) 0
		  AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[] OPERATOR(pg_catalog.||) p.prorettype) t(typ)
		                  JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) t.typ
		                  WHERE ty.typtype OPERATOR(pg_catalog.=) 'p' OR ty.typname OPERATOR(pg_catalog.=) ANY ('{internal,cstring}'))
		ORDER BY p.oid
	LOOP
		SELECT pg_catalog.string_agg(pg_catalog.format_type(a.t, NULL), ', ' ORDER BY a.n),
		       pg_catalog.string_agg('$' || a.n, ', ' ORDER BY a.n)
		INTO args, call FROM pg_catalog.unnest(f.argtypes) WITH ORDINALITY a(t, n);
		EXECUTE pg_catalog.format('CREATE FUNCTION hijack.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
			f.proname, coalesce(args, ''), pg_catalog.format_type(f.prorettype, NULL),
			pg_catalog.format('BEGIN PERFORM hijack.note(%L); RETURN pg_catalog.%I(%s); END', 'function ' || f.proname, f.proname, coalesce(call, '')));
	END LOOP;
END
$plant$;
CREATE FUNCTION hijack.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION hijack.unnest(integer[]) RETURNS SETOF integer LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION hijack.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION hijack.unnest(timestamptz[]) RETURNS SETOF timestamptz LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION hijack.unnest(numeric[]) RETURNS SETOF numeric LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION hijack.jsonb_each(jsonb, OUT key text, OUT value jsonb) RETURNS SETOF record LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('function jsonb_each'); RETURN QUERY SELECT * FROM pg_catalog.jsonb_each($1); END $$;
CREATE FUNCTION hijack.noted_sum(numeric, anyelement) RETURNS numeric LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('aggregate'); RETURN coalesce($1, 0) OPERATOR(pg_catalog.+) $2::pg_catalog.numeric; END $$;
CREATE FUNCTION hijack.noted_min(anyelement, anyelement) RETURNS anyelement LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('aggregate'); RETURN LEAST($1, $2); END $$;
CREATE FUNCTION hijack.noted_max(anyelement, anyelement) RETURNS anyelement LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('aggregate'); RETURN GREATEST($1, $2); END $$;
CREATE FUNCTION hijack.noted_count(bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('aggregate'); RETURN $1 OPERATOR(pg_catalog.+) 1; END $$;
CREATE FUNCTION hijack.noted_append(anyarray, anyelement) RETURNS anyarray LANGUAGE plpgsql SET search_path = pg_catalog AS
	$$ BEGIN PERFORM hijack.note('aggregate'); RETURN pg_catalog.array_append($1, $2); END $$;
CREATE AGGREGATE hijack.sum(bigint) (SFUNC = hijack.noted_sum, STYPE = numeric);
CREATE AGGREGATE hijack.sum(integer) (SFUNC = hijack.noted_sum, STYPE = numeric);
CREATE AGGREGATE hijack.sum(numeric) (SFUNC = hijack.noted_sum, STYPE = numeric);
CREATE AGGREGATE hijack.min(timestamptz) (SFUNC = hijack.noted_min, STYPE = timestamptz);
CREATE AGGREGATE hijack.max(timestamptz) (SFUNC = hijack.noted_max, STYPE = timestamptz);
CREATE AGGREGATE hijack.min(bigint) (SFUNC = hijack.noted_min, STYPE = bigint);
CREATE AGGREGATE hijack.max(bigint) (SFUNC = hijack.noted_max, STYPE = bigint);
CREATE AGGREGATE hijack.min(date) (SFUNC = hijack.noted_min, STYPE = date);
CREATE AGGREGATE hijack.max(date) (SFUNC = hijack.noted_max, STYPE = date);
CREATE AGGREGATE hijack.count(*) (SFUNC = hijack.noted_count, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE hijack.array_agg(bigint) (SFUNC = hijack.noted_append, STYPE = bigint[], INITCOND = '{}');
CREATE AGGREGATE hijack.array_agg(text) (SFUNC = hijack.noted_append, STYPE = text[], INITCOND = '{}');
CREATE AGGREGATE hijack.array_agg(integer) (SFUNC = hijack.noted_append, STYPE = integer[], INITCOND = '{}');

-- Domains named like built-in types: a cast written "::int8" would find them.
DO $plant$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY '{text,int8,int4,int2,float8,float4,numeric,timestamptz,timestamp,date,interval,jsonb,json,bool,
		regclass,regtype,oid,tid,name,bpchar,varchar}'::pg_catalog.text[] LOOP
		EXECUTE pg_catalog.format('CREATE DOMAIN hijack.%I AS pg_catalog.%I CHECK (hijack.note(%L))', t, t, 'type ' || t);
	END LOOP;
END
$plant$;
RESET ROLE;
SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 450 AS operators_planted
FROM pg_catalog.pg_operator o WHERE o.oprnamespace OPERATOR(pg_catalog.=) 'hijack'::pg_catalog.regnamespace;
SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 100 AS functions_planted
FROM pg_catalog.pg_proc p WHERE p.pronamespace OPERATOR(pg_catalog.=) 'hijack'::pg_catalog.regnamespace AND p.proname !~ '^(op|mixed|noted)_';
-- the look-alikes do take over an unqualified expression: 1.5 * 2
SET LOCAL search_path = hijack, pg_catalog;
SELECT 1.5 * 2 AS planted_operator_works;
RESET search_path;
SELECT what, pg_catalog.count(*) FROM hijack.ran GROUP BY 1;
DELETE FROM hijack.ran;

-- 1. As the superuser, search_path = hijack, pg_catalog: sample data
--    (every insert trigger), then every entry point.
SET LOCAL search_path = hijack, pg_catalog;
SELECT relation, rows FROM crm.generate_sample(300, 5) ORDER BY relation;
SELECT relation, rows FROM crm.generate_sample_activity(5) ORDER BY relation;
SELECT merges, reviews FROM crm.stitch_identities();
SELECT crm.tick('2026-07-01 00:00+00');
SELECT crm.refresh_rfm('2026-07-01 00:00+00');
SELECT pg_catalog.count(*) FROM crm.rfm('2026-07-01 00:00+00', 4, 'fixed');
SELECT crm.rfm_segment('R5F5M5');
SELECT crm.rebuild_customer_stats();
SELECT crm.rebuild_customer_stats('{1,2,3}', '2026-07-01 00:00+00');
SELECT crm.segmentation_tick('2026-07-01 00:00+00');
SELECT crm.segmentation_now() IS NOT NULL;
INSERT INTO crm.tag (name, rule) VALUES ('hj_big', 'orders >= 2 and spend_365d >= 50');
SELECT crm.tag_rule_explain('orders >= 2 and share(''FRE'') > 0.1') IS NOT NULL;
INSERT INTO crm.tag (name, kind) VALUES ('hj_manual', 'manual');
SELECT crm.tag_customer(1, 'hj_manual', '2026-06-01'), crm.tag_customer(2, 'hj_manual', '2026-06-01');
SELECT crm.untag_customer(2, 'hj_manual', '2026-06-02');
INSERT INTO crm.segment (name, expression) VALUES ('hj_seg', 'hj_manual or hj_big');
SELECT crm.segment_count('hj_seg') IS NOT NULL, pg_catalog.count(*) IS NOT NULL FROM crm.segment_members('hj_seg');
SELECT crm.audience_count('hj_manual and not hj_big') IS NOT NULL, pg_catalog.count(*) IS NOT NULL FROM crm.audience_members('hj_big');
SELECT crm.stats_categories(s.categories) IS NOT NULL FROM crm.customer_stats s ORDER BY s.customer_id LIMIT 1;
SELECT crm.stats_window(s.days, '2026-07-01', 90) IS NOT NULL FROM crm.customer_stats s ORDER BY s.customer_id LIMIT 1;
SELECT crm.customer_window(1, '2026-07-01', 90) IS NOT NULL;
SELECT crm.clv_fit('bgnbd', '2026-07-01') IS NOT NULL, crm.clv_fit('gammagamma', '2026-07-01') IS NOT NULL;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.clv_summary('2026-07-01');
SELECT crm.p_alive('bgnbd', 2, 30, 40) IS NOT NULL, crm.expected_purchases('bgnbd', 2, 30, 40, 10) IS NOT NULL,
	crm.expected_purchases('bgnbd', 10) IS NOT NULL, crm.expected_spend('gammagamma', 2, 20) IS NOT NULL,
	crm.clv('bgnbd', 'gammagamma', 2, 30, 40, 20, 52, 0.01) IS NOT NULL, crm.clv_at_risk_threshold() IS NOT NULL;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.clv_scores('bgnbd', 'gammagamma');
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.v_clv;
SELECT crm.refresh_associations(0.001, 0.01) IS NOT NULL;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.frequently_bought_together('FRE-0000', 3);
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.recommend(1, 3, '2026-07-01');
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.replenishment('2026-07-01');
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.replenishment_due('2026-07-01', '30 days');
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.identity_graph();
SELECT crm.golden_customer(2) IS NOT NULL, crm.identity_blocked('phone', '00000000000');
SELECT crm.resolve_customer(2) IS NOT NULL, crm.lock_customer(2) IS NOT NULL;
SELECT crm.loyalty_merged_along(2, 2);
SELECT crm.identity_is_hub('phone', '13900000001'), crm.identity_review_hub('phone', '13900000001', 'batch');
SELECT pg_catalog.count(*) FROM crm.stitch_plan_component(ARRAY[1, 2]::bigint[]);
SELECT crm.identity_may_link('device', 'hj-tablet'), crm.identity_may_link('phone', 'n/a'), crm.identity_may_link('device', 'hj-tablet', 3);
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.v_customer_360;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.verify_ledgers();
-- the types' own functions and operators, configuration triggers
SELECT crm.rfm_score(5, 4, 3), crm.r('R5F4M3'), crm.f('R5F4M3'), crm.m('R5F4M3'), crm.rfm_score_cmp('R5F4M3', 'R5F5M3'),
	crm.rfm_score_hash('R5F4M3') IS NOT NULL, crm.rfm_score_hash_extended('R5F4M3', 1) IS NOT NULL;
SELECT 'R5F4M3'::crm.rfm_score OPERATOR(crm.=) 'R5F4M3', 'R5F4M3'::crm.rfm_score OPERATOR(crm.<>) 'R5F4M3',
	'R5F4M3'::crm.rfm_score OPERATOR(crm.<) 'R5F5M3', 'R5F4M3'::crm.rfm_score OPERATOR(crm.<=) 'R5F5M3',
	'R5F4M3'::crm.rfm_score OPERATOR(crm.>) 'R5F5M3', 'R5F4M3'::crm.rfm_score OPERATOR(crm.>=) 'R5F5M3';
SELECT crm.ledger_lot_count(a.ledger) IS NOT NULL, a.ledger OPERATOR(crm.=) a.ledger, a.ledger OPERATOR(crm.<>) a.ledger
FROM crm.loyalty_account a ORDER BY a.customer_id LIMIT 1;
SELECT crm.id_merge_size(g) IS NOT NULL, crm.id_merge_golden(g, 1) IS NOT NULL FROM crm.identity_graph() g;
UPDATE crm.tier SET multiplier = multiplier WHERE rank OPERATOR(pg_catalog.=) 1;
INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('hj_task', 999, 'crm.segmentation_tick(pg_catalog.timestamptz)');
-- orders: one row, several rows, lines, partial and full refunds, a
-- reversal, a delete; redemptions and adjustments
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref)
VALUES (900001, 1, 'web', '2026-06-20 10:00+00', 123.45, 'hj-1');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref)
VALUES (900002, 1, 'web', '2026-06-21 10:00+00', 80.00, 'hj-2'), (900003, 2, 'app', '2026-06-21 11:00+00', 60.00, 'hj-3');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
VALUES (900001, 1, 'FRE-0001', 'fresh', 1, 100.00), (900001, 2, 'BAK-0001', 'bakery', 1, 13.45);
INSERT INTO crm.order_line (order_id, sku, category, qty, amount) VALUES (900001, 'BAK-0002', 'bakery', 1, 10.00);
UPDATE crm.orders SET refunded_amount = 20.00 WHERE order_id OPERATOR(pg_catalog.=) 900001;
UPDATE crm.orders SET refunded_amount = 0.00 WHERE order_id OPERATOR(pg_catalog.=) 900001;
UPDATE crm.orders SET status = 'refunded' WHERE order_id OPERATOR(pg_catalog.=) 900002;
DELETE FROM crm.orders WHERE order_id OPERATOR(pg_catalog.=) 900003;
INSERT INTO crm.event (customer_id, kind, at, props) VALUES (1, 'browse', '2026-06-21 12:00+00', '{"sku": "FRE-0001"}');
SELECT crm.adjust_points(1, 500, 'goodwill', 'hj-adj-1', '2026-06-22') IS NOT NULL;
SELECT crm.redeem_points(1, 100, 'hj-red-1', '2026-06-23') IS NOT NULL;
SELECT crm.redeem_points(1, 100, 'hj-red-1', '2026-06-23') IS NOT NULL;
SELECT crm.points_balance(1, '2026-06-24') IS NOT NULL, crm.qualifying_spend(1, '2026-06-24') IS NOT NULL;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.points_expiring(1, '90 days', '2026-06-24');
SELECT crm.loyalty_month('2026-06-24') IS NOT NULL, crm.loyalty_no_account(1) IS NOT NULL,
	crm.tier_for_spend(1000.00) IS NOT NULL, crm.spend_buckets_total(a.spend_month, a.spend_cents, '2026-06-24') IS NOT NULL
FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) 1;
SELECT b.spend_month IS NOT NULL, b.spend_cents IS NOT NULL, b.qualifying_spend IS NOT NULL
FROM crm.spend_buckets('{2026-06-20 10:00+00,2025-01-05 10:00+00}', '{123.45,0.00}') b;
-- identities: online stitching of two records, a manual merge and unmerges
INSERT INTO crm.customer (customer_id, name) VALUES (900001, 'hj a'), (900002, 'hj b'), (900003, 'hj c');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'hj-shared@example.com', 900001);
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'hj-shared@example.com', 900002);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref)
VALUES (900004, 900003, 'web', '2026-06-21 10:00+00', 30.00, 'hj-4');
SELECT crm.merge_customers(900001, 900003, 'hijack test') IS NOT NULL;
SELECT crm.unmerge(m.merge_id) FROM crm.merge_log m ORDER BY m.merge_id DESC LIMIT 1;
SELECT crm.unmerge(m.merge_id, true) FROM crm.merge_log m WHERE m.undone_at IS NULL ORDER BY m.merge_id DESC LIMIT 1;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.stitch_identities();
-- (a tick this far ahead awards the sample journeys' points then: allowed here)
SET LOCAL crm.max_future = '3 years';
SELECT crm.tick('2028-01-01 00:00+00');
RESET crm.max_future;
SELECT * FROM crm.verify();
SELECT * FROM crm.verify('2028-01-01 00:00+00');

-- 2. The same kinds of work as a role that owns nothing.
SET LOCAL ROLE crm_caller;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref)
VALUES (900011, 3, 'web', '2026-06-20 10:00+00', 123.45, 'hj-11');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref)
VALUES (900012, 3, 'web', '2026-06-21 10:00+00', 80.00, 'hj-12'), (900013, 4, 'app', '2026-06-21 11:00+00', 60.00, 'hj-13');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (900011, 1, 'FRE-0001', 'fresh', 1, 123.45);
UPDATE crm.orders SET refunded_amount = 20.00 WHERE order_id OPERATOR(pg_catalog.=) 900011;
UPDATE crm.orders SET status = 'refunded' WHERE order_id OPERATOR(pg_catalog.=) 900012;
DELETE FROM crm.orders WHERE order_id OPERATOR(pg_catalog.=) 900013;
INSERT INTO crm.event (customer_id, kind, at) VALUES (3, 'sign_in', '2026-06-21 12:00+00');
SELECT crm.adjust_points(3, 500, 'goodwill', 'hj-adj-3', '2026-06-22') IS NOT NULL;
SELECT crm.redeem_points(3, 100, 'hj-red-3', '2026-06-23') IS NOT NULL;
SELECT crm.points_balance(3, '2026-06-24') IS NOT NULL, crm.qualifying_spend(3, '2026-06-24') IS NOT NULL;
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days, per_customer_limit, budget_count, budget_period) VALUES ('hj coupon', 'amount_off', 5.00, 30, 3, 100, 'day');
SELECT crm.issue_coupon(t.template_id, 3, 'hj-cp-1', '2026-06-20') AS hj_code FROM crm.coupon_template t WHERE t.name OPERATOR(pg_catalog.=) 'hj coupon' \gset
SELECT crm.issue_coupons(t.template_id, ARRAY[3, 4]::bigint[], '2026-06-20') FROM crm.coupon_template t WHERE t.name OPERATOR(pg_catalog.=) 'hj coupon';
SELECT crm.reserve_coupon(:'hj_code', 3, 'hj-11', '15 minutes', '2026-06-20 10:00+00') IS NOT NULL AS reserved,
       crm.release_coupon(:'hj_code', 3, 'hj-11', '2026-06-20 10:01+00') AS released,
       crm.redeem_coupon(:'hj_code', 3, 900011, '2026-06-20 10:05+00') AS discount;
SELECT pg_catalog.count(*) FROM crm.coupons_expiring('30 days', '2026-06-25');
INSERT INTO crm.reward (name, kind, points_price, template_id, stock, per_customer_limit, eligible_tiers)
SELECT 'hj reward', 'goods', 10, t.template_id, 5, 2, ARRAY(SELECT x.tier FROM crm.tier x) FROM crm.coupon_template t WHERE t.name OPERATOR(pg_catalog.=) 'hj coupon';
SELECT pg_catalog.cardinality(crm.exchange_points(3, r.reward_id, 1, 'hj-ex-1', '2026-06-24')) FROM crm.reward r WHERE r.name OPERATOR(pg_catalog.=) 'hj reward';
SELECT name, exchanged FROM crm.v_rewards ORDER BY reward_id;
SELECT crm.wallet_top_up(3, 50.00, 'hj-top-3', bonus => 5.00, at => '2026-06-24') IS NOT NULL AS topped_up,
       crm.wallet_pay(3, 12.00, 'hj-pay-3', order_id => 900011, at => '2026-06-24 01:00+00') IS NOT NULL AS paid,
       crm.wallet_hold(3, 10.00, 'hj-hold-3', 'hj-pos', at => '2026-06-24 02:00+00') IS NOT NULL AS held,
       crm.wallet_capture('hj-hold-3', 7.50, at => '2026-06-24 02:05+00') IS NOT NULL AS captured,
       crm.wallet_hold(3, 1.00, 'hj-hold-4', 'hj-pos', at => '2026-06-24 03:00+00') IS NOT NULL AS held_again,
       crm.wallet_release('hj-hold-4', '2026-06-24 03:01+00') IS NOT NULL AS released,
       crm.wallet_refund('hj-pay-3', 2.00, 'hj-refund-3', 'original', '2026-06-25') IS NOT NULL AS refunded;
SELECT cash, bonus, held, spendable FROM crm.wallet_balance(3, '2026-06-25');
SELECT account, balance FROM crm.v_wallet_accounts ORDER BY account;
SELECT pg_catalog.count(*) FROM crm.v_wallet_liability;
DO $$ BEGIN DELETE FROM crm.wallet_journal; EXCEPTION WHEN object_not_in_prerequisite_state THEN NULL; END $$;
SELECT crm.set_consent(3, 'sms', 'marketing', true, 'hj app', '2026-06-01') IS NOT NULL AS consented;
SELECT crm.consent_allows(3, 'sms', 'marketing', '2026-06-02') AS allowed, crm.consent_allows(4, 'email', 'marketing', '2026-06-02') AS not_allowed;
SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM crm.v_consent;
DO $$ BEGIN DELETE FROM crm.consent_event; EXCEPTION WHEN object_not_in_prerequisite_state THEN NULL; END $$;
SELECT crm.outbox_enqueue(3, 'sms', 'service', 'hj notice', '{}', 'hj:notice:1', '2026-06-01') IS NOT NULL AS queued,
       crm.outbox_enqueue(3, 'sms', 'service', 'hj notice', '{}', 'hj:notice:2', '2026-06-01') IS NOT NULL AS queued_too,
       crm.outbox_enqueue(3, 'sms', 'marketing', 'hj promo', '{}', 'hj:promo:1', '2026-06-01') IS NOT NULL AS promo_queued;
UPDATE crm.outbox_settings SET quiet_from = '22:00', quiet_until = '08:00', cap_day = 3, cap_channel_day = 2, cap_7_days = 9;
SELECT pg_catalog.count(*) FROM crm.outbox_claim('hj gateway', 10, '1 minute', '2026-06-02 12:00+00');
SELECT crm.outbox_ack(m.message_id) FROM crm.outbox m WHERE m.dedupe_key OPERATOR(pg_catalog.=) 'hj:notice:1';
SELECT crm.outbox_fail(m.message_id, 'hj timeout', 'hj gateway') FROM crm.outbox m WHERE m.dedupe_key OPERATOR(pg_catalog.=) 'hj:notice:2';
INSERT INTO crm.journey (name, entry, entry_days, control_percent, audience, exit_on_purchase) VALUES ('hj_win_back', 'dormant', 1, 10, 'hj_manual or not hj_manual', true);
INSERT INTO crm.journey (name, entry) VALUES ('hj_welcome', 'first_purchase');
INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template) SELECT j.journey_id, 1, 'send', 'sms', 'hj come back' FROM crm.journey j
WHERE j.name OPERATOR(pg_catalog.=) ANY (ARRAY['hj_win_back', 'hj_welcome']);
INSERT INTO crm.customer (customer_id, name) VALUES (900041, 'hj first');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, external_ref) VALUES (900031, 900041, 'web', '2026-06-25 10:00+00', 9.00, 'hj-31');
SELECT crm.journeys_tick('2026-09-01') OPERATOR(pg_catalog.>) 0 AS journeys_ran;
SELECT name, entered, messages FROM crm.v_journey_funnel WHERE name OPERATOR(pg_catalog.=) ANY (ARRAY['hj_win_back', 'hj_welcome']) ORDER BY name;
SELECT source, status, messages FROM crm.v_outbox_stats WHERE source OPERATOR(pg_catalog.!~~) 'campaign:%' ORDER BY 1, 2;
INSERT INTO crm.campaign (name, audience, channel, template, send_at, control_percent) VALUES ('hj_campaign', 'hj_manual or not hj_manual', 'sms', 'hj offer', '2026-06-26', 20);
SELECT crm.campaign_send(c.campaign_id, '2026-06-26') OPERATOR(pg_catalog.>) 0 AS sent FROM crm.campaign c WHERE c.name OPERATOR(pg_catalog.=) 'hj_campaign';
SELECT name, treated OPERATOR(pg_catalog.+) control AS members FROM crm.v_campaign_effect ORDER BY name;
SELECT name, treated OPERATOR(pg_catalog.+) control AS entrants FROM crm.v_journey_effect ORDER BY name;
SELECT crm.reassign_order(900011, 4, 'hijack test: wrong card') IS NOT NULL;
INSERT INTO crm.customer (customer_id, name) VALUES (900021, 'hj d'), (900022, 'hj e');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'hj-other@example.com', 900021);
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('email', 'hj-other@example.com', 900022);
SELECT crm.merge_customers(900021, 900003, 'hijack test as caller') IS NOT NULL;
SELECT crm.unmerge(m.merge_id) FROM crm.merge_log m ORDER BY m.merge_id DESC LIMIT 1;
SELECT crm.audience_count('hj_manual or hj_big') IS NOT NULL, crm.segment_count('hj_seg') IS NOT NULL;
SELECT crm.p_alive('bgnbd', 1, 10, 20) IS NOT NULL;
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.v_clv;
SELECT crm.refresh_rfm('2026-07-01 00:00+00');
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
-- what crm.distribute() would do (the rest of it needs Citus)
SELECT pg_catalog.count(*) IS NOT NULL FROM crm.distribution_plan() p, crm.distribute_keys(p.table_name) k;
RESET ROLE;
RESET search_path;

-- Nothing planted ran.
SELECT what, pg_catalog.count(*) FROM hijack.ran GROUP BY 1 ORDER BY 1;
-- Every crm function ran (type support and aggregate parts excepted, and
-- the parts of crm.distribute() and of merges that need Citus: test/citus
-- runs them).
SELECT p.oid::pg_catalog.regprocedure AS never_called
FROM pg_catalog.pg_proc p
WHERE p.pronamespace OPERATOR(pg_catalog.=) 'crm'::pg_catalog.regnamespace AND p.prokind OPERATOR(pg_catalog.=) 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE p.oid OPERATOR(pg_catalog.=) ANY (ARRAY[t.typinput, t.typoutput, t.typreceive, t.typsend]::pg_catalog.oid[]))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_aggregate a WHERE p.oid OPERATOR(pg_catalog.=) ANY (ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn]::pg_catalog.oid[]))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_xact_user_functions s WHERE s.funcid OPERATOR(pg_catalog.=) p.oid)
  AND p.oid OPERATOR(pg_catalog.<>) ALL (ARRAY['crm.distribute(integer)', 'crm.distribute_tables(integer)',
                                               'crm.distribute_ddl(text)', 'crm.distribute_id_ranges()', 'crm.distribute_functions()',
                                               'crm.set_local_on_cluster(text,text)',
                                               'crm.rebuild_customer_stats_on_shard(regclass,bigint[],timestamptz)',
                                               'crm.segmentation_tick_on_shard(regclass,timestamptz)',
                                               'crm.stitch_strays_by_record()', 'crm.stitch_move_by_merged()',
                                               'crm.move_rows_on_citus(regclass,text,text,bigint[],bigint[],bigint)',
                                               'crm.citus_one_connection_per_worker()']::pg_catalog.regprocedure[])
ORDER BY 1;
ROLLBACK;
