-- Issue 15: crm.distribute() on a coordinator with two workers, and the same
-- answers as one node.  A database of the same coordinator without Citus
-- ("single", reached with dblink) is the one node: both get the same
-- generate_sample data and then the same orders, lines, refunds, deletions,
-- point adjustments and redemptions and configuration change; the derived
-- tables (ledgers, journal, stats, tags, stages, tiers) are compared by
-- digest after each step.  A journal row dated by its own transaction (a
-- refund's clawback: at = created_at) is compared as such: on Citus that is
-- the worker's transaction, a few milliseconds after the coordinator's.
-- This database is dropped with the cluster.
\set ON_ERROR_STOP 1
SET client_min_messages = error;
CREATE EXTENSION dblink;
SELECT plan(73);

-- The one node, and what both compare: every row of each table, ids of
-- generated history rows and wall-clock columns left out.
CREATE FUNCTION pg_temp.on_node(db text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.format('host=%s port=%s dbname=%s user=%s',
		pg_catalog.current_setting('unix_socket_directories'), pg_catalog.current_setting('port'), db, current_user)
$$;
CREATE FUNCTION pg_temp.single() RETURNS text LANGUAGE sql AS $$ SELECT pg_temp.on_node('crm_citus_single') $$;
SELECT dblink_exec(pg_temp.on_node('postgres'), 'CREATE DATABASE crm_citus_single');
SELECT dblink_exec(pg_temp.single(), 'CREATE EXTENSION crm_ext');
\set digest_fn 'CREATE FUNCTION public.crm_digest() RETURNS TABLE (t text, digest text) LANGUAGE sql AS $f$ SELECT ''customer'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, name, phone, email, birthday, gender, home_store_id, channel, merged_into FROM crm.customer) x UNION ALL SELECT ''orders'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount, external_ref FROM crm.orders) x UNION ALL SELECT ''order_line'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT order_id, line_no, sku, category, qty, amount, customer_id FROM crm.order_line) x UNION ALL SELECT ''identity'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT identity_id, kind, value, customer_id, origin_customer_id FROM crm.identity) x UNION ALL SELECT ''event'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT event_id, customer_id, origin_customer_id, kind, at, channel, store_id, props FROM crm.event) x UNION ALL SELECT ''loyalty_account'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, ledger, debt, tier, CASE WHEN tier_since > now() - interval ''1 day'' THEN NULL ELSE tier_since END, qualifying_spend, spend_month, spend_cents FROM crm.loyalty_account) x UNION ALL SELECT ''points_journal'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, origin_customer_id, kind, points, lots, debt, order_id, nullif(at, created_at) AS at, reason, idempotency_key, balance_after FROM crm.points_journal) x UNION ALL SELECT ''customer_stats'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, orders, refunded_orders, spend, first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, days, categories, line_spend, stage, stage_since FROM crm.customer_stats) x UNION ALL SELECT ''customer_tag'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT tag_id, customer_id, since FROM crm.customer_tag) x UNION ALL SELECT ''customer_tag_history'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, tag_id, change, at FROM crm.customer_tag_history) x UNION ALL SELECT ''lifecycle_transition'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, from_stage, to_stage, at FROM crm.lifecycle_transition) x UNION ALL SELECT ''tier_history'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, from_tier, to_tier, CASE WHEN changed_at > now() - interval ''1 day'' THEN NULL ELSE changed_at END, reason, order_id, qualifying_spend FROM crm.tier_history) x UNION ALL SELECT ''rfm_snapshot'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_id, last_order_at, frequency, monetary, score, segment FROM crm.rfm_snapshot) x UNION ALL SELECT ''rfm_refresh'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT as_of, bins, method, scored, rows_written, rows_deleted FROM crm.rfm_refresh) x UNION ALL SELECT ''merge_log'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT merge_id, survivor, merged, members, source, reason, orders_moved, events_moved, identities_moved, identities_parked, undone_at IS NULL FROM crm.merge_log) x UNION ALL SELECT ''identity_review'', md5(string_agg(x::text, ''|'' ORDER BY x::text)) FROM (SELECT customer_a, customer_b, conflict_kind, via_kind, source, resolution, merge_id FROM crm.identity_review) x $f$'
:digest_fn;
SELECT dblink_exec(pg_temp.single(), :'digest_fn');
-- (a view of the differences: no rows when both hold the same)
CREATE FUNCTION pg_temp.differences() RETURNS SETOF text LANGUAGE sql AS $$
	SELECT coalesce(c.t, s.t) FROM public.crm_digest() c
	FULL JOIN dblink(pg_temp.single(), 'SELECT * FROM public.crm_digest()') AS s(t text, digest text) ON s.t = c.t
	WHERE c.digest IS DISTINCT FROM s.digest ORDER BY 1
