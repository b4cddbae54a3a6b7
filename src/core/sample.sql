
-- ===========================================================================
-- sample.sql: deterministic sample retail data (crm.generate_sample)
-- ===========================================================================

CREATE FUNCTION crm.sample_uniform(seed integer, stream integer, key bigint) RETURNS double precision
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_uniform';
COMMENT ON FUNCTION crm.sample_uniform(integer, integer, bigint) IS
	'Deterministic uniform draw on [0, 1): a pure function of (seed, stream, key), used by crm.generate_sample';

CREATE FUNCTION crm.sample_normal(seed integer, stream integer, key bigint) RETURNS double precision
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_normal';
COMMENT ON FUNCTION crm.sample_normal(integer, integer, bigint) IS
	'Deterministic standard normal draw: a pure function of (seed, stream, key), used by crm.generate_sample';

CREATE FUNCTION crm.sample_as_of() RETURNS timestamptz
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN '2026-07-01 00:00:00+00'::timestamptz;
COMMENT ON FUNCTION crm.sample_as_of() IS
	'The moment sample data is "as of": crm.generate_sample puts orders and events in the two years before it (2024-07-01 to 2026-06-30 UTC)';

CREATE FUNCTION crm.sample_int(seed integer, stream integer, key bigint, n integer) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_int';
COMMENT ON FUNCTION crm.sample_int(integer, integer, bigint, integer) IS
	'Deterministic uniform integer in [0, n): a pure function of (seed, stream, key), used by crm.generate_sample';

-- The truth behind the sample: which person each customer record belongs to,
-- so identity stitching can be scored (precision and recall).
CREATE TABLE crm.sample_person (
	customer_id	bigint PRIMARY KEY REFERENCES crm.customer (customer_id),
	person_id	bigint NOT NULL
);
CREATE INDEX sample_person_person_idx ON crm.sample_person (person_id);
COMMENT ON TABLE crm.sample_person IS 'Sample data only: the true person behind each generated customer record, to score identity stitching';
SELECT pg_catalog.pg_extension_config_dump('crm.sample_person', '');

-- The sample's product range (src/core/sample.c holds the table once).
CREATE FUNCTION crm.sample_categories()
RETURNS TABLE (category_no integer, category text, prefix text, weight double precision)
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE ROWS 20
	AS 'MODULE_PATHNAME', 'crm_sample_categories';
COMMENT ON FUNCTION crm.sample_categories() IS
	'The 20 product categories of sample data: number, name, sku prefix and relative purchase weight';

CREATE FUNCTION crm.sample_category(u double precision) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_category';
COMMENT ON FUNCTION crm.sample_category(double precision) IS
	'Sample data: the category number a uniform draw u in [0, 1) picks, by the categories'' purchase weights';

CREATE FUNCTION crm.sample_snap_weekday(day integer, weekday integer, first_day integer, last_day integer) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_snap_weekday';
COMMENT ON FUNCTION crm.sample_snap_weekday(integer, integer, integer, integer) IS
	'Sample data: moves day (counted from a Monday) to the given weekday (0 = Monday) of its week, staying within [first_day, last_day)';

