-- The PL/pgSQL way of keeping the same stats and tags, for
-- bench/scenarios/40_segmentation.sh and 15_order_path.sh: statement
-- triggers with transition tables (crm_new) that recompute the affected
-- customers' features from their orders and lines in SQL and re-derive the
-- seven default tags.  @ORDERS@ and @LINES@ name the orders and lines tables
-- (crm.orders and crm.order_line, or a plain copy of their shape): load it
-- with bench_sql_text (bench/run).  Loaded into the bench databases only,
-- never into the extension; the scenario creates the triggers.
CREATE TABLE bench_pl_stats (
	customer_id bigint PRIMARY KEY, orders integer, spend numeric, first_order_at timestamptz,
	last_order_at timestamptz, orders_30d integer, orders_90d integer, spend_365d numeric,
	fresh_share numeric, fresh_orders integer, organic_orders integer, organic_top_dow integer,
	mean_interval_days double precision);
CREATE TABLE bench_pl_tag (customer_id bigint, tag text, PRIMARY KEY (customer_id, tag));

CREATE FUNCTION bench_pl_refresh(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO bench_pl_stats AS s
	SELECT o.customer_id, count(*), sum(o.net_amount), min(o.ordered_at), max(o.ordered_at),
	       count(*) FILTER (WHERE o.ordered_at > now() - interval '30 days'),
	       count(*) FILTER (WHERE o.ordered_at > now() - interval '90 days'),
	       coalesce(sum(o.net_amount) FILTER (WHERE o.ordered_at > now() - interval '365 days'), 0),
	       NULL, NULL, NULL, NULL,
	       CASE WHEN count(*) > 1 THEN extract(epoch FROM max(o.ordered_at) - min(o.ordered_at)) / 86400 / (count(*) - 1) END
	FROM @ORDERS@ o WHERE o.customer_id = ANY (ids) AND o.status = 'paid' GROUP BY o.customer_id
	ON CONFLICT (customer_id) DO UPDATE SET orders = EXCLUDED.orders, spend = EXCLUDED.spend,
		first_order_at = EXCLUDED.first_order_at, last_order_at = EXCLUDED.last_order_at,
		orders_30d = EXCLUDED.orders_30d, orders_90d = EXCLUDED.orders_90d, spend_365d = EXCLUDED.spend_365d,
		mean_interval_days = EXCLUDED.mean_interval_days;
	UPDATE bench_pl_stats s SET fresh_share = c.fresh / NULLIF(c.total, 0), fresh_orders = c.fresh_orders,
		organic_orders = c.organic_orders, organic_top_dow = c.top_dow
	FROM (SELECT o.customer_id, sum(l.amount) total, sum(l.amount) FILTER (WHERE l.category = 'fresh') fresh,
	             count(DISTINCT o.order_id) FILTER (WHERE l.category = 'fresh') fresh_orders,
	             count(DISTINCT o.order_id) FILTER (WHERE l.category = 'organic') organic_orders,
	             mode() WITHIN GROUP (ORDER BY extract(dow FROM o.ordered_at)) FILTER (WHERE l.category = 'organic') top_dow
	      FROM @ORDERS@ o JOIN @LINES@ l USING (order_id)
	      WHERE o.customer_id = ANY (ids) AND o.status = 'paid' GROUP BY 1) c
	WHERE s.customer_id = c.customer_id;
	DELETE FROM bench_pl_tag WHERE customer_id = ANY (ids);
	INSERT INTO bench_pl_tag
	SELECT s.customer_id, t.tag FROM bench_pl_stats s,
	LATERAL (VALUES ('high_value', s.spend_365d >= 1000), ('frequent', s.orders_90d >= 6),
	                ('fresh_lover', s.fresh_share >= 0.25 AND s.fresh_orders >= 3),
	                ('wednesday_organic', s.organic_top_dow = 3 AND s.organic_orders >= 3),
	                ('new', s.first_order_at > now() - interval '30 days'),
	                ('dormant', s.last_order_at < now() - interval '180 days'),
	                ('at_risk', s.orders >= 3 AND now() - s.last_order_at > 2 * s.mean_interval_days * interval '1 day'
	                            AND s.last_order_at >= now() - interval '180 days')) t(tag, yes)
	WHERE s.customer_id = ANY (ids) AND t.yes;
END $$;

CREATE FUNCTION bench_pl_orders_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM bench_pl_refresh(ARRAY(SELECT DISTINCT n.customer_id FROM crm_new n));
	RETURN NULL;
END $$;
CREATE FUNCTION bench_pl_lines_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM bench_pl_refresh(ARRAY(SELECT DISTINCT o.customer_id FROM crm_new n JOIN @ORDERS@ o USING (order_id)));
	RETURN NULL;
END $$;