$$;
-- One clock for both sides: "now" of loyalty and segmentation is the
-- sample's as-of time, in this session, in every new session of this
-- database on every node (the triggers run in the workers' sessions), and
-- on the one node; worker connections are not kept across transactions, so
-- every statement starts sessions that have it.
SET citus.max_cached_conns_per_worker = 0;
SELECT crm.sample_as_of() AS as_of \gset
SET crm.as_of = :'as_of';
SET crm.loyalty_now = :'as_of';
CREATE FUNCTION pg_temp.clock_sql(db text, as_of text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.format('ALTER DATABASE %I SET crm.as_of = %L', db, as_of) || '; '
	    || pg_catalog.format('ALTER DATABASE %I SET crm.loyalty_now = %L', db, as_of)
$$;
-- (Citus passes ALTER DATABASE ... SET on to the workers)
SELECT pg_temp.clock_sql(pg_catalog.current_database(), :'as_of') AS clock \gset
:clock;
SELECT dblink_exec(pg_temp.on_node('postgres'), pg_temp.clock_sql('crm_citus_single', :'as_of'));

-- Both sides run the same statements: here and on the one node.
CREATE FUNCTION pg_temp.both(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN dblink_exec(pg_temp.single(), sql);
END $$;

-- 1. Distributing: every table with customer_id by it, the rest reference tables.
SELECT results_eq($$SELECT placement, pg_catalog.count(*)::int FROM crm.distribution_plan() GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('coordinator', 2), ('distributed', 26), ('reference', 27)$$,
	'the plan: 18 tables of rows per customer, 2 that name functions, 22 others');
SELECT throws_ok($$SELECT crm.distribute(0)$$, '22023', NULL, 'shard_count 0 is refused');
SELECT results_eq($$SELECT placement, pg_catalog.count(*)::int FROM crm.distribute(4) GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('coordinator', 2), ('distributed by customer_id', 26), ('reference', 27)$$,
	'crm.distribute(4): 26 distributed tables, 27 reference tables, 2 on the coordinator');
SELECT is((SELECT pg_catalog.count(DISTINCT p.colocationid)::int FROM pg_catalog.pg_dist_partition p
	WHERE p.partmethod = 'h' AND p.logicalrelid::text LIKE 'crm.%'), 1, 'the distributed tables are co-located');
SELECT is((SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid = 'crm.customer'::regclass), 4,
	'crm.customer has 4 shards');
SELECT is((SELECT pg_catalog.count(DISTINCT n.nodename)::int FROM pg_catalog.pg_dist_shard s
	JOIN pg_catalog.pg_dist_placement pl USING (shardid) JOIN pg_catalog.pg_dist_node n USING (groupid)
	WHERE s.logicalrelid = 'crm.customer'::regclass), 2, 'the shards are on both workers');
SELECT col_is_pk('crm', 'orders', ARRAY['order_id', 'customer_id'], 'an order''s key holds its customer');
SELECT col_not_null('crm', 'order_line', 'customer_id', 'lines carry their customer');
SELECT results_eq($$SELECT placement, pg_catalog.count(*)::int FROM crm.distribute(4) GROUP BY 1 ORDER BY 1$$,
	$$VALUES ('coordinator', 2), ('distributed by customer_id', 26), ('reference', 27)$$,
	'a second call changes nothing');
SELECT is((SELECT pg_catalog.array_agg(r.result::bigint OPERATOR(pg_catalog.>=) (1::bigint OPERATOR(pg_catalog.<<) 48))
	FROM pg_catalog.run_command_on_workers($$SELECT last_value FROM crm.points_journal_id_seq$$) r),
	ARRAY[true, true], 'each worker gives journal ids from its own range');

-- 2. The same sample data, and what the triggers derived from it on the shards.
SELECT results_eq($$SELECT * FROM crm.generate_sample(200, 1)$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT * FROM crm.generate_sample(200, 1)') AS s(relation text, rows bigint)$$,
	'generate_sample gives the same rows on the cluster');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'ledgers, journal, stats, tags, stages and tiers are the same');
SELECT ok((SELECT pg_catalog.min(j.journal_id) FROM crm.points_journal j) OPERATOR(pg_catalog.>=) (1::bigint OPERATOR(pg_catalog.<<) 48),
	'the points were written on the workers (their id ranges)');

-- 3. The order path: orders with lines, a refund, a full refund, a deletion.
SELECT pg_temp.both($$INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref)
	VALUES (900001, 7, 1, 'pos', '2026-06-20 10:00+00', 123.45, 'r-1'), (900002, 8, NULL, 'web', '2026-06-21 10:00+00', 80.00, 'r-2'),
	       (900003, 190, 2, 'pos', '2026-06-21 11:00+00', 60.00, 'r-3')$$);
SELECT pg_temp.both($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id)
	VALUES (900001, 1, 'FRE-0001', 'fresh', 1, 100.00, 7), (900001, 2, 'BAK-0001', 'bakery', 1, 23.45, 7),
	       (900002, 1, 'DAI-0001', 'dairy', 2, 80.00, 8)$$);