CREATE FUNCTION crm.generate_sample(customers integer, seed integer DEFAULT 1)
RETURNS TABLE (relation text, rows bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- Identities are stitched in one batch at the end, not one by one; the
-- setting comes back when the function returns.
SET crm.stitch_on_insert = off
AS $$
DECLARE
	-- The sample's two years: [window_start, window_end), days 0..729.
	window_start constant timestamptz := crm.sample_as_of() - interval '730 days';
	window_days constant integer := 730;
	cat_count constant integer := 20;
	filled boolean;
BEGIN
	IF customers < 1 OR customers > 20000000 THEN
		RAISE EXCEPTION 'crm.generate_sample needs between 1 and 20,000,000 customers, not %', customers
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- (Stores are written before the other tables are read: on a distributed
	-- crm_ext, crm.distribute(), Citus writes a reference table only before
	-- a transaction reads distributed tables over several connections; the
	-- rest is computed into temporary tables first and inserted from there,
	-- as Citus plans no INSERT ... SELECT that needs this function's
	-- variables.)
	filled := EXISTS (SELECT 1 FROM crm.store);

	-- Stores ---------------------------------------------------------------
	IF NOT filled THEN
		INSERT INTO crm.store (store_id, name, city, region, opened_on)
		SELECT s, pg_catalog.format('%s #%s', (ARRAY['Shanghai', 'Beijing', 'Shenzhen', 'Hangzhou', 'Chengdu',
		                                                 'Nanjing', 'Wuhan', 'Suzhou', 'Xi''an', 'Qingdao'])[1 + s % 10], s),
		       (ARRAY['Shanghai', 'Beijing', 'Shenzhen', 'Hangzhou', 'Chengdu',
		              'Nanjing', 'Wuhan', 'Suzhou', 'Xi''an', 'Qingdao'])[1 + s % 10],
		       (ARRAY['east', 'north', 'south', 'east', 'west', 'east', 'central', 'east', 'west', 'north'])[1 + s % 10],
		       date '2010-01-01' + crm.sample_int(seed, 100, s, 4000)
		FROM pg_catalog.generate_series(1, 50) AS s;
	END IF;
	IF filled OR EXISTS (SELECT 1 FROM crm.customer) OR EXISTS (SELECT 1 FROM crm.orders) OR EXISTS (SELECT 1 FROM crm.event) THEN
		RAISE EXCEPTION 'crm.generate_sample needs empty customer, store, order and event tables'
			USING ERRCODE = 'CR005',
			      DETAIL = 'Sample data uses fixed ids, so that the same seed gives the same data.',
			      HINT = 'Run it in a fresh database, or TRUNCATE crm.customer, crm.store CASCADE first.';
	END IF;

	-- Persons and their customer records -------------------------------------
	-- About 8% of persons are split over 2-6 records (ids consecutive); the
	-- rest have one.  Everything about a record is a pure function of
	-- (seed, stream, person or record id).
	IF pg_catalog.to_regclass('pg_temp.crm_sample_rec') IS NOT NULL THEN
		DROP TABLE pg_temp.crm_sample_rec;
	END IF;
	CREATE TEMP TABLE crm_sample_rec AS
	WITH person AS (
		SELECT p::bigint AS person_id,
		       CASE WHEN crm.sample_uniform(seed, 1, p) < 0.08
		            THEN 2 + crm.sample_int(seed, 2, p, 5) ELSE 1 END AS size
		FROM pg_catalog.generate_series(1, customers) AS p
	), placed AS (
		SELECT person_id, LEAST(size, 6) AS size,
		       sum(LEAST(size, 6)) OVER (ORDER BY person_id) - LEAST(size, 6) AS before
		FROM person
	)
	SELECT (pl.before + k)::bigint AS customer_id, pl.person_id, k AS link_no, pl.size,
	       -- the first record may come from any channel, later ones are online
	       CASE WHEN k = 1 THEN
	            CASE WHEN u.ch < 0.45 THEN 'pos' WHEN u.ch < 0.70 THEN 'app' WHEN u.ch < 0.90 THEN 'mini_program' ELSE 'web' END
	            ELSE (ARRAY['app', 'mini_program', 'web'])[1 + pg_catalog.floor(u.ch * 3)::integer] END AS channel,
	       LEAST(window_start + interval '729 days',
	             timestamptz '2022-01-01 00:00+00'
	             + crm.sample_uniform(seed, 17, pl.person_id) * interval '1612 days'
	             + (k - 1) * crm.sample_uniform(seed, 18, pl.before + k) * interval '120 days') AS created_at,
	       -- purchase rate per year: log-normal, so most buy rarely and a few weekly
	       LEAST(150.0, exp(1.64 + 1.1 * crm.sample_normal(seed, 20, pl.before + k))) AS rate,
	       exp(3.3 + 0.45 * crm.sample_normal(seed, 21, pl.person_id)) AS basket,
	       crm.sample_uniform(seed, 22, pl.person_id) < 0.05 AS wednesday_organic,
	       crm.sample_uniform(seed, 23, pl.person_id) < 0.20 AS weekend_shopper,
	       1 + crm.sample_int(seed, 24, pl.person_id, cat_count) AS favourite,
	       CASE WHEN crm.sample_uniform(seed, 25, pl.person_id) < 0.40
	            THEN (ARRAY[9, 10, 12, 13])[1 + crm.sample_int(seed, 26, pl.person_id, 4)] END AS staple_cat,
	       crm.sample_int(seed, 27, pl.person_id, 12) AS staple_idx,
	       1 + pg_catalog.floor(50 * crm.sample_uniform(seed, 15, pl.person_id) ^ 1.5)::integer AS home_store,
	       k = 1 AND pl.size = 1 AND crm.sample_uniform(seed, 19, pl.person_id) < 0.005 AS junk_phone
	FROM placed pl
	CROSS JOIN LATERAL pg_catalog.generate_series(1, pl.size) AS k
	CROSS JOIN LATERAL (SELECT crm.sample_uniform(seed, 16, pl.before + k) AS ch) AS u
	WHERE pl.before + k <= customers;
	ALTER TABLE pg_temp.crm_sample_rec ADD PRIMARY KEY (customer_id);

	-- Orders per record over the part of the window it was active: from its
	-- first day to its last, where 35% of records drop out (stop buying) at a
	-- uniformly chosen day, so that churn models and win-back have something
	-- to find.  Where its orders and events start in the id ranges.
	ALTER TABLE pg_temp.crm_sample_rec ADD COLUMN first_day integer, ADD COLUMN stop_day integer,
		ADD COLUMN n_orders integer, ADD COLUMN orders_before bigint,
		ADD COLUMN n_events integer, ADD COLUMN events_before bigint;
	UPDATE pg_temp.crm_sample_rec r
	SET first_day = d.first_day,
	    stop_day = CASE WHEN crm.sample_uniform(seed, 29, r.customer_id) < 0.35
	                    THEN d.first_day + 1 + crm.sample_int(seed, 32, r.customer_id, window_days - d.first_day)
	                    ELSE window_days END
	FROM (SELECT customer_id, GREATEST(0, pg_catalog.ceil(EXTRACT(epoch FROM created_at - window_start) / 86400))::integer AS first_day
	      FROM pg_temp.crm_sample_rec) AS d
	WHERE d.customer_id = r.customer_id;
	UPDATE pg_temp.crm_sample_rec r
	SET stop_day = LEAST(r.stop_day, window_days),
	    n_orders = LEAST(300, (r.rate * (LEAST(r.stop_day, window_days) - r.first_day) / 365.0
	                           * (0.5 + crm.sample_uniform(seed, 28, r.customer_id)))::integer),
	    n_events = LEAST(100, exp(1.0 + crm.sample_normal(seed, 40, r.customer_id)))::integer;
	UPDATE pg_temp.crm_sample_rec r
	SET orders_before = c.ob, events_before = c.eb
	FROM (SELECT customer_id,
	             sum(n_orders) OVER (ORDER BY customer_id) - n_orders AS ob,
	             sum(n_events) OVER (ORDER BY customer_id) - n_events AS eb
	      FROM pg_temp.crm_sample_rec) AS c
	WHERE c.customer_id = r.customer_id;

	-- Customers --------------------------------------------------------------
	INSERT INTO crm.customer (customer_id, name, phone, email, birthday, gender, home_store_id, channel, created_at)
	SELECT r.customer_id,
	       (ARRAY['Wei', 'Fang', 'Li', 'Na', 'Min', 'Jing', 'Lei', 'Yan', 'Jun', 'Hui', 'Tao', 'Xin',
	              'Ming', 'Ying', 'Qiang', 'Lin', 'Hao', 'Mei', 'Jie', 'Yu', 'Anna', 'Tom', 'Lucy', 'Ken'])
	              [1 + crm.sample_int(seed, 13, r.person_id, 24)]
	       || ' ' ||
	       (ARRAY['Wang', 'Li', 'Zhang', 'Liu', 'Chen', 'Yang', 'Huang', 'Zhao', 'Wu', 'Zhou', 'Xu', 'Sun',
	              'Ma', 'Zhu', 'Hu', 'Guo', 'He', 'Lin', 'Luo', 'Gao'])
	              [1 + crm.sample_int(seed, 14, r.person_id, 20)],
	       CASE WHEN r.junk_phone THEN '00000000000'
	            WHEN crm.sample_uniform(seed, 30, r.customer_id) < 0.7 THEN (13000000000 + r.person_id * 8)::text END,
	       CASE WHEN r.channel = 'web' OR crm.sample_uniform(seed, 31, r.customer_id) < 0.3
	            THEN pg_catalog.format('p%s@mail.example.com', r.person_id) END,
	       CASE WHEN crm.sample_uniform(seed, 12, r.person_id) < 0.004
	            -- born on Feb 29 of a leap year between 1952 and 2004
	            THEN pg_catalog.make_date(1952 + 4 * crm.sample_int(seed, 11, r.person_id, 14), 2, 29)
	            ELSE date '1950-01-01' + crm.sample_int(seed, 11, r.person_id, 20454) END,
	       CASE WHEN crm.sample_uniform(seed, 10, r.person_id) < 0.52 THEN 'f'
	            WHEN crm.sample_uniform(seed, 10, r.person_id) < 0.98 THEN 'm' ELSE 'x' END,
	       r.home_store, r.channel, r.created_at
	FROM pg_temp.crm_sample_rec r
;
	INSERT INTO crm.sample_person (customer_id, person_id)
	SELECT customer_id, person_id FROM pg_temp.crm_sample_rec;

	-- Identifiers ----------------------------------------------------------------
	-- Each record: its channel's identifier; records of one person linked in a
	-- chain (record k-1 and k share one value: phone, pay_account, e-mail, or a
	-- device used by just those two); family tablets (one device on the first
	-- records of four persons, more than device's max_customers) and junk
	-- phones that must never link anybody.
	CREATE TEMP TABLE crm_sample_identity (identity_id, kind, value, customer_id, origin_customer_id, created_at) AS
	SELECT pg_catalog.row_number() OVER (ORDER BY i.customer_id, i.kind, i.value), i.kind, i.value,
	       i.customer_id, i.customer_id, r.created_at
	FROM (
		SELECT customer_id,
		       CASE channel WHEN 'pos' THEN 'member_no' WHEN 'app' THEN 'device'
		                    WHEN 'mini_program' THEN 'openid' ELSE 'email' END AS kind,
		       CASE channel WHEN 'pos' THEN 'M' || pg_catalog.lpad(customer_id::text, 10, '0')
		                    WHEN 'app' THEN pg_catalog.format('dev-%s', pg_catalog.md5(seed || ':' || customer_id))
		                    WHEN 'mini_program' THEN pg_catalog.format('o_%s', pg_catalog.md5(customer_id || ':' || seed))
		                    ELSE pg_catalog.format('c%s@web.example.com', customer_id) END AS value
		FROM pg_temp.crm_sample_rec
		UNION ALL
		-- the person's own phone (single-record persons) or a junk phone
		SELECT customer_id, 'phone', CASE WHEN junk_phone THEN '00000000000' ELSE (13000000000 + person_id * 8)::text END
		FROM pg_temp.crm_sample_rec
		WHERE junk_phone OR (size = 1 AND crm.sample_uniform(seed, 50, customer_id) < 0.6)
		UNION ALL
		SELECT customer_id, 'pay_account', pg_catalog.format('pa-%s', customer_id)
		FROM pg_temp.crm_sample_rec
		WHERE size = 1 AND crm.sample_uniform(seed, 52, customer_id) < 0.3
		UNION ALL
		-- chain links: link j joins records j-1 and j of a person
		SELECT r.customer_id, l.kind,
		       CASE l.kind WHEN 'phone' THEN (13000000000 + r.person_id * 8 + l.j)::text
		                   WHEN 'pay_account' THEN pg_catalog.format('pa-%s-%s', r.person_id, l.j)
		                   WHEN 'email' THEN pg_catalog.format('p%s.%s@mail.example.com', r.person_id, l.j)
		                   ELSE pg_catalog.format('dev-%s-%s', r.person_id, l.j) END
		FROM pg_temp.crm_sample_rec r
		CROSS JOIN LATERAL (
			SELECT j, CASE WHEN u < 0.55 THEN 'phone' WHEN u < 0.75 THEN 'pay_account'
			               WHEN u < 0.90 THEN 'email' ELSE 'device' END AS kind
			FROM (VALUES (r.link_no), (r.link_no + 1)) AS v(j)
			CROSS JOIN LATERAL (SELECT crm.sample_uniform(seed, 51, r.person_id * 8 + j) AS u) AS d
			WHERE j >= 2 AND j <= r.size
		) AS l
		WHERE r.size > 1
		UNION ALL
		-- family tablets: blocks of four consecutive persons, all present
		SELECT r.customer_id, 'device', pg_catalog.format('tablet-%s', (r.person_id - 1) / 4)
		FROM pg_temp.crm_sample_rec r
		WHERE r.link_no = 1
		  AND crm.sample_uniform(seed, 3, (r.person_id - 1) / 4) < 0.01
		  AND ((r.person_id - 1) / 4) * 4 + 4 <= (SELECT max(person_id) FROM pg_temp.crm_sample_rec)
	) AS i
	JOIN pg_temp.crm_sample_rec r ON r.customer_id = i.customer_id;
	INSERT INTO crm.identity (identity_id, kind, value, customer_id, origin_customer_id, created_at)
	SELECT * FROM pg_temp.crm_sample_identity;
	DROP TABLE pg_temp.crm_sample_identity;

	-- Orders ---------------------------------------------------------------------
	-- Days are counted from window_start (a Monday).  Wednesday-organic
	-- shoppers mostly shop on Wednesdays, weekend shoppers on Saturdays.
	CREATE TEMP TABLE crm_sample_orders (order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status) AS
	SELECT o.order_id, o.customer_id, o.customer_id AS origin_customer_id,
	       CASE WHEN o.channel = 'pos' THEN
	            CASE WHEN crm.sample_uniform(seed, 62, o.order_id) < 0.85 THEN o.home_store
	                 ELSE 1 + crm.sample_int(seed, 63, o.order_id, 50) END END,
	       o.channel,
	       window_start + o.day * interval '1 day'
	           + (8 * 3600 + crm.sample_int(seed, 64, o.order_id, 48600)) * interval '1 second' AS ordered_at,
	       GREATEST(1.00, round((o.basket * exp(0.45 * crm.sample_normal(seed, 65, o.order_id) - 0.1))::numeric, 2)) AS amount,
	       CASE WHEN crm.sample_uniform(seed, 66, o.order_id) < 0.03 THEN 'refunded' ELSE 'paid' END AS status
	FROM (
		SELECT r.orders_before + j AS order_id, r.customer_id, r.home_store, r.basket,
		       CASE WHEN crm.sample_uniform(seed, 61, r.orders_before + j) < 0.8 THEN r.channel
		            ELSE (ARRAY['pos', 'app', 'mini_program', 'web'])[1 + crm.sample_int(seed, 67, r.orders_before + j, 4)] END AS channel,
		       CASE WHEN r.wednesday_organic AND crm.sample_uniform(seed, 68, r.orders_before + j) < 0.8
		                 THEN crm.sample_snap_weekday(d.day, 2, r.first_day, r.stop_day)
		            WHEN r.weekend_shopper AND crm.sample_uniform(seed, 68, r.orders_before + j) < 0.5
		                 THEN crm.sample_snap_weekday(d.day, 5, r.first_day, r.stop_day)
		            ELSE d.day END AS day
		FROM pg_temp.crm_sample_rec r
		CROSS JOIN LATERAL pg_catalog.generate_series(1, r.n_orders) AS j
		CROSS JOIN LATERAL (SELECT r.first_day + crm.sample_int(seed, 60, r.orders_before + j,
		                                                                r.stop_day - r.first_day) AS day) AS d
		WHERE r.n_orders > 0
	) AS o
;
	INSERT INTO crm.orders (order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status)
	SELECT * FROM pg_temp.crm_sample_orders;

	-- Order lines ----------------------------------------------------------------
	-- 1-5 lines splitting the order amount exactly.  Line 1 follows the
	-- shopper's habits (organic on Wednesdays, a staple they replenish, a
	-- favourite category); later lines are often line 1's companion sku, which
	-- makes frequently-bought-together pairs.
	CREATE TEMP TABLE crm_sample_lines (order_id, line_no, sku, category, qty, amount, customer_id) AS
	SELECT o.order_id, l.line_no, c.prefix || '-' || pg_catalog.lpad(l.sku_idx::text, 4, '0'), c.category,
	       1 + pg_catalog.floor(3 * crm.sample_uniform(seed, 75, o.order_id * 8 + l.line_no) ^ 3)::integer,
	       ((pg_catalog.round(o.cents * (l.line_no::double precision / o.n_lines) ^ o.skew)
	         - pg_catalog.round(o.cents * ((l.line_no - 1)::double precision / o.n_lines) ^ o.skew)) / 100)::numeric(14,2),
	       o.customer_id
	FROM (
		SELECT ord.order_id, ord.customer_id, (ord.amount * 100)::double precision AS cents, r.favourite, r.staple_cat, r.staple_idx,
		       1 + pg_catalog.floor(5 * crm.sample_uniform(seed, 70, ord.order_id) ^ 1.7)::integer AS n_lines,
		       0.6 + 0.8 * crm.sample_uniform(seed, 71, ord.order_id) AS skew,
		       r.wednesday_organic AND EXTRACT(isodow FROM ord.ordered_at AT TIME ZONE 'UTC') = 3 AS organic_day
		FROM pg_temp.crm_sample_orders ord
		JOIN pg_temp.crm_sample_rec r ON r.customer_id = ord.customer_id
	) AS o
	CROSS JOIN LATERAL (
		-- line 1's category and sku
		SELECT CASE WHEN o.organic_day AND crm.sample_uniform(seed, 72, o.order_id) < 0.8 THEN 11
		            WHEN o.staple_cat IS NOT NULL AND crm.sample_uniform(seed, 72, o.order_id) < 0.5 THEN o.staple_cat
		            WHEN crm.sample_uniform(seed, 72, o.order_id) < 0.7 THEN o.favourite
		            ELSE crm.sample_category(crm.sample_uniform(seed, 73, o.order_id)) END AS cat1,
		       CASE WHEN o.staple_cat IS NOT NULL AND NOT o.organic_day
		                 AND crm.sample_uniform(seed, 72, o.order_id) < 0.5 THEN o.staple_idx
		            ELSE pg_catalog.floor(60 * crm.sample_uniform(seed, 74, o.order_id) ^ 2.5)::integer END AS idx1
	) AS first
	CROSS JOIN LATERAL (
		SELECT g.line_no,
		       CASE WHEN g.line_no = 1 OR crm.sample_uniform(seed, 76, o.order_id * 8 + g.line_no) < 0.3 THEN first.cat1
		            WHEN crm.sample_uniform(seed, 76, o.order_id * 8 + g.line_no) < 0.5 THEN o.favourite
		            ELSE crm.sample_category(crm.sample_uniform(seed, 77, o.order_id * 8 + g.line_no)) END AS cat,
		       CASE WHEN g.line_no = 1 THEN first.idx1
		            WHEN crm.sample_uniform(seed, 76, o.order_id * 8 + g.line_no) < 0.3 THEN first.idx1 # 1
		            ELSE pg_catalog.floor(60 * crm.sample_uniform(seed, 78, o.order_id * 8 + g.line_no) ^ 2.5)::integer END AS sku_idx
		FROM pg_catalog.generate_series(1, o.n_lines) AS g(line_no)
	) AS l
	JOIN crm.sample_categories() AS c ON c.category_no = l.cat
;
	INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount, customer_id)
	SELECT * FROM pg_temp.crm_sample_lines;
	DROP TABLE pg_temp.crm_sample_lines, pg_temp.crm_sample_orders;

	-- Events ---------------------------------------------------------------------
	CREATE TEMP TABLE crm_sample_events (event_id, customer_id, origin_customer_id, kind, at, channel, store_id, props) AS
	SELECT e.event_id, e.customer_id, e.customer_id, e.kind,
	       window_start + (e.first_day + e.u_day * (LEAST(window_days, e.stop_day + 60) - e.first_day)) * interval '1 day',
	       CASE WHEN e.kind = 'store_visit' THEN 'pos' WHEN e.channel = 'pos' THEN 'app' ELSE e.channel END,
	       CASE WHEN e.kind = 'store_visit' THEN e.home_store END,
	       CASE e.kind
	            WHEN 'browse' THEN pg_catalog.jsonb_build_object('sku', e.sku)
	            WHEN 'cart' THEN pg_catalog.jsonb_build_object('sku', e.sku)
	            WHEN 'search' THEN pg_catalog.jsonb_build_object('query', e.category)
	            ELSE '{}'::jsonb END
	FROM (
		SELECT r.events_before + j AS event_id, r.customer_id, r.channel, r.home_store, r.first_day, r.stop_day,
		       crm.sample_uniform(seed, 41, r.events_before + j) AS u_day,
		       CASE WHEN u.k < 0.40 THEN 'browse' WHEN u.k < 0.50 THEN 'search' WHEN u.k < 0.70 THEN 'cart'
		            WHEN u.k < 0.75 THEN 'checkout' WHEN u.k < 0.93 THEN 'sign_in' ELSE 'store_visit' END AS kind,
		       c.prefix || '-' || pg_catalog.lpad(pg_catalog.floor(60 * crm.sample_uniform(seed, 43, r.events_before + j) ^ 2.5)::integer::text, 4, '0') AS sku,
		       c.category
		FROM pg_temp.crm_sample_rec r
		CROSS JOIN LATERAL pg_catalog.generate_series(1, r.n_events) AS j
		CROSS JOIN LATERAL (SELECT crm.sample_uniform(seed, 42, r.events_before + j) AS k) AS u
		JOIN crm.sample_categories() AS c
		  ON c.category_no = CASE WHEN crm.sample_uniform(seed, 44, r.events_before + j) < 0.5 THEN r.favourite
		                          ELSE crm.sample_category(crm.sample_uniform(seed, 45, r.events_before + j)) END
		WHERE r.n_events > 0
	) AS e