SELECT pg_temp.both($$INSERT INTO crm.order_line (order_id, sku, category, qty, amount, customer_id)
	VALUES (900003, 'SNK-0001', 'snacks', 1, 60.00, 190)$$);
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'new orders and lines: the same points, stats and tags');
SELECT pg_temp.both($$UPDATE crm.orders SET refunded_amount = 20.00 WHERE order_id = 900001$$);
SELECT pg_temp.both($$UPDATE crm.orders SET status = 'refunded' WHERE order_id = 900002$$);
SELECT pg_temp.both($$DELETE FROM crm.orders WHERE order_id = 900003$$);
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'a partial refund, a full refund and a deletion: the same');
SELECT is((SELECT pg_catalog.count(*)::int FROM crm.order_line WHERE order_id = 900003), 0, 'the deleted order''s lines went with it');
SELECT pg_temp.both($$INSERT INTO crm.event (customer_id, kind, at, props) VALUES (7, 'browse', '2026-06-22 12:00+00', '{"sku": "FRE-0001"}')$$);
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'an event: the same');

-- 4. Entry points that take a customer id, run from the coordinator.
SELECT is(crm.adjust_points(7, 500, 'goodwill', 'c-adj-1', '2026-06-22'),
	(SELECT b FROM dblink(pg_temp.single(), $$SELECT crm.adjust_points(7, 500, 'goodwill', 'c-adj-1', '2026-06-22')$$) AS s(b bigint)),
	'adjust_points: the same balance');
SELECT is(crm.redeem_points(7, 120, 'c-red-1', '2026-06-23'),
	(SELECT b FROM dblink(pg_temp.single(), $$SELECT crm.redeem_points(7, 120, 'c-red-1', '2026-06-23')$$) AS s(b bigint)),
	'redeem_points: the same balance');
SELECT is(crm.redeem_points(7, 120, 'c-red-1', '2026-06-23'),
	(SELECT b FROM dblink(pg_temp.single(), $$SELECT crm.redeem_points(7, 120, 'c-red-1', '2026-06-23')$$) AS s(b bigint)),
	'a retried redemption returns the first result');
SELECT throws_ok($$SELECT crm.redeem_points(7, 10000000, 'c-red-2', '2026-06-23')$$, 'CR001', NULL,
	'more points than the customer has: CR001');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after adjusting and redeeming: the same journal and ledgers');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'crm.verify_ledgers() on the cluster: every ledger matches its journal');
SELECT results_eq($$SELECT c, crm.points_balance(c, '2026-06-24'), crm.points_expiring(c, '365 days', '2026-06-24'), crm.qualifying_spend(c, '2026-06-24')
	FROM pg_catalog.generate_series(1, 200, 7) c ORDER BY 1$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT c, crm.points_balance(c, ''2026-06-24''), crm.points_expiring(c, ''365 days'', ''2026-06-24''), crm.qualifying_spend(c, ''2026-06-24'') FROM pg_catalog.generate_series(1, 200, 7) c ORDER BY 1')
	  AS s(c int, b bigint, e bigint, q numeric)$$,
	'balances, expiring points and qualifying spend: the same');

-- 5. A configuration change reaches the triggers on every worker.
SELECT pg_temp.both($$UPDATE crm.tier SET multiplier = multiplier * 2$$);
SELECT pg_temp.both($$INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
	SELECT 900100 + c, c, 'web', '2026-06-25 10:00+00', 50.00 FROM pg_catalog.generate_series(1, 200, 11) c$$);
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'orders after a tier change earn the same (new) points');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'and the ledgers still match the journal');