;
	INSERT INTO crm.event (event_id, customer_id, origin_customer_id, kind, at, channel, store_id, props)
	SELECT * FROM pg_temp.crm_sample_events;
	DROP TABLE pg_temp.crm_sample_events;

	-- Sequences continue after the sample's ids.
	PERFORM pg_catalog.setval('crm.customer_id_seq', (SELECT max(c.customer_id) FROM crm.customer c));
	PERFORM pg_catalog.setval('crm.identity_id_seq', GREATEST(1, (SELECT max(i.identity_id) FROM crm.identity i)));
	PERFORM pg_catalog.setval('crm.order_id_seq', GREATEST(1, (SELECT max(o.order_id) FROM crm.orders o)));
	PERFORM pg_catalog.setval('crm.event_id_seq', GREATEST(1, (SELECT max(e.event_id) FROM crm.event e)));
	DROP TABLE pg_temp.crm_sample_rec;

	RETURN QUERY
		SELECT 'crm.store', (SELECT count(*) FROM crm.store)
		UNION ALL SELECT 'crm.customer', (SELECT count(*) FROM crm.customer)
		UNION ALL SELECT 'crm.identity', (SELECT count(*) FROM crm.identity)
		UNION ALL SELECT 'crm.orders', (SELECT count(*) FROM crm.orders)
		UNION ALL SELECT 'crm.order_line', (SELECT count(*) FROM crm.order_line)
		UNION ALL SELECT 'crm.event', (SELECT count(*) FROM crm.event);
END
$$;
COMMENT ON FUNCTION crm.generate_sample(integer, integer) IS
	'Fills empty crm tables with deterministic sample retail data for "customers" customer records; the same seed gives the same data';