-- 6. Work over all customers, run from the coordinator: the shards sum
-- their customers' orders, the coordinator scores them with quantiles over
-- all customers and writes only the rows that changed.
SELECT is(crm.refresh_rfm(:'as_of'),
	(SELECT n FROM dblink(pg_temp.single(), pg_catalog.format('SELECT crm.refresh_rfm(%L)', :'as_of')) AS s(n bigint)),
	'refresh_rfm scores as many customers');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'the same RFM snapshot (global quantiles)');
SELECT pg_temp.both($$INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
	SELECT 900300 + c, c, 'web', '2026-06-26 10:00+00', 400.00 FROM pg_catalog.generate_series(3, 200, 13) c$$);
SELECT is(crm.refresh_rfm(:'as_of'::timestamptz + interval '10 days', 3, 'quantile'),
	(SELECT n FROM dblink(pg_temp.single(), pg_catalog.format('SELECT crm.refresh_rfm(%L::timestamptz + interval ''10 days'', 3, ''quantile'')', :'as_of')) AS s(n bigint)),
	'a later refresh with 3 bins scores as many');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'and writes the same rows (rfm_refresh counts them)');
SELECT results_eq($$SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, '|' ORDER BY r.customer_id)) FROM crm.rfm('2026-06-30', 5, 'fixed') r$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, ''|'' ORDER BY r.customer_id)) FROM crm.rfm(''2026-06-30'', 5, ''fixed'') r') AS s(d text)$$,
	'crm.rfm with fixed cut points: the same rows');
SELECT results_eq($$SELECT pg_catalog.md5(pg_catalog.string_agg(s::text, '|' ORDER BY s.customer_id)) FROM crm.clv_summary('2026-06-30', '1 week') s$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT pg_catalog.md5(pg_catalog.string_agg(s::text, ''|'' ORDER BY s.customer_id)) FROM crm.clv_summary(''2026-06-30'', ''1 week'') s') AS s(d text)$$,
	'the CLV summary: the same rows');
-- (the fit sums over the summary rows in the order they arrive from the
-- shards, so the parameters agree to rounding, not to the last bit)
CREATE FUNCTION pg_temp.fit_differs(model text) RETURNS boolean LANGUAGE sql AS $$
	SELECT bool_or(abs(c.p - s.p) > 1e-6 * abs(s.p))
	FROM unnest((crm.clv_fit(model, '2026-06-30')).params) WITH ORDINALITY c(p, i)
	JOIN unnest((SELECT p FROM dblink(pg_temp.single(), pg_catalog.format('SELECT (crm.clv_fit(%L, ''2026-06-30'')).params', model)) AS s(p float8[])))
	     WITH ORDINALITY s(p, i) USING (i)
$$;
SELECT is(pg_temp.fit_differs('bgnbd'), false, 'clv_fit bgnbd: the same parameters (to 1e-6)');
SELECT is(pg_temp.fit_differs('gammagamma'), false, 'clv_fit gammagamma: the same parameters (to 1e-6)');
SELECT is((SELECT pg_catalog.count(*)::int FROM crm.v_clv c
	JOIN dblink(pg_temp.single(), 'SELECT customer_id, clv FROM crm.v_clv') AS s(customer_id bigint, clv float8) USING (customer_id)
	WHERE abs(c.clv - s.clv) <= 1e-6 * abs(s.clv) + 1e-9),
	(SELECT n FROM dblink(pg_temp.single(), 'SELECT pg_catalog.count(*)::int FROM crm.v_clv') AS s(n int)),
	'crm.v_clv scores every customer the same (to 1e-6)');
SELECT is(crm.refresh_associations(0.005, 0.05),
	(SELECT n FROM dblink(pg_temp.single(), 'SELECT crm.refresh_associations(0.005, 0.05)') AS s(n bigint)),
	'refresh_associations finds as many rules (the shards join their lines and orders)');
SELECT results_eq($$SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, '|' ORDER BY r.antecedent, r.consequent))
	FROM (SELECT antecedent, consequent, baskets, support, confidence, lift FROM crm.association_rule) r$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, ''|'' ORDER BY r.antecedent, r.consequent)) FROM (SELECT antecedent, consequent, baskets, support, confidence, lift FROM crm.association_rule) r') AS s(d text)$$,
	'the same rules, counts, support, confidence and lift');
SELECT results_eq($$SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, '|' ORDER BY r::text)) FROM crm.replenishment('2026-06-30') r$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT pg_catalog.md5(pg_catalog.string_agg(r::text, ''|'' ORDER BY r::text)) FROM crm.replenishment(''2026-06-30'') r') AS s(d text)$$,
	'crm.replenishment: the same purchase cycles (each shard joins its lines and orders)');
SELECT results_eq($$SELECT c, r.* FROM pg_catalog.generate_series(1, 200, 9) c, crm.recommend(c, 3, '2026-06-30') r ORDER BY 1, 2$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT c, r.* FROM pg_catalog.generate_series(1, 200, 9) c, crm.recommend(c, 3, ''2026-06-30'') r ORDER BY 1, 2')
	  AS s(c int, sku text, confidence float8, lift float8, because_of text)$$,
	'crm.recommend: the same suggestions for every ninth customer');
SELECT results_eq($$SELECT kind, name, customers FROM crm.v_segment_sizes ORDER BY 1, 2$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT kind, name, customers FROM crm.v_segment_sizes ORDER BY 1, 2') AS s(kind text, name text, customers bigint)$$,
	'crm.v_segment_sizes: the same segments, tags, RFM segments and stages');

-- 7. Merges and an unmerge between customers on different shards: the
-- merged record's rows move to the survivor's shard (deleted and inserted
-- again, crm's triggers held back), the hooks move points, tags and stats;
-- the unmerge moves back exactly the rows that arrived on the record.
SELECT is((SELECT pg_catalog.count(DISTINCT pg_catalog.get_shard_id_for_distribution_column('crm.customer', c))::int
	FROM pg_catalog.unnest(ARRAY[7, 8, 9, 13]) c), 4, 'customers 7, 8, 9 and 13 are on four shards');
SELECT is(crm.merge_customers(8, 7, 'same shopper'),
	(SELECT m FROM dblink(pg_temp.single(), $$SELECT crm.merge_customers(8, 7, 'same shopper')$$) AS s(m bigint)),
	'merge_customers: the same merge id');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after a merge: the same records, orders, lines, events, identities, points, journal, stats, tags and merge log');
SELECT results_eq($$SELECT pg_catalog.count(*)::int FROM crm.orders o JOIN crm.merge_log l ON l.merged = o.customer_id$$, $$VALUES (0)$$,
	'the merged record''s orders left its shard');
SELECT is(ARRAY[crm.merge_customers(9, 13), crm.merge_customers(13, 7)],
	(SELECT m FROM dblink(pg_temp.single(), 'SELECT ARRAY[crm.merge_customers(9, 13), crm.merge_customers(13, 7)]') AS s(m bigint[])),
	'two more merges: the same merge ids');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'two more merges into one golden customer: the same');
SELECT pg_temp.both($$INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (900500, crm.golden_customer(7), 'app', '2026-06-27 10:00+00', 77.00)$$);
SELECT is(crm.redeem_points(7, 50, 'c-red-m', '2026-06-27'),
	(SELECT b FROM dblink(pg_temp.single(), $$SELECT crm.redeem_points(7, 50, 'c-red-m', '2026-06-27')$$) AS s(b bigint)),
	'the merged customer redeems: the same balance');
-- Entry points that take a customer id, called on their own, run on the
-- worker of the id they are given (Citus delegates the call), also for a
-- merged record whose golden is on another shard.
SELECT is((SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_dist_object o
	WHERE o.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND o.distribution_argument_index = 0), 5,
	'five entry points run on the customer''s worker');
SELECT crm.adjust_points(13, 250, 'goodwill', 'c-adj-dlg', '2026-06-27') AS delegated \gset
SELECT is(:delegated::bigint,
	(SELECT b FROM dblink(pg_temp.single(), $$SELECT crm.adjust_points(13, 250, 'goodwill', 'c-adj-dlg', '2026-06-27')$$) AS s(b bigint)),
	'adjust_points for merged record 13, called on its own: the same balance');
SELECT results_eq($$SELECT customer_id, journal_id >= (1::bigint << 48) FROM crm.points_journal WHERE idempotency_key = 'c-adj-dlg'$$,
	$$SELECT crm.golden_customer(13), true$$, 'written once, on the golden customer, by a worker (its id range)');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after the delegated adjustment: the same journal and ledgers');
SELECT is(crm.unmerge(1),
	(SELECT n FROM dblink(pg_temp.single(), 'SELECT crm.unmerge(1)') AS s(n bigint)),
	'unmerge undoes one merge');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after the unmerge: the same rows on both sides, the points charged back the same');
SELECT is(crm.unmerge(2, true),
	(SELECT n FROM dblink(pg_temp.single(), 'SELECT crm.unmerge(2, true)') AS s(n bigint)),
	'unmerge with cascade undoes the later merge too');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after a cascading unmerge: the same');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'every ledger still matches its journal on the cluster');
SELECT is(crm.rebuild_customer_stats(ARRAY[7, 8, 9, 13]::bigint[]), 0::bigint,
	'crm.rebuild_customer_stats on the shards finds nothing to change');

-- 8. crm.tick a year later: points expire and tiers drop account by
-- account (each on its shard), stages and time-dependent tags move on
-- every shard group (run on its worker); the same changes as one node, and
-- a second tick at the same time changes nothing.
SELECT results_eq(pg_catalog.format('SELECT * FROM crm.tick(%L::timestamptz + interval ''400 days'')', :'as_of'),
	pg_catalog.format('SELECT * FROM dblink(pg_temp.single(), %L) AS s(task text, changed bigint)',
		pg_catalog.format('SELECT * FROM crm.tick(%L::timestamptz + interval ''400 days'')', :'as_of')),
	'crm.tick: the same tasks change as many rows');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after the tick: the same journal, ledgers, tiers, stages and tags');
SELECT is((SELECT pg_catalog.sum(changed)::int FROM crm.tick(:'as_of'::timestamptz + interval '400 days')), 0,
	'a second tick at the same time changes nothing');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'the ledgers match the journal after the tick');

-- 9. Stitching.  Batch: the identity graph is built on the coordinator
-- (the shards group the identifiers), and every component's goldens are
-- merged into its oldest, merge by merge, in the order one node logs them.
SELECT results_eq($$SELECT * FROM crm.stitch_identities()$$,
	$$SELECT * FROM dblink(pg_temp.single(), 'SELECT * FROM crm.stitch_identities()') AS s(merges bigint, reviews bigint, rows_redirected bigint)$$,
	'stitch_identities: as many merges and reviews');
SELECT ok((SELECT pg_catalog.count(*) FROM crm.merge_log WHERE source = 'batch') >= 10, 'batch stitching merged customers');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after batch stitching: the same golden customers, rows, points, stats, tags and merge log');
SELECT results_eq($$SELECT * FROM crm.stitch_identities()$$, $$VALUES (0::bigint, 0::bigint, 0::bigint)$$, 'a second run merges nothing');
-- Online: on one node the insert's trigger stitches; on a cluster the
-- trigger runs on a shard, which cannot merge, and the application calls
-- crm.stitch_identity(identity_id) after inserting (a no-op on one node now).
SELECT pg_temp.both($$INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES
	(900001, 'email', 'shared-900@example.com', 101), (900002, 'email', 'shared-900@example.com', 150)$$);
SELECT is(crm.stitch_identity(900002),
	(SELECT n FROM dblink(pg_temp.single(), 'SELECT crm.stitch_identity(900001) + crm.stitch_identity(900002)') AS s(n int)) + 1,
	'stitch_identity merges the two customers on the cluster (the trigger did on one node)');
SELECT is_empty($$SELECT * FROM pg_temp.differences()$$, 'after online stitching: the same');
SELECT is_empty($$SELECT * FROM crm.verify_ledgers()$$, 'the ledgers match the journal after stitching');

-- 10. What a distributed crm_ext refuses.
SELECT throws_ok($$INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id) VALUES (900001, 9, 'X', 'fresh', 1, 1.00, 8)$$,
	'23503', NULL, 'a line with another customer than its order''s: 23503');
INSERT INTO crm.store (store_id, name) VALUES (51, 'new');
SELECT throws_ok($$DELETE FROM crm.store WHERE store_id = 51$$, '0A000', NULL,
	'deleting a store (orders on every worker may refer to it): 0A000');
SELECT is((SELECT pg_catalog.count(*)::int FROM crm.store), 51, 'the stores are all there');
-- work that spans customers is refused with a clear error, not run on the
-- coordinator's empty tables or failed inside Citus
SELECT throws_ok($$SELECT * FROM crm.verify()$$, '0A000', NULL, 'crm.verify(): 0A000');
SELECT is(crm.resolve_customer(7), 7::bigint, 'customer ids resolve through Citus on the coordinator');

SELECT * FROM finish();
SELECT dblink_disconnect(c) FROM pg_catalog.unnest(dblink_get_connections()) c;
SELECT dblink_exec(pg_temp.on_node('postgres'), 'DROP DATABASE crm_citus_single WITH (FORCE)');
