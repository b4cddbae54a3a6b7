/*
 * crm_ext 0.1.0 -> 0.2.0
 *
 * Everything the 0.2.0 install script makes differently from 0.1.0's
 * (src/updates/crm_ext--0.1.0.sql, frozen), so that ALTER EXTENSION crm_ext
 * UPDATE gives the same catalog as a fresh install (test/shell/upgrade.sh).
 * Function bodies here are copies of the ones in src/: change both.
 */
\echo Use "ALTER EXTENSION crm_ext UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Issue 11: safety
-- ---------------------------------------------------------------------------

-- generate_sample turns stitching off for its own run only (a SET clause).
CREATE OR REPLACE FUNCTION crm.generate_sample(customers integer, seed integer DEFAULT 1)
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


-- The journal guard has no switch: customer_id moves only along merges.
CREATE FUNCTION crm.loyalty_merged_along(record bigint, target bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_loyalty_merged_along';
COMMENT ON FUNCTION crm.loyalty_merged_along(bigint, bigint) IS
	'Internal: is target the record itself or a record it is merged into now (directly or through others)';

CREATE OR REPLACE FUNCTION crm.points_journal_guard() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_points_journal_guard';
COMMENT ON FUNCTION crm.points_journal_guard() IS
	'Rejects UPDATE, DELETE and TRUNCATE on crm.points_journal; only customer_id may change, to the row''s origin or a record the origin is merged into (in C: a merge moves every journal row of the merged record through it)';





-- Configuration triggers fire under session_replication_role = replica too
-- (a restore): tags are compiled, caches invalidated.
ALTER TABLE crm.loyalty_program ENABLE ALWAYS TRIGGER loyalty_program_changed;
ALTER TABLE crm.tier ENABLE ALWAYS TRIGGER tier_changed;
ALTER TABLE crm.earn_rule ENABLE ALWAYS TRIGGER earn_rule_changed;
ALTER TABLE crm.segment_setting ENABLE ALWAYS TRIGGER segment_setting_changed;
ALTER TABLE crm.rfm_segment_map ENABLE ALWAYS TRIGGER rfm_segment_map_changed;
ALTER TABLE crm.rfm_threshold ENABLE ALWAYS TRIGGER rfm_threshold_changed;
ALTER TABLE crm.tag ENABLE ALWAYS TRIGGER tag_compile;
ALTER TABLE crm.tag ENABLE ALWAYS TRIGGER tag_changed;
-- a database restored in replica mode under 0.1.0 has uncompiled tags
UPDATE crm.tag SET rule = rule WHERE kind OPERATOR(pg_catalog.=) 'rule' AND compiled IS NULL;

-- ---------------------------------------------------------------------------
-- Issue 11, item 6: silent successes
-- ---------------------------------------------------------------------------

-- Order and event times in 1900-01-01 .. now() + crm.max_future; identity
-- values match their kind's pattern (both checked by crm.fill_origin_customer).

COMMENT ON FUNCTION crm.fill_origin_customer() IS
	'BEFORE INSERT OR UPDATE row trigger: a NULL origin_customer_id becomes customer_id; origin_customer_id never changes afterwards, and customer_id only along the origin''s merges (to the origin or a record it is merged into, as merges, unmerges and stitching move rows; else SQLSTATE 55000); arguments: to_golden (a row inserted for a merged record goes to its golden customer), time=<column> (the column lies between 1900-01-01 UTC and now() + crm.max_future, SQLSTATE 22008), pattern (crm.identity: the value matches its kind''s pattern unless blocklisted, SQLSTATE 23514)';

ALTER TABLE crm.identity_kind ADD COLUMN pattern text CONSTRAINT identity_kind_pattern_valid CHECK (pattern IS NULL OR ('' ~ pattern) IS NOT NULL);

COMMENT ON COLUMN crm.identity_kind.pattern IS 'Regular expression every value of this kind must match when inserted or changed (SQLSTATE 23514; blocklisted values are exempt); NULL accepts any value';

UPDATE crm.identity_kind SET pattern = '^\+?[0-9]([ -]?[0-9]){5,19}$' WHERE kind OPERATOR(pg_catalog.=) 'phone' AND builtin;

UPDATE crm.identity_kind SET pattern = '^[A-Za-z0-9]([A-Za-z0-9-]{0,38}[A-Za-z0-9])?$' WHERE kind OPERATOR(pg_catalog.=) 'member_no' AND builtin;

UPDATE crm.identity_kind SET pattern = '^[^[:space:]]+$' WHERE kind OPERATOR(pg_catalog.=) 'device' AND builtin;

UPDATE crm.identity_kind SET pattern = '^[^[:space:]]+$' WHERE kind OPERATOR(pg_catalog.=) 'pay_account' AND builtin;

UPDATE crm.identity_kind SET pattern = '^[^[:space:]]+$' WHERE kind OPERATOR(pg_catalog.=) 'openid' AND builtin;

UPDATE crm.identity_kind SET pattern = '^[^@[:space:]]+@[^@[:space:]]+$' WHERE kind OPERATOR(pg_catalog.=) 'email' AND builtin;

DROP TRIGGER identity_fill_origin ON crm.identity;
CREATE TRIGGER identity_fill_origin BEFORE INSERT OR UPDATE ON crm.identity
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('pattern', 'stitch');

DROP TRIGGER orders_fill_origin ON crm.orders;
CREATE TRIGGER orders_fill_origin BEFORE INSERT OR UPDATE ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('to_golden', 'time=ordered_at', 'store_id->store');

DROP TRIGGER event_fill_origin ON crm.event;
CREATE TRIGGER event_fill_origin BEFORE INSERT OR UPDATE ON crm.event
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('to_golden', 'time=at', 'store_id->store');


-- Money totals hold sums of many maximal orders (numeric(20,2)).  The views
-- over such columns are dropped and made again as in the install script.
DROP VIEW crm.v_customer_360;
DROP VIEW crm.v_segment_sizes;
DROP VIEW crm.v_rfm_grid;
DROP VIEW crm.customer_rfm;
ALTER TABLE crm.customer_stats ALTER COLUMN spend TYPE numeric(20,2), ALTER COLUMN line_spend TYPE numeric(20,2);
ALTER TABLE crm.rfm_snapshot ALTER COLUMN monetary TYPE numeric(20,2);
ALTER TABLE crm.loyalty_account ALTER COLUMN qualifying_spend TYPE numeric(20,2);
ALTER TABLE crm.tier_history ALTER COLUMN qualifying_spend TYPE numeric(20,2);

CREATE VIEW crm.customer_rfm AS
SELECT s.customer_id, r.as_of,
	pg_catalog.floor(EXTRACT(EPOCH FROM r.as_of OPERATOR(pg_catalog.-) s.last_order_at) OPERATOR(pg_catalog./) 86400)::integer AS recency_days,
	s.frequency, s.monetary, s.score, s.segment, s.last_order_at
FROM crm.rfm_snapshot s CROSS JOIN crm.rfm_refresh r;
COMMENT ON VIEW crm.customer_rfm IS 'RFM per golden customer as of the last crm.refresh_rfm (empty before the first)';

CREATE VIEW crm.v_customer_360 AS
SELECT c.customer_id, c.name, c.channel, c.home_store_id, c.created_at,
	coalesce(s.orders, 0) AS orders, coalesce(s.spend, 0) AS spend,
	s.first_order_at, s.last_order_at, s.mean_interval_days,
	r.score AS rfm_score, r.segment AS rfm_segment, r.as_of AS rfm_as_of,
	coalesce(s.stage, 'prospect') AS stage, s.stage_since,
	coalesce((SELECT pg_catalog.array_agg(t.name ORDER BY t.name) FROM crm.customer_tag ct
	          JOIN crm.tag t ON t.tag_id = ct.tag_id WHERE ct.customer_id = c.customer_id), '{}') AS tags,
	a.tier, a.tier_since, coalesce(crm.ledger_balance(a.ledger, pg_catalog.now()), 0) AS points,
	coalesce(a.debt, 0) AS points_debt
FROM crm.customer c
LEFT JOIN crm.customer_stats s ON s.customer_id = c.customer_id
LEFT JOIN crm.customer_rfm r ON r.customer_id = c.customer_id
LEFT JOIN crm.loyalty_account a ON a.customer_id = c.customer_id
WHERE c.merged_into IS NULL;
COMMENT ON VIEW crm.v_customer_360 IS 'One row per golden customer: profile, orders and spend, RFM (as of the last refresh), lifecycle stage, tags, loyalty tier and points (unexpired now)';

CREATE VIEW crm.v_segment_sizes AS
SELECT 'segment'::text AS kind, s.name, crm.segment_count(s.name) AS customers FROM crm.segment s
UNION ALL
-- (tags counted by a join, not a correlated subquery: Citus refuses that next to a reference table)
SELECT 'tag', t.name, coalesce(n.customers, 0) FROM crm.tag t
LEFT JOIN (SELECT ct.tag_id, pg_catalog.count(*) AS customers FROM crm.customer_tag ct GROUP BY ct.tag_id) n ON n.tag_id = t.tag_id
UNION ALL
SELECT 'rfm', r.segment, pg_catalog.count(*) FROM crm.customer_rfm r GROUP BY r.segment
UNION ALL
SELECT 'stage', st.stage, st.n FROM (
	SELECT coalesce(s.stage, 'prospect') AS stage, pg_catalog.count(*) AS n
	FROM crm.customer c LEFT JOIN crm.customer_stats s ON s.customer_id = c.customer_id
	WHERE c.merged_into IS NULL GROUP BY 1) st;
COMMENT ON VIEW crm.v_segment_sizes IS 'Customers per audience segment, tag, RFM segment (last refresh) and lifecycle stage';

CREATE VIEW crm.v_rfm_grid AS
SELECT crm.r(r.score) AS r, crm.f(r.score) AS f, pg_catalog.count(*) AS customers,
	pg_catalog.round(pg_catalog.avg(r.monetary), 2) AS avg_monetary,
	pg_catalog.mode() WITHIN GROUP (ORDER BY r.segment) AS segment
FROM crm.customer_rfm r
GROUP BY 1, 2;
COMMENT ON VIEW crm.v_rfm_grid IS 'The recency x frequency grid of the last RFM refresh: customers, average monetary value and segment per cell';


-- crm.unmerge refuses a NULL cascade.



-- Loyalty: unknown customers are 23503 at the read entry points; backdated
-- spends never reach lots expired by crm.loyalty_now(); at in range.

CREATE FUNCTION crm.loyalty_now() RETURNS timestamptz
	LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_loyalty_now';
COMMENT ON FUNCTION crm.loyalty_now() IS
	'The time redemptions take for now() when deciding which lots have expired: setting crm.loyalty_now (superuser only; tests and replays of history) when set, else the transaction start';

CREATE FUNCTION crm.loyalty_no_account(customer_id bigint) RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) loyalty_no_account.customer_id) THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	RETURN 0;
END
$$;
COMMENT ON FUNCTION crm.loyalty_no_account(bigint) IS
	'Internal: 0 for a customer without a loyalty account; SQLSTATE 23503 when no such customer exists';

CREATE OR REPLACE FUNCTION crm.loyalty_check_args(customer_id bigint, points bigint, key text, at timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: it reports NULLs.
BEGIN
	IF customer_id IS NULL OR points IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'customer_id, points and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF key IS NOT NULL AND (pg_catalog.btrim(key) OPERATOR(pg_catalog.=) '' OR pg_catalog.length(key) OPERATOR(pg_catalog.>) 200) THEN
		RAISE EXCEPTION 'an idempotency key must be 1 to 200 characters, not blank' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The range orders and events must lie in (crm.fill_origin_customer): a
	-- credit dated 9999-12-31 would never expire.  crm.max_future is unset
	-- only before the library is loaded, when it has its default.
	IF at OPERATOR(pg_catalog.<) '1900-01-01 00:00:00+00'::timestamptz THEN
		RAISE EXCEPTION 'at lies before 1900-01-01' USING ERRCODE = 'datetime_field_overflow',
			HINT = 'Correct the time: a date this old is a typing or feed error.';
	END IF;
	IF at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.+)
	   coalesce(pg_catalog.current_setting('crm.max_future', true), '1 day')::pg_catalog.interval) THEN
		RAISE EXCEPTION 'at lies more than crm.max_future (%) after now()',
			coalesce(pg_catalog.current_setting('crm.max_future', true), '1 day')
			USING ERRCODE = 'datetime_field_overflow',
			      HINT = 'Correct the time (and its time zone), or have a superuser raise crm.max_future.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) loyalty_check_args.customer_id) THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.loyalty_check_args(bigint, bigint, text, timestamptz) IS
	'Internal: argument checks shared by crm.redeem_points and crm.adjust_points';





-- ---------------------------------------------------------------------------
-- Issue 11, items 5 and 6: clean errors for bad input, ledger_agg rows
-- ---------------------------------------------------------------------------

-- crm.ledger_agg refuses a row whose points are not the signed total of its
-- lots (the check is in C); its comment says so.
COMMENT ON AGGREGATE crm.ledger_agg(crm.loyalty_ledger, bigint) IS
	'Rebuilds a ledger from journal rows: a row with points > 0 adds its lots, points < 0 takes them out; |points| must equal the total of the row''s lots (22023 otherwise); order does not matter';

-- ---------------------------------------------------------------------------
-- Issue 12: one "configuration changed" trigger for every configuration table
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.config_changed() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_config_changed';
COMMENT ON FUNCTION crm.config_changed() IS
	'AFTER statement trigger on every configuration table: every backend rebuilds its cached configuration';
DROP TRIGGER loyalty_program_changed ON crm.loyalty_program;
CREATE TRIGGER loyalty_program_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.loyalty_program
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.loyalty_program ENABLE ALWAYS TRIGGER loyalty_program_changed;
DROP TRIGGER tier_changed ON crm.tier;
CREATE TRIGGER tier_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.tier
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.tier ENABLE ALWAYS TRIGGER tier_changed;
DROP TRIGGER earn_rule_changed ON crm.earn_rule;
CREATE TRIGGER earn_rule_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.earn_rule
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.earn_rule ENABLE ALWAYS TRIGGER earn_rule_changed;
DROP TRIGGER segment_setting_changed ON crm.segment_setting;
CREATE TRIGGER segment_setting_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.segment_setting
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.segment_setting ENABLE ALWAYS TRIGGER segment_setting_changed;
DROP TRIGGER rfm_segment_map_changed ON crm.rfm_segment_map;
CREATE TRIGGER rfm_segment_map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.rfm_segment_map
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.rfm_segment_map ENABLE ALWAYS TRIGGER rfm_segment_map_changed;
DROP TRIGGER rfm_threshold_changed ON crm.rfm_threshold;
CREATE TRIGGER rfm_threshold_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.rfm_threshold
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.rfm_threshold ENABLE ALWAYS TRIGGER rfm_threshold_changed;
DROP TRIGGER tag_changed ON crm.tag;
CREATE TRIGGER tag_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.tag
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.tag ENABLE ALWAYS TRIGGER tag_changed;
DROP FUNCTION crm.loyalty_config_changed();
DROP FUNCTION crm.seg_config_changed();

-- crm.at_risk_threshold is a real setting (0 to 1, checked when set), read in C.
CREATE OR REPLACE FUNCTION crm.clv_at_risk_threshold() RETURNS double precision
	LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_clv_at_risk_threshold';
COMMENT ON FUNCTION crm.clv_at_risk_threshold() IS
	'The P(alive) below which a customer is at risk: setting crm.at_risk_threshold, a number between 0 and 1 (e.g. ALTER DATABASE ... SET crm.at_risk_threshold = 0.3), 0.5 when unset';

-- Order lines inserted without line numbers are numbered (src/core/order_line.c).
CREATE FUNCTION crm.number_order_line() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_number_order_line';
COMMENT ON FUNCTION crm.number_order_line() IS
	'BEFORE INSERT row trigger on crm.order_line (WHEN line_no IS NULL): numbers the line after the order''s highest line';
CREATE TRIGGER order_line_number BEFORE INSERT ON crm.order_line
	FOR EACH ROW WHEN (NEW.line_no IS NULL) EXECUTE FUNCTION crm.number_order_line();

-- ---------------------------------------------------------------------------
-- Issue 12, items 3 and 4 (loyalty): one owner per business rule, in C.  The
-- tier a spend reaches and the monthly spend buckets are C functions the
-- SQL paths call instead of their own copies.
-- ---------------------------------------------------------------------------
-- The business rules of tiers and qualifying spend live once, in C
-- (src/loyalty/loyalty_account.c); the triggers use them directly and the
-- SQL paths (crm.qualifying_spend, tick tasks, merge hooks) through these.
CREATE FUNCTION crm.tier_for_spend(spend numeric) RETURNS text
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_tier_for_spend';
COMMENT ON FUNCTION crm.tier_for_spend(numeric) IS
	'The tier a rolling 12-month qualifying spend reaches: the highest rank whose threshold is at most spend; NULL for a negative spend; 22023 for NaN';

CREATE FUNCTION crm.spend_buckets_total(spend_month integer, spend_cents bigint[], at timestamptz) RETURNS numeric
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_spend_buckets_total';
COMMENT ON FUNCTION crm.spend_buckets_total(integer, bigint[], timestamptz) IS
	'Rolling qualifying spend at "at" of monthly buckets in cents (spend_cents[k] is month spend_month - k + 1): those of the month of "at" and the 11 before it (programme time zone), NULL elements counting 0';

CREATE FUNCTION crm.spend_buckets(ordered_at timestamptz[], net_amount numeric[],
	OUT spend_month integer, OUT spend_cents bigint[], OUT qualifying_spend numeric)
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_spend_buckets';
COMMENT ON FUNCTION crm.spend_buckets(timestamptz[], numeric[]) IS
	'An account''s 13 monthly qualifying-spend buckets built from its orders (pairs of ordered_at and net_amount): net amounts above 0 count, in cents, in the programme month of ordered_at (at most the month after now()); spend_month is the newest such month (0 for none); qualifying_spend the total of it and the 11 months before; pairs with a NULL are skipped';



CREATE FUNCTION crm.loyalty_recompute_spends(customer_ids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	id bigint;
BEGIN
	-- Which orders count and in which month is crm.spend_buckets' rule.
	IF crm.on_citus() THEN
		-- A statement per customer, on its shard (Citus routes a statement
		-- by its values, with a custom plan).
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
		FOREACH id IN ARRAY customer_ids LOOP
			UPDATE crm.loyalty_account a SET spend_month = s.spend_month, spend_cents = s.spend_cents,
				qualifying_spend = s.qualifying_spend, updated_at = pg_catalog.now()
			FROM (SELECT pg_catalog.array_agg(o.ordered_at) AS ordered_at, pg_catalog.array_agg(o.net_amount) AS net_amount
			      FROM crm.orders o WHERE o.customer_id OPERATOR(pg_catalog.=) id) o,
			     LATERAL crm.spend_buckets(coalesce(o.ordered_at, '{}'), coalesce(o.net_amount, '{}')) s
			WHERE a.customer_id OPERATOR(pg_catalog.=) id;
		END LOOP;
		RETURN;
	END IF;
	UPDATE crm.loyalty_account a SET spend_month = b.spend_month, spend_cents = b.spend_cents,
		qualifying_spend = b.qualifying_spend,
		updated_at = pg_catalog.now()
	FROM (SELECT u.id, s.spend_month, s.spend_cents, s.qualifying_spend
	      FROM pg_catalog.unnest(customer_ids) u(id),
	           LATERAL (SELECT pg_catalog.array_agg(o.ordered_at) AS ordered_at, pg_catalog.array_agg(o.net_amount) AS net_amount
	                    FROM crm.orders o
	                    WHERE o.customer_id OPERATOR(pg_catalog.=) u.id) o,
	           LATERAL crm.spend_buckets(coalesce(o.ordered_at, '{}'), coalesce(o.net_amount, '{}')) s) b
	WHERE a.customer_id OPERATOR(pg_catalog.=) b.id;
END
$$;
COMMENT ON FUNCTION crm.loyalty_recompute_spends(bigint[]) IS
	'Internal: rebuilds the monthly qualifying-spend buckets of the accounts of customer_ids from their orders (after merges), in one statement';

CREATE OR REPLACE FUNCTION crm.loyalty_recompute_spend(customer_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.loyalty_recompute_spends(ARRAY[customer_id]);
END
$$;


-- ---------------------------------------------------------------------------
-- Issue 12, item 4: one owner for the identity link policy.  The blocklist
-- and the weak kinds' limit are decided in C (src/identity/identity_policy.c):
-- crm.identity_blocked becomes a C function, crm.identity_may_link is new,
-- and online (crm.stitch_identity) and batch (crm.identity_graph) stitching
-- ask it instead of carrying their own copies.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION crm.identity_blocked(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_blocked';
COMMENT ON FUNCTION crm.identity_blocked(text, text) IS
	'True when crm.identity_blocklist blocks the value (compared lower-case and trimmed) for the kind';

CREATE FUNCTION crm.identity_may_link(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_may_link_sql';
COMMENT ON FUNCTION crm.identity_may_link(text, text) IS
	'The identity link policy: true when the value may link the customer records holding it (not blocklisted for the kind; a known kind; strong, or weak and held by at most max_customers records of crm.identity)';

CREATE FUNCTION crm.identity_may_link(kind text, value text, holders bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_may_link_sql';
COMMENT ON FUNCTION crm.identity_may_link(text, text, bigint) IS
	'The identity link policy for a value held by the given number of customer records (batch stitching counts them itself); holders must not be negative';

CREATE OR REPLACE FUNCTION crm.stitch_identity(identity_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- Applies the kind's policy to one identity row and merges its customer
-- with the other golden customers holding the same (kind, value).  Returns
-- the number of merges made.
DECLARE
	r crm.identity;
	g bigint;
	h bigint;
	n integer := 0;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	SELECT * INTO r FROM crm.identity i WHERE i.identity_id = stitch_identity.identity_id;
	IF NOT FOUND THEN
		RETURN 0;
	END IF;
	-- An identifier inserted for a merged-away record belongs to its golden
	-- (unless the golden holds the value already).  The insert put it there
	-- (crm.fill_origin_customer('stitch')); this moves one whose record a
	-- merge that committed since the insert's snapshot took away.
	g := crm.golden_customer(r.customer_id);
	IF g <> r.customer_id AND NOT EXISTS (SELECT 1 FROM crm.identity d
	                                      WHERE d.kind = r.kind AND d.value = r.value AND d.customer_id = g) THEN
		PERFORM crm.move_customer_rows('crm.identity', g, 't.identity_id = $2[1] AND t.customer_id = $3[1]',
		                               ARRAY[r.identity_id], ARRAY[r.customer_id]);
	END IF;
	-- The link policy (blocklist, weak kinds' limit, strong kinds' hubs) is
	-- crm.identity_may_link's; a hub's holders go to review instead.
	IF NOT crm.identity_may_link(r.kind, r.value) THEN
		IF crm.identity_is_hub(r.kind, r.value) THEN
			PERFORM crm.identity_review_hub(r.kind, r.value, 'online');
		END IF;
		RETURN 0;
	END IF;
	-- The other golden customers holding the value (the row's own golden
	-- has nothing to merge: most values a shopper adds are held by their
	-- own records already).
	FOR h IN
		SELECT DISTINCT COALESCE(c.merged_into, c.customer_id)
		FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		WHERE i.kind = r.kind AND i.value = r.value
		  AND COALESCE(c.merged_into, c.customer_id) <> g
		ORDER BY 1
	LOOP
		IF crm.merge_goldens(r.customer_id, h, 'online', 'shared ' || r.kind, r.identity_id) IS NOT NULL THEN
			n := n + 1;
		END IF;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.stitch_identity(bigint) IS
	'Online stitching of one crm.identity row: merges its customer with every other golden customer holding the same value, if the kind''s policy and the blocklist allow';

CREATE OR REPLACE FUNCTION crm.identity_graph() RETURNS crm.id_merge
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	-- The links the policies allow, between customer records (origin ids):
	-- values held by 2+ records that crm.identity_may_link lets link (not
	-- blocklisted; for weak kinds held by at most max_customers records).
	-- A value on exactly two records is one edge (min, max); the rare
	-- larger groups are joined back for theirs.
	WITH grp AS (
		SELECT i.kind, i.value, pg_catalog.min(i.origin_customer_id) AS lo,
		       pg_catalog.max(i.origin_customer_id) AS hi, pg_catalog.count(*) AS n
		FROM crm.identity i
		GROUP BY i.kind, i.value
		HAVING pg_catalog.count(*) > 1
	), linking AS (
		SELECT g.kind, g.value, g.lo, g.hi, g.n
		FROM grp g
		WHERE crm.identity_may_link(g.kind, g.value, g.n)
	), edges AS (
		SELECT l.lo AS a, l.hi AS b FROM linking l WHERE l.n = 2
		UNION ALL
		SELECT l.lo, i.origin_customer_id FROM linking l
		JOIN crm.identity i ON i.kind = l.kind AND i.value = l.value
		WHERE l.n > 2
	)
	SELECT crm.id_merge_agg(e.a, e.b) FROM edges e;
END;

-- ---------------------------------------------------------------------------
-- Issue 13, defect 2: an order dated into next month (within crm.max_future)
-- no longer drops the oldest month that still counts now.  Accounts keep 13
-- monthly buckets (a rolling spend counts 12); rows written before keep
-- their 12, the 13th counting 0, until the triggers next write them.
-- ---------------------------------------------------------------------------
ALTER TABLE crm.loyalty_account ALTER COLUMN spend_cents SET DEFAULT '{0,0,0,0,0,0,0,0,0,0,0,0,0}';
COMMENT ON FUNCTION crm.loyalty_account_valid(bigint, bigint[]) IS
	'CHECK of crm.loyalty_account: debt >= 0; spend_cents has 13 elements (12 in rows written before 0.2.0), none NULL';
COMMENT ON COLUMN crm.loyalty_account.spend_month IS 'Newest month with a qualifying order, as year * 12 + month - 1 in the programme time zone; never past the month after now()';
COMMENT ON COLUMN crm.loyalty_account.spend_cents IS 'Qualifying spend in cents of spend_month (element 1) and the 12 months before it: one more than a rolling spend counts, so an order dated into next month keeps every month that counts now';
COMMENT ON FUNCTION crm.loyalty_recompute_spend(bigint) IS
	'Internal: rebuilds an account''s monthly qualifying-spend buckets from its orders (after merges): crm.loyalty_recompute_spends for one';

-- ---------------------------------------------------------------------------
-- Issue 13, defects 6 and 9: a golden customer is never itself merged (every
-- merge resolves both sides to their golden customers; batch stitching joins
-- components that share a golden and repairs chains 0.1.0 left); stray
-- duplicate identifiers no longer break batch stitching.
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION crm.golden_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_golden_customer';
COMMENT ON FUNCTION crm.golden_customer(bigint) IS
	'The golden customer a record belongs to now (itself when not merged; merged_into followed to its end, in C: every merge and entry point asks); NULL for an unknown id';



-- issue 13, defect 3: the tier policy (crm.tier_held, C) re-evaluates tiers at merges and unmerges
CREATE FUNCTION crm.tier_held(tier text, tier_since timestamptz, spend_month integer, spend_cents bigint[], at timestamptz)
	RETURNS text LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_tier_held';
COMMENT ON FUNCTION crm.tier_held(text, timestamptz, integer, bigint[], timestamptz) IS
	'The tier policy: the tier an account (tier, tier_since, spend buckets) holds at "at": the higher of the tier its rolling spend as of the month of "at" reaches and its tier while reached less than tier_hold_months before "at"; merges, unmerges and crm.tick''s downgrade set it, orders only raise it';

CREATE FUNCTION crm.loyalty_set_tier(customer_id bigint, tier text, tier_since timestamptz, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old text;
BEGIN
	-- The caller holds the account's lock.
	SELECT a.tier INTO old FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
	IF old OPERATOR(pg_catalog.=) tier THEN
		UPDATE crm.loyalty_account a SET tier_since = loyalty_set_tier.tier_since
		WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id
		  AND a.tier_since OPERATOR(pg_catalog.<>) loyalty_set_tier.tier_since;
		RETURN;
	END IF;
	UPDATE crm.loyalty_account a SET tier = loyalty_set_tier.tier, tier_since = loyalty_set_tier.tier_since,
		updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
	INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason, qualifying_spend)
	SELECT a.customer_id, old, a.tier, pg_catalog.now(), reason,
	       crm.spend_buckets_total(a.spend_month, a.spend_cents, crm.loyalty_now())::pg_catalog.numeric(20,2)
	FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) loyalty_set_tier.customer_id;
END
$$;
COMMENT ON FUNCTION crm.loyalty_set_tier(bigint, text, timestamptz, text) IS
	'Internal: sets an account''s tier and tier_since after a merge or unmerge; a change of tier goes to crm.tier_history with the reason and the rolling spend';

CREATE FUNCTION crm.loyalty_merge_tier(survivor bigint, s_tier text, s_since timestamptz, m_tier text, m_since timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a crm.loyalty_account;
	ts text;
	tm text;
	t text;
BEGIN
	-- The survivor's account holds the combined spend buckets by now.  Each
	-- side's tier counts as crm.tier_held says on the combined spend: the
	-- tier that spend reaches, or the side's own tier while it is protected
	-- (reached less than tier_hold_months ago); an unprotected tier above
	-- it is dropped, as crm.tick's downgrade would drop it.  The higher of
	-- the two wins and keeps its tier_since; a tier only the combined spend
	-- reaches starts now.
	SELECT * INTO a FROM crm.loyalty_account x WHERE x.customer_id OPERATOR(pg_catalog.=) survivor;
	ts := crm.tier_held(s_tier, s_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	tm := crm.tier_held(m_tier, m_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	t := CASE WHEN (SELECT r.rank FROM crm.tier r WHERE r.tier OPERATOR(pg_catalog.=) tm)
	               OPERATOR(pg_catalog.>) (SELECT r.rank FROM crm.tier r WHERE r.tier OPERATOR(pg_catalog.=) ts)
	          THEN tm ELSE ts END;
	PERFORM crm.loyalty_set_tier(survivor, t,
		CASE WHEN t OPERATOR(pg_catalog.=) s_tier THEN s_since
		     WHEN t OPERATOR(pg_catalog.=) m_tier THEN m_since
		     ELSE pg_catalog.now() END,
		'merge');
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge_tier(bigint, text, timestamptz, text, timestamptz) IS
	'Internal: the survivor''s tier after a merge, by crm.tier_held on the combined rolling spend for both sides'' tiers; the higher wins (tier history reason merge)';

CREATE FUNCTION crm.loyalty_unmerge_tier(customer_id bigint, merged_at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: merged_at is NULL for the restored side (its account's tier
-- was left alone while it was merged) and when the merge moved no points.
DECLARE
	a crm.loyalty_account;
	pre_tier text;
	pre_since timestamptz;
	t text;
BEGIN
	-- The tier the side held before the merge counts, not one it reached
	-- with the other side's spend (the merge's own re-evaluation and
	-- upgrades since): the first tier change since merged_at tells which.
	SELECT * INTO a FROM crm.loyalty_account x WHERE x.customer_id OPERATOR(pg_catalog.=) loyalty_unmerge_tier.customer_id;
	pre_tier := a.tier;
	pre_since := a.tier_since;
	IF merged_at IS NOT NULL THEN
		SELECT h.from_tier INTO t FROM crm.tier_history h
		WHERE h.customer_id OPERATOR(pg_catalog.=) a.customer_id AND h.changed_at OPERATOR(pg_catalog.>=) merged_at
		ORDER BY h.changed_at, h.tier_history_id LIMIT 1;
		IF t IS NOT NULL THEN
			pre_tier := t;
			pre_since := coalesce((SELECT pg_catalog.max(h.changed_at) FROM crm.tier_history h
			                       WHERE h.customer_id OPERATOR(pg_catalog.=) a.customer_id
			                         AND h.changed_at OPERATOR(pg_catalog.<) merged_at), pg_catalog.now());
		END IF;
	END IF;
	t := crm.tier_held(pre_tier, pre_since, a.spend_month, a.spend_cents, crm.loyalty_now());
	PERFORM crm.loyalty_set_tier(a.customer_id, t,
		CASE WHEN t OPERATOR(pg_catalog.=) pre_tier THEN pre_since ELSE pg_catalog.now() END, 'unmerge');
END
$$;
COMMENT ON FUNCTION crm.loyalty_unmerge_tier(bigint, timestamptz) IS
	'Internal: one side''s tier after an unmerge: crm.tier_held on its own rolling spend for the tier it held before the merge (tier history reason unmerge)';


CREATE OR REPLACE FUNCTION crm.loyalty_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF survivor OPERATOR(pg_catalog.=) merged THEN
		RAISE EXCEPTION 'cannot merge customer % into itself', survivor USING ERRCODE = 'CR004';
	END IF;
	-- One merge is the set form's smallest case (one owner of the rules).
	PERFORM crm.loyalty_merge_set(ARRAY[survivor], ARRAY[merged]);
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge(bigint, bigint) IS
	'Customer hook (merge): moves the merged customer''s points, debt and journal rows into the survivor, whose tier is re-evaluated on the combined rolling spend (crm.loyalty_merge_set for one merge)';

CREATE OR REPLACE FUNCTION crm.loyalty_unmerge(survivor bigint, restored bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	side bigint;
	other bigint;
	merged_at timestamptz;
BEGIN
	PERFORM crm.loyalty_ensure_account(survivor, pg_catalog.now());
	PERFORM crm.loyalty_ensure_account(restored, pg_catalog.now());
	PERFORM crm.lock_rows('crm.loyalty_account', ARRAY[survivor, restored], 'UPDATE');
	-- When the merge moved points it left a note on the survivor: the
	-- survivor's tier changes since then came with the merged spend.
	SELECT pg_catalog.max(p.at) INTO merged_at FROM crm.points_journal p
	WHERE p.customer_id OPERATOR(pg_catalog.=) survivor AND p.origin_customer_id OPERATOR(pg_catalog.=) restored
	  AND p.kind OPERATOR(pg_catalog.=) 'merge' AND p.points OPERATOR(pg_catalog.=) 0;
	-- 1. Every journal row goes back to the golden record of the customer it
	--    was earned or spent on.
	PERFORM crm.move_customer_rows('crm.points_journal', restored,
		't.customer_id OPERATOR(pg_catalog.=) $2[1] AND t.origin_customer_id OPERATOR(pg_catalog.=) ANY ($3)',
		ARRAY[survivor], crm.records_under(restored));
	-- 2. Points one side spent (or lost to expiry) out of lots the other side
	--    earned, while merged, are charged to the side that earned them: a
	--    pair of 'merge' entries moves them per lot, so neither side ends with
	--    a negative lot.
	FOR r IN
		SELECT p.customer_id, l.expires_at,
		       pg_catalog.sum(CASE WHEN p.points OPERATOR(pg_catalog.>) 0 THEN l.points ELSE - l.points END)::bigint AS pts
		FROM crm.points_journal p, LATERAL crm.ledger_lots(p.lots) l
		WHERE p.customer_id IN (survivor, restored) AND p.points OPERATOR(pg_catalog.<>) 0
		GROUP BY 1, 2
		HAVING pg_catalog.sum(CASE WHEN p.points OPERATOR(pg_catalog.>) 0 THEN l.points ELSE - l.points END) OPERATOR(pg_catalog.<) 0
		ORDER BY 1, 2
	LOOP
		side := r.customer_id;
		other := CASE WHEN side OPERATOR(pg_catalog.=) survivor THEN restored ELSE survivor END;
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, reason, at) VALUES
			(other, other, 'merge', r.pts,
			 crm.ledger_earn('{}', - r.pts, r.expires_at OPERATOR(pg_catalog.-) '1 second'::interval, r.expires_at),
			 pg_catalog.format('unmerge of %s from %s: points of customer %s used by customer %s', restored, survivor, other, side), pg_catalog.now()),
			(side, side, 'merge', - r.pts,
			 crm.ledger_earn('{}', - r.pts, r.expires_at OPERATOR(pg_catalog.-) '1 second'::interval, r.expires_at),
			 pg_catalog.format('unmerge of %s from %s: points of customer %s used by customer %s', restored, survivor, other, side), pg_catalog.now());
	END LOOP;
	-- Debt follows the same rule.
	FOR r IN
		SELECT p.customer_id, pg_catalog.sum(p.debt)::bigint AS d FROM crm.points_journal p
		WHERE p.customer_id IN (survivor, restored) GROUP BY 1 HAVING pg_catalog.sum(p.debt) OPERATOR(pg_catalog.<) 0
	LOOP
		other := CASE WHEN r.customer_id OPERATOR(pg_catalog.=) survivor THEN restored ELSE survivor END;
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, debt, reason, at) VALUES
			(other, other, 'merge', 0, r.d, 'unmerge: debt repaid by the other customer', pg_catalog.now()),
			(r.customer_id, r.customer_id, 'merge', 0, - r.d, 'unmerge: debt repaid by the other customer', pg_catalog.now());
	END LOOP;
	INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, reason, at)
	VALUES (restored, restored, 'merge', 0, pg_catalog.format('unmerged customer %s from %s', restored, survivor), pg_catalog.now());
	-- 3. Both ledgers are rebuilt from their journal rows.
	UPDATE crm.loyalty_account a
	SET ledger = (SELECT crm.ledger_agg(p.lots, p.points) FROM crm.points_journal p WHERE p.customer_id OPERATOR(pg_catalog.=) a.customer_id),
	    debt = (SELECT coalesce(pg_catalog.sum(p.debt), 0) FROM crm.points_journal p WHERE p.customer_id OPERATOR(pg_catalog.=) a.customer_id),
	    updated_at = pg_catalog.now()
	WHERE a.customer_id IN (survivor, restored);
	PERFORM crm.loyalty_recompute_spend(survivor);
	PERFORM crm.loyalty_recompute_spend(restored);
	-- 4. Both sides' tiers are re-evaluated on their own spend.
	PERFORM crm.loyalty_unmerge_tier(survivor, merged_at);
	PERFORM crm.loyalty_unmerge_tier(restored, NULL);
END
$$;
COMMENT ON FUNCTION crm.loyalty_unmerge(bigint, bigint) IS
	'Customer hook (unmerge): journal rows return to the record they were earned or spent on; points one side used of the other''s lots are charged to the earner; both ledgers rebuilt; both tiers re-evaluated on their own rolling spend (crm.loyalty_unmerge_tier)';


-- issue 13, defect 4: crm.unmerge is selective

CREATE FUNCTION crm.unmerge_subtree(merge_id bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- A merge hangs the merged golden under the survivor; the records under a
-- record are those merged into it (merged = a golden then, survivor = it)
-- by merges not undone, and the records under those.  Only records still
-- in the same golden customer count.  (Two statements: the walk reads the
-- merge log alone, which Citus can recurse over; crm.customer is
-- distributed there.)
DECLARE
	down bigint[];
	golden bigint;
	found bigint[];
BEGIN
	down := ARRAY(WITH RECURSIVE down(id, depth) AS (
	                  SELECT l.merged, 0 FROM crm.merge_log l WHERE l.merge_id = unmerge_subtree.merge_id
	                  UNION
	                  SELECT x.merged, d.depth + 1 FROM down d
	                  JOIN crm.merge_log x ON x.survivor = d.id AND x.undone_at IS NULL
	                  WHERE d.depth < 1000)
	              SELECT DISTINCT d.id FROM down d);
	SELECT c.merged_into INTO golden FROM crm.customer c
	WHERE c.customer_id = (SELECT l.merged FROM crm.merge_log l WHERE l.merge_id = unmerge_subtree.merge_id);
	SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id) INTO found
	FROM crm.customer c
	WHERE c.customer_id = ANY (down) AND c.merged_into = golden;
	RETURN found;
END
$$;
COMMENT ON FUNCTION crm.unmerge_subtree(bigint) IS
	'Internal: the records an unmerge of the merge takes back: its merged record and the records merged into that one (by merges not undone, recursively) that are still in the same golden customer';

-- Merge hooks for many merges at once (batch stitching of large components)
ALTER TABLE crm.customer_hook ADD COLUMN set_fn regprocedure;
COMMENT ON COLUMN crm.customer_hook.set_fn IS 'Merge hooks only: fn for many merges at once, (survivors bigint[], merged bigint[]) pairs at the same index in merge order; NULL runs fn merge by merge';

CREATE FUNCTION crm.check_registered_signature(what text, fn regprocedure, want_args oidvector, want_ret regtype)
RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
BEGIN
	SELECT f.proargtypes, f.prorettype, f.prokind, f.proretset INTO p FROM pg_catalog.pg_proc f WHERE f.oid = fn;
	IF p.proargtypes::text <> want_args::text OR p.prorettype <> want_ret OR p.prokind <> 'f' OR p.proretset THEN
		RAISE EXCEPTION '% cannot run %', what, fn
			USING ERRCODE = 'invalid_function_definition',
			      HINT = pg_catalog.format('The function must take (%s) and return %s.',
			                               (SELECT pg_catalog.string_agg(t::regtype::text, ', ')
			                                FROM pg_catalog.unnest(want_args::oid[]) t), want_ret);
	END IF;
END
$$;
COMMENT ON FUNCTION crm.check_registered_signature(text, regprocedure, oidvector, regtype) IS
	'Internal: raises 42P13 unless fn takes want_args and returns want_ret (what names the registration in the message)';

CREATE OR REPLACE FUNCTION crm.check_registered_function()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	want_args oidvector;
	want_ret regtype;
	what text;
BEGIN
	-- (the table by the trigger's argument: on Citus it fires on a shard, tick_task_102008)
	IF TG_ARGV[0] = 'tick_task' THEN
		want_args := '1184'::oidvector;
		want_ret := 'bigint';
		what := pg_catalog.format('tick task "%s"', NEW.task);
	ELSIF NEW.event NOT IN ('merge', 'unmerge', 'forget') THEN
		RETURN NEW;				-- customer_hook_event_valid reports it
	ELSE
		want_args := CASE WHEN NEW.event = 'forget' THEN '20'::oidvector ELSE '20 20'::oidvector END;
		want_ret := 'void';
		what := pg_catalog.format('%s hook "%s"', NEW.event, NEW.hook);
	END IF;
	PERFORM crm.check_registered_signature(what, NEW.fn, want_args, want_ret);
	-- (tick_task has no set_fn column: look only on customer_hook)
	IF TG_ARGV[0] = 'customer_hook' THEN
		IF NEW.set_fn IS NOT NULL AND NEW.event <> 'merge' THEN
			RAISE EXCEPTION '% cannot have a set_fn', what
				USING ERRCODE = 'invalid_function_definition',
				      HINT = 'Only merge hooks run for many merges at once; leave set_fn NULL.';
		ELSIF NEW.set_fn IS NOT NULL THEN
			PERFORM crm.check_registered_signature(what || ' (set_fn)', NEW.set_fn, '1016 1016'::oidvector, 'void');
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.check_registered_function() IS 'Trigger: a crm.tick_task or crm.customer_hook function must have the signature its caller uses';

CREATE FUNCTION crm.run_merge_hooks(survivors bigint[], merged bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- The merge hooks for many merges at once (survivors[i] absorbed merged[i],
-- in that order): each hook in run_order runs its set_fn once, or its fn
-- merge by merge.  Returns how many hooks ran.
DECLARE
	h record;
	n integer := 0;
BEGIN
	IF pg_catalog.cardinality(survivors) <> pg_catalog.cardinality(merged)
	   OR pg_catalog.array_position(survivors, NULL) IS NOT NULL OR pg_catalog.array_position(merged, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'merge hooks need one survivor per merged customer'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Pass two arrays of customer ids of the same length, without NULLs.';
	END IF;
	IF pg_catalog.cardinality(merged) = 0 THEN
		RETURN 0;
	END IF;
	FOR h IN SELECT k.fn, k.set_fn FROM crm.customer_hook k WHERE k.event = 'merge' ORDER BY k.run_order LOOP
		IF h.set_fn IS NOT NULL THEN
			EXECUTE pg_catalog.format('SELECT %s($1, $2)', h.set_fn::oid::regproc) USING survivors, merged;
		ELSE
			FOR i IN 1 .. pg_catalog.cardinality(merged) LOOP
				EXECUTE pg_catalog.format('SELECT %s($1, $2)', h.fn::oid::regproc) USING survivors[i], merged[i];
			END LOOP;
		END IF;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.run_merge_hooks(bigint[], bigint[]) IS
	'Runs the merge hooks for many merges at once (survivors[i] absorbed merged[i], in order): each hook''s set_fn once, or its fn merge by merge; returns how many hooks ran';
DROP TRIGGER customer_hook_signature ON crm.customer_hook;
DROP TRIGGER tick_task_signature ON crm.tick_task;
CREATE TRIGGER tick_task_signature BEFORE INSERT OR UPDATE OF fn ON crm.tick_task
	FOR EACH ROW EXECUTE FUNCTION crm.check_registered_function('tick_task');
CREATE TRIGGER customer_hook_signature BEFORE INSERT OR UPDATE OF fn, event, set_fn ON crm.customer_hook
	FOR EACH ROW EXECUTE FUNCTION crm.check_registered_function('customer_hook');

CREATE FUNCTION crm.loyalty_merge_set(survivors bigint[], merged bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- The loyalty merge hook for many merges at once (survivors[i] absorbed
-- merged[i], in that order; crm.loyalty_merge is one, batch stitching
-- passes thousands): one statement per step over
-- all pairs, and each survivor's account and spend written once, so a
-- component of thousands of records costs one pass over its journal rows
-- instead of one pass per merge.  No customer may be both a survivor and a
-- merged one.
DECLARE
	ss bigint[];
	ms bigint[];
	ledgers crm.loyalty_ledger[];
	debts bigint[];
	r record;
	led crm.loyalty_ledger;
	l crm.loyalty_ledger;
	cur record;
BEGIN
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	IF EXISTS (SELECT s.id FROM pg_catalog.unnest(survivors) s(id)
	           INTERSECT SELECT m.id FROM pg_catalog.unnest(merged) m(id)) THEN
		RAISE EXCEPTION 'cannot merge a customer into itself or into a customer merged in the same step'
			USING ERRCODE = 'CR004';
	END IF;
	-- Pairs whose merged record has an account (the others have nothing to move).
	SELECT pg_catalog.array_agg(p.s ORDER BY p.i), pg_catalog.array_agg(p.m ORDER BY p.i) INTO ss, ms
	FROM ROWS FROM (pg_catalog.unnest(survivors), pg_catalog.unnest(merged)) WITH ORDINALITY p(s, m, i)
	WHERE p.m IN (SELECT a.customer_id FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) ANY (merged));
	IF ms IS NULL THEN
		RETURN;
	END IF;
	PERFORM crm.loyalty_ensure_account(x.s, pg_catalog.now())
	FROM (SELECT DISTINCT u.s FROM pg_catalog.unnest(ss) u(s)) x;
	-- Lock every account involved in customer-id order.
	PERFORM crm.lock_rows('crm.loyalty_account', ss OPERATOR(pg_catalog.||) ms, 'UPDATE');
	SELECT pg_catalog.array_agg(a.ledger ORDER BY p.i), pg_catalog.array_agg(a.debt ORDER BY p.i) INTO ledgers, debts
	FROM pg_catalog.unnest(ms) WITH ORDINALITY p(m, i) JOIN crm.loyalty_account a ON a.customer_id OPERATOR(pg_catalog.=) p.m;
	-- (one statement for thousands of merges: batch stitching)
	PERFORM crm.move_customers('crm.points_journal', ms, ss);
	INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, reason, at)
	SELECT p.s, p.m, 'merge', 0,
	       pg_catalog.format('merged customer %s into %s: %s points, %s debt moved', p.m, p.s, crm.ledger_total(p.l), p.d),
	       pg_catalog.now()
	FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ms), pg_catalog.unnest(ledgers), pg_catalog.unnest(debts)) WITH ORDINALITY p(s, m, l, d, i) ORDER BY p.i;
	-- Each survivor's ledger absorbs its merged ledgers, in merge order.
	FOR r IN
		SELECT p.s, pg_catalog.array_agg(p.l ORDER BY p.i) AS ls, pg_catalog.sum(p.d)::bigint AS d
		FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ledgers), pg_catalog.unnest(debts)) WITH ORDINALITY p(s, l, d, i)
		GROUP BY p.s ORDER BY p.s
	LOOP
		SELECT a.ledger INTO led FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
		FOREACH l IN ARRAY r.ls LOOP
			led := led OPERATOR(crm.+) l;
		END LOOP;
		UPDATE crm.loyalty_account a SET ledger = led, debt = a.debt OPERATOR(pg_catalog.+) r.d, updated_at = pg_catalog.now()
		WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
	END LOOP;
	UPDATE crm.loyalty_account a SET ledger = '{}', debt = 0, updated_at = pg_catalog.now()
	FROM pg_catalog.unnest(ms) u(id) WHERE a.customer_id OPERATOR(pg_catalog.=) u.id;
	PERFORM crm.loyalty_recompute_spends(ARRAY(SELECT DISTINCT u.c FROM pg_catalog.unnest(ss OPERATOR(pg_catalog.||) ms) u(c) ORDER BY 1));
	-- Each survivor's tier, re-evaluated on its combined spend merge by merge
	-- (crm.loyalty_merge_tier).  After a survivor's first merge, a merged
	-- account at the lowest tier cannot change it (its tier held is what the
	-- spend reaches, which the survivor's holds already), so only the first
	-- merge and merged accounts above the lowest tier are evaluated.
	FOR r IN
		SELECT q.s, q.tier, q.tier_since
		FROM (SELECT p.s, p.i, a.tier, a.tier_since, t.rank,
		             pg_catalog.row_number() OVER (PARTITION BY p.s ORDER BY p.i) AS nth
		      FROM ROWS FROM (pg_catalog.unnest(ss), pg_catalog.unnest(ms)) WITH ORDINALITY p(s, m, i)
		      JOIN crm.loyalty_account a ON a.customer_id OPERATOR(pg_catalog.=) p.m
		      JOIN crm.tier t ON t.tier OPERATOR(pg_catalog.=) a.tier) q
		WHERE q.nth OPERATOR(pg_catalog.=) 1 OR q.rank OPERATOR(pg_catalog.>) (SELECT pg_catalog.min(b.rank) FROM crm.tier b)
		ORDER BY q.i
	LOOP
		SELECT a.tier, a.tier_since INTO cur FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) r.s;
		PERFORM crm.loyalty_merge_tier(r.s, cur.tier, cur.tier_since, r.tier, r.tier_since);
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.loyalty_merge_set(bigint[], bigint[]) IS
	'Customer hook (merge, set_fn): moves each merged customer''s points, debt and journal rows into its survivor (survivors[i] absorbed merged[i], in order) in one pass over the journal rows; each survivor''s tier is re-evaluated on its combined rolling spend (crm.loyalty_merge_tier); crm.loyalty_merge is its one-merge case';

CREATE FUNCTION crm.segmentation_on_merge_set(survivors bigint[], merged bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- The segmentation merge hook for many merges at once (survivors[i]
-- absorbed merged[i], in that order; crm.segmentation_on_merge is one,
-- batch stitching passes thousands): manual tags move in one
-- statement, and every record's stats are rebuilt once, in one pass over
-- their orders, instead of the survivor's once per merge.
BEGIN
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	-- manual tags of the merged records go to their survivors (the first
	-- merged record's since wins, as merge by merge)
	WITH moved AS (
		INSERT INTO crm.customer_tag (tag_id, customer_id, since)
		SELECT ct.tag_id, p.s, ct.since
		FROM ROWS FROM (pg_catalog.unnest(survivors), pg_catalog.unnest(merged)) WITH ORDINALITY p(s, m, i)
		JOIN crm.customer_tag ct ON ct.customer_id = p.m
		JOIN crm.tag t ON t.tag_id = ct.tag_id AND t.kind = 'manual'
		ORDER BY p.i, ct.tag_id
		ON CONFLICT DO NOTHING
		RETURNING customer_id, tag_id)
	INSERT INTO crm.customer_tag_history (customer_id, tag_id, change, at)
	SELECT moved.customer_id, moved.tag_id, 'enter', crm.segmentation_now() FROM moved;
	WITH gone AS (
		DELETE FROM crm.customer_tag ct USING crm.tag t, pg_catalog.unnest(merged) u(id)
		WHERE ct.customer_id = u.id AND t.tag_id = ct.tag_id AND t.kind = 'manual'
		RETURNING ct.customer_id, ct.tag_id)
	INSERT INTO crm.customer_tag_history (customer_id, tag_id, change, at)
	SELECT gone.customer_id, gone.tag_id, 'leave', crm.segmentation_now() FROM gone;
	PERFORM crm.rebuild_customer_stats(ARRAY(SELECT DISTINCT u.c FROM pg_catalog.unnest(survivors || merged) u(c) ORDER BY 1), NULL);
END
$$;
COMMENT ON FUNCTION crm.segmentation_on_merge_set(bigint[], bigint[]) IS
	'Customer hook (merge, set_fn): moves the merged records'' manual tags to their survivors and rebuilds every record''s stats, stage and rule tags once (survivors[i] absorbed merged[i]); crm.segmentation_on_merge is its one-merge case';

-- The builtin merge hooks do many merges at once through their set_fn.
UPDATE crm.customer_hook SET set_fn = 'crm.loyalty_merge_set(bigint[], bigint[])'
WHERE builtin AND event = 'merge' AND hook = 'loyalty';
UPDATE crm.customer_hook SET set_fn = 'crm.segmentation_on_merge_set(bigint[], bigint[])'
WHERE builtin AND event = 'merge' AND hook = 'segmentation';

-- ---------------------------------------------------------------------------
-- Issue 13, defects 1, 7 and 8: a customer id at an entry point means its
-- golden customer (crm.resolve_customer, crm.lock_customer); one lock order
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.resolve_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_resolve_customer_sql';
COMMENT ON FUNCTION crm.resolve_customer(bigint) IS
	'The golden customer a customer id means now (itself when not merged; merged_into followed to its end); SQLSTATE 23503 for an unknown id';

CREATE FUNCTION crm.lock_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_lock_customer_sql';
COMMENT ON FUNCTION crm.lock_customer(bigint) IS
	'crm.resolve_customer for writers: the golden customer, locked FOR SHARE until the transaction ends, so no merge or unmerge moves it meanwhile (a merge that committed while waiting is followed); SQLSTATE 23503 for an unknown id';

COMMENT ON FUNCTION crm.fill_origin_customer() IS
	'BEFORE INSERT OR UPDATE row trigger: a NULL origin_customer_id becomes customer_id; origin_customer_id never changes afterwards, and customer_id only along the origin''s merges (to the origin or a record it is merged into, as merges, unmerges and stitching move rows; else SQLSTATE 55000); arguments: to_golden (a row inserted for a merged record goes to its golden customer, which is locked FOR SHARE first), stitch (crm.identity, with crm.stitch_on_insert on: an identifier inserted for a merged record goes to its golden customer, unlocked, unless the golden holds the same kind and value already), time=<column> (the column lies between 1900-01-01 UTC and now() + crm.max_future, SQLSTATE 22008), pattern (crm.identity: the value matches its kind''s pattern unless blocklisted, SQLSTATE 23514)';

CREATE FUNCTION crm.lock_line_orders() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_lock_line_orders';
COMMENT ON FUNCTION crm.lock_line_orders() IS
	'AFTER INSERT or UPDATE statement trigger on crm.order_line (REFERENCING NEW TABLE AS lock_new), fired before the loyalty and stats triggers: the orders of the lines must exist (23503) and those another transaction inserted are locked FOR SHARE (40001 when a merge moved one meanwhile)';
CREATE TRIGGER order_line_lock_orders AFTER INSERT ON crm.order_line
	REFERENCING NEW TABLE AS lock_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.lock_line_orders();
CREATE TRIGGER order_line_lock_orders_update AFTER UPDATE ON crm.order_line
	REFERENCING NEW TABLE AS lock_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.lock_line_orders();

CREATE OR REPLACE FUNCTION crm.loyalty_post(customer_id bigint, kind text, delta bigint, idempotency_key text,
	reason text, at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_ledger crm.loyalty_ledger;
	new_ledger crm.loyalty_ledger;
	moved crm.loyalty_ledger;
	bal bigint;
	golden bigint;
BEGIN
	bal := crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	IF bal IS NOT NULL THEN
		RETURN bal;
	END IF;
	golden := crm.lock_customer(customer_id);
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		-- a credit opens the account at the lowest tier if there is none yet
		INSERT INTO crm.loyalty_account AS a (customer_id, tier, tier_since)
		SELECT golden, t.tier, at FROM crm.tier t ORDER BY t.rank LIMIT 1
		ON CONFLICT ON CONSTRAINT loyalty_account_pkey DO NOTHING;
	END IF;
	SELECT a.ledger INTO old_ledger FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'insufficient points: 0 available, % requested', - delta USING ERRCODE = 'CR001';
	END IF;
	-- A retry may have committed while this one waited for the lock.
	bal := crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	IF bal IS NOT NULL THEN
		RETURN bal;
	END IF;
	-- Lots expired by now() (crm.loyalty_now()) are gone, whatever "at"
	-- says: a backdated redemption spends, and the balance counts, only lots
	-- valid at both.
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		new_ledger := crm.ledger_earn(old_ledger, delta, at, crm.loyalty_expires_at(at));
	ELSE
		new_ledger := crm.ledger_spend(old_ledger, - delta, GREATEST(at, crm.loyalty_now()));
	END IF;
	bal := crm.ledger_balance(new_ledger, GREATEST(at, crm.loyalty_now()));
	-- (the lots that moved are computed here, not in the INSERT: Citus
	-- evaluates both branches of a CASE there, and the other one fails)
	IF delta OPERATOR(pg_catalog.>) 0 THEN
		moved := new_ledger OPERATOR(crm.-) old_ledger;
	ELSE
		moved := old_ledger OPERATOR(crm.-) new_ledger;
	END IF;
	BEGIN
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, idempotency_key, balance_after, reason, at)
		VALUES (golden, customer_id, kind, delta, moved,
		        idempotency_key, bal, reason, at);
	EXCEPTION WHEN unique_violation THEN
		RETURN crm.loyalty_replay(idempotency_key, customer_id, kind, delta);
	END;
	UPDATE crm.loyalty_account a SET ledger = new_ledger, updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN bal;
END
$$;
COMMENT ON FUNCTION crm.loyalty_post(bigint, text, bigint, text, text, timestamptz) IS
	'Internal: the exactly-once journal entry and ledger change of crm.redeem_points (spend) and crm.adjust_points (adjust)';

CREATE OR REPLACE FUNCTION crm.points_balance(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
-- (PL/pgSQL: the account is read by its golden id, a single-shard query on
-- Citus, and the customer without one checked in a statement of its own)
AS $$
DECLARE
	golden bigint := crm.resolve_customer(points_balance.customer_id);
	points bigint;
BEGIN
	SELECT crm.ledger_balance(a.ledger, at) INTO points FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(points, crm.loyalty_no_account(customer_id));
END $$;
COMMENT ON FUNCTION crm.points_balance(bigint, timestamptz) IS
	'Points a customer can spend at "at" (default now): lots not yet expired; 0 without an account; a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE OR REPLACE FUNCTION crm.points_expiring(customer_id bigint, within interval DEFAULT '30 days',
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	golden bigint := crm.resolve_customer(points_expiring.customer_id);
	points bigint;
BEGIN
	SELECT crm.ledger_expiring(a.ledger, at, within) INTO points FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(points, crm.loyalty_no_account(customer_id));
END $$;
COMMENT ON FUNCTION crm.points_expiring(bigint, interval, timestamptz) IS
	'Points valid at "at" (default now) that expire within the interval (default 30 days); a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE OR REPLACE FUNCTION crm.qualifying_spend(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS numeric
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	golden bigint := crm.resolve_customer(qualifying_spend.customer_id);
	spend numeric(20,2);
BEGIN
	SELECT crm.spend_buckets_total(a.spend_month, a.spend_cents, at)::pg_catalog.numeric(20,2) INTO spend
	FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) golden;
	RETURN coalesce(spend, crm.loyalty_no_account(customer_id)::pg_catalog.numeric(20,2));
END $$;
COMMENT ON FUNCTION crm.qualifying_spend(bigint, timestamptz) IS
	'Rolling qualifying spend: net paid amount of the month of "at" and the 11 before it (programme time zone); a merged record''s id means its golden customer; SQLSTATE 23503 for an unknown customer';

CREATE OR REPLACE FUNCTION crm.redeem_points(customer_id bigint, points bigint, idempotency_key text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments get a clear error instead of a silent NULL.
BEGIN
	PERFORM crm.loyalty_check_args(customer_id, points, idempotency_key, at);
	IF idempotency_key IS NULL THEN
		RAISE EXCEPTION 'a redemption needs an idempotency key' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'Pass a key unique to this redemption; a retry with the same key returns the first result.';
	END IF;
	IF points OPERATOR(pg_catalog.<=) 0 THEN
		RAISE EXCEPTION 'points to redeem must be positive, not %', points USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN crm.loyalty_post(customer_id, 'spend', - points, idempotency_key, NULL, at);
END
$$;
COMMENT ON FUNCTION crm.redeem_points(bigint, bigint, text, timestamptz) IS
	'Spends points FIFO by expiry, exactly once per idempotency key; returns the balance left.  A merged record''s id spends its golden customer''s points.  CR001 insufficient points, CR002 key reused with other arguments, 23503 unknown customer';

CREATE OR REPLACE FUNCTION crm.adjust_points(customer_id bigint, points bigint, reason text,
	idempotency_key text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments get a clear error; idempotency_key may be NULL.
BEGIN
	PERFORM crm.loyalty_check_args(customer_id, points, idempotency_key, at);
	IF points OPERATOR(pg_catalog.=) 0 THEN
		RAISE EXCEPTION 'an adjustment must change the balance' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF reason IS NULL OR pg_catalog.btrim(reason) OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'an adjustment needs a reason' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'The reason is kept in crm.points_journal for audit.';
	END IF;
	RETURN crm.loyalty_post(customer_id, 'adjust', points, idempotency_key, reason, at);
END
$$;
COMMENT ON FUNCTION crm.adjust_points(bigint, bigint, text, text, timestamptz) IS
	'Audited manual correction: adds a lot (points > 0, expiring by policy) or spends FIFO (points < 0, CR001 when short) on the golden customer of the id given; journaled with reason and role; returns the balance';

CREATE OR REPLACE FUNCTION crm.loyalty_downgrade_tiers(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.loyalty_each_account('crm.loyalty_downgrade_account(timestamptz,bigint)',
		'a.tier OPERATOR(pg_catalog.<>) (SELECT t.tier FROM crm.tier t ORDER BY t.rank LIMIT 1)', at);
END
$$;
COMMENT ON FUNCTION crm.loyalty_downgrade_tiers(timestamptz) IS
	'crm.tick task: lowers tiers held at least tier_hold_months whose rolling 12-month spend at "at" no longer reaches them; returns how many changed';

CREATE OR REPLACE FUNCTION crm.customer_window(customer bigint, as_of timestamptz, width integer, OUT orders bigint, OUT spend numeric)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tz text := coalesce((SELECT s.value FROM crm.segment_setting s WHERE s.key = 'timezone'), 'UTC');
	d date := (as_of AT TIME ZONE tz)::date;
	golden bigint := crm.resolve_customer(customer);
BEGIN
	SELECT w.orders, w.spend INTO orders, spend
	FROM crm.customer_stats cs, crm.stats_window(cs.days, as_of, width) w
	WHERE cs.customer_id = golden;
	IF orders IS NULL THEN
		-- before the buckets' horizon (or no stats): count the orders themselves
		SELECT count(*), coalesce(sum(o.net_amount), 0) INTO orders, spend
		FROM crm.orders o
		WHERE o.customer_id = golden AND o.status = 'paid'
		  AND o.ordered_at >= ((d - width + 1)::timestamp AT TIME ZONE tz)
		  AND o.ordered_at < ((d + 1)::timestamp AT TIME ZONE tz);
	END IF;
	RETURN;
END
$$;
COMMENT ON FUNCTION crm.customer_window(bigint, timestamptz, integer) IS
	'Paid orders and spend of a customer (a merged record''s id means its golden customer; 23503 for an unknown id) in the "width" local days up to as_of: exact for any date (day buckets, else the orders)';

CREATE OR REPLACE FUNCTION crm.tag_customer(customer bigint, tag text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	golden bigint;
BEGIN
	SELECT k.tag_id, k.kind INTO t FROM crm.tag k WHERE k.name = tag;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tag "%" does not exist', tag USING ERRCODE = 'undefined_object';
	END IF;
	IF t.kind <> 'manual' THEN
		RAISE EXCEPTION 'tag "%" is a rule tag', tag
			USING ERRCODE = 'wrong_object_type', HINT = 'Rule tags follow their rule; create a manual tag instead.';
	END IF;
	golden := crm.lock_customer(customer);
	INSERT INTO crm.customer_tag (tag_id, customer_id, since) VALUES (t.tag_id, golden, at)
		ON CONFLICT DO NOTHING;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO crm.customer_tag_history (customer_id, tag_id, change, at) VALUES (golden, t.tag_id, 'enter', at);
	RETURN true;
END
$$;
COMMENT ON FUNCTION crm.tag_customer(bigint, text, timestamptz) IS 'Gives a customer (the golden customer of a merged record''s id) a manual tag; false if it already had it; 23503 for an unknown id';

CREATE OR REPLACE FUNCTION crm.untag_customer(customer bigint, tag text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	golden bigint;
BEGIN
	SELECT k.tag_id, k.kind INTO t FROM crm.tag k WHERE k.name = tag;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'tag "%" does not exist', tag USING ERRCODE = 'undefined_object';
	END IF;
	IF t.kind <> 'manual' THEN
		RAISE EXCEPTION 'tag "%" is a rule tag', tag
			USING ERRCODE = 'wrong_object_type', HINT = 'Rule tags follow their rule.';
	END IF;
	golden := crm.lock_customer(customer);
	DELETE FROM crm.customer_tag ct WHERE ct.tag_id = t.tag_id AND ct.customer_id = golden;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO crm.customer_tag_history (customer_id, tag_id, change, at) VALUES (golden, t.tag_id, 'leave', at);
	RETURN true;
END
$$;
COMMENT ON FUNCTION crm.untag_customer(bigint, text, timestamptz) IS 'Takes a manual tag away from a customer (the golden customer of a merged record''s id); false if they did not have it; 23503 for an unknown id';

CREATE OR REPLACE FUNCTION crm.recommend(customer_id bigint, n integer DEFAULT 5, as_of timestamptz DEFAULT pg_catalog.now(),
	recent interval DEFAULT '30 days', history interval DEFAULT '180 days')
RETURNS TABLE (sku text, confidence double precision, lift double precision, because_of text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	-- first: an unknown customer is an error, not no rows
	golden bigint := crm.resolve_customer(recommend.customer_id);
BEGIN
	-- (On Citus a line is joined to its order on customer_id too, so that
	-- the customer's shard joins its own: crm.line_join.)
	RETURN QUERY EXECUTE $q$
	WITH bought AS (
		SELECT l.sku, pg_catalog.max(o.ordered_at) AS last_at
		FROM crm.orders o
		JOIN crm.order_line l ON $q$ || crm.line_join('l', 'o') || $q$
		WHERE o.customer_id OPERATOR(pg_catalog.=) $1
		  AND o.status OPERATOR(pg_catalog.=) 'paid'
		  AND o.ordered_at OPERATOR(pg_catalog.<=) $2
		  AND o.ordered_at OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) $5)
		GROUP BY l.sku
	), candidates AS (
		SELECT DISTINCT ON (r.consequent) r.consequent, r.confidence, r.lift, r.antecedent
		FROM bought b
		JOIN crm.association_rule r ON r.antecedent OPERATOR(pg_catalog.=) b.sku
		WHERE r.lift OPERATOR(pg_catalog.>) 1
		  AND NOT EXISTS (SELECT 1 FROM bought x
		                  WHERE x.sku OPERATOR(pg_catalog.=) r.consequent
		                    AND x.last_at OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) $4))
		ORDER BY r.consequent, r.confidence DESC, r.lift DESC, r.antecedent
	)
	SELECT c.consequent, c.confidence, c.lift, c.antecedent
	FROM candidates c
	ORDER BY c.confidence DESC, c.lift DESC, c.consequent
	LIMIT GREATEST($3, 0)$q$ USING golden, recommend.as_of, recommend.n, recommend.recent, recommend.history;
END $$;
COMMENT ON FUNCTION crm.recommend(bigint, integer, timestamptz, interval, interval) IS
	'Up to n skus to suggest to a customer (a merged record''s id means its golden customer; 23503 for an unknown id): consequents of rules whose antecedent the customer bought within history before as_of, leaving out skus bought within recent; with the rule (because_of) that suggested each';

CREATE OR REPLACE FUNCTION crm.merge_goldens(a bigint, b bigint, source text, reason text, via_identity_id bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- Not STRICT: reason and via_identity_id may be NULL.
-- Merges the golden customers of records a and b.  Returns the merge_id, or
-- NULL when they are one customer already or (source online/batch) when a
-- single-valued kind conflicts, which is written to crm.identity_review.
-- source 'manual' raises CR004 instead of returning NULL.
DECLARE
	ga bigint;
	gb bigint;
	s bigint;
	m bigint;
	mem bigint[];
	survivor_records bigint[];
	chained bigint[];
	middle bigint;
	conflict text;
	via_kind text;
	n_orders bigint;
	n_events bigint;
	n_ids bigint;
	n_parked bigint;
	mid bigint;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	IF a IS NULL OR b IS NULL OR source IS NULL THEN
		RAISE EXCEPTION 'merging needs two customer ids'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	LOOP
		-- Both sides resolve to their golden customers: merged_into is
		-- followed to its end, so even a chain left by an older release
		-- (a record merged into a record that was merged later) is merged
		-- golden into golden, never a merged record into another one.
		ga := crm.golden_customer(a);
		gb := crm.golden_customer(b);
		IF ga IS NULL OR gb IS NULL THEN
			RAISE EXCEPTION 'merge refused: customer % does not exist', CASE WHEN ga IS NULL THEN a ELSE b END
				USING ERRCODE = 'CR004';
		END IF;
		IF ga = gb THEN
			IF source = 'manual' THEN
				RAISE EXCEPTION 'merge refused: customers % and % are already one customer (%)', a, b, ga
					USING ERRCODE = 'CR004';
			END IF;
			RETURN NULL;
		END IF;
		-- Lock both golden records in id order (DEVELOPER.md, "Lock order"),
		-- so A->B and B->A at once wait for each other instead of
		-- deadlocking.  FOR NO KEY UPDATE does not block the foreign-key
		-- checks of concurrent inserts.  Another session may have merged or
		-- unmerged a record of theirs while we waited: a and b must still
		-- resolve to the goldens locked (then nobody can change that until
		-- we commit), else the locks are given back (the subtransaction
		-- rolls back: a lock kept on a customer that is no longer golden
		-- would take the next ones out of order) and both sides resolve again.
		BEGIN
			PERFORM crm.lock_rows('crm.customer', ARRAY[ga, gb], 'NO KEY UPDATE');
			IF crm.golden_customer(a) = ga AND crm.golden_customer(b) = gb THEN
				EXIT;
			END IF;
			RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			NULL;
		END;
	END LOOP;

	IF EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id IN (ga, gb) AND c.forgotten_at IS NOT NULL) THEN
		IF source <> 'manual' THEN
			RETURN NULL;	-- stitching leaves forgotten customers alone
		END IF;
		RAISE EXCEPTION 'merge refused: a forgotten customer cannot be merged'
			USING ERRCODE = 'CR004';
	END IF;

	-- The survivor is the oldest golden record (created_at, then id).
	SELECT c.customer_id INTO s FROM crm.customer c WHERE c.customer_id IN (ga, gb)
	ORDER BY c.created_at, c.customer_id LIMIT 1;
	m := CASE WHEN s = ga THEN gb ELSE ga END;

	-- The merged golden and every record under it (all of them point at m;
	-- records chained below one of them by an older release too) move
	-- under the survivor, so no record ends up merged into a merged one.
	mem := crm.records_under(m);
	IF source <> 'manual' THEN
		-- A pair a person kept apart (or an unmerge separated) stays apart:
		-- any record of one golden against any record of the other.
		survivor_records := crm.records_under(s);
		IF EXISTS (SELECT 1 FROM crm.identity_review r
		           WHERE r.resolution = 'kept_apart'
		             AND ((r.customer_a = ANY (survivor_records) AND r.customer_b = ANY (mem))
		               OR (r.customer_a = ANY (mem) AND r.customer_b = ANY (survivor_records)))) THEN
			RETURN NULL;
		END IF;
		-- Two different values of a single-valued kind mean two people: a
		-- kind both hold with more than one value between them.
		SELECT x.kind INTO conflict
		FROM (SELECT i.kind, i.value, i.customer_id FROM crm.identity i WHERE i.customer_id IN (s, m)) x
		JOIN crm.identity_kind k ON k.kind = x.kind AND k.single_valued
		GROUP BY x.kind
		HAVING pg_catalog.bool_or(x.customer_id = s) AND pg_catalog.bool_or(x.customer_id = m)
		   AND pg_catalog.count(DISTINCT x.value) > 1
		ORDER BY x.kind LIMIT 1;
		IF conflict IS NOT NULL THEN
			SELECT i.kind INTO via_kind FROM crm.identity i WHERE i.identity_id = via_identity_id;
			INSERT INTO crm.identity_review (customer_a, customer_b, conflict_kind, via_kind, source)
			VALUES (LEAST(s, m), GREATEST(s, m), conflict, via_kind, source)
			ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
			RETURN NULL;
		END IF;
	END IF;

	-- Members other records were merged into (only a chain left by an older
	-- release has them): their points, stats and tags follow below.
	chained := ARRAY(SELECT DISTINCT c.merged_into FROM crm.customer c
	                 WHERE c.merged_into = ANY (mem) AND c.merged_into <> m
	                 ORDER BY 1);
	UPDATE crm.customer c SET merged_into = s WHERE c.customer_id = ANY (mem);

	-- Core rows of every member (strays inserted for a merged-away record
	-- included) move to the survivor; identifiers the survivor holds
	-- already stay parked on m.
	n_orders := crm.move_customer_rows('crm.orders', s, 't.customer_id = ANY ($2)', mem);
	n_events := crm.move_customer_rows('crm.event', s, 't.customer_id = ANY ($2)', mem);
	n_ids := crm.move_customer_rows('crm.identity', s,
		't.customer_id = $2[1] AND (t.kind, t.value) NOT IN (SELECT d.kind, d.value FROM crm.identity d WHERE d.customer_id = $1)',
		ARRAY[m]);
	SELECT pg_catalog.count(*) INTO n_parked FROM crm.identity i WHERE i.customer_id = m;

	INSERT INTO crm.merge_log (survivor, merged, members, source, reason, via_identity_id,
	                           orders_moved, events_moved, identities_moved, identities_parked)
	VALUES (s, m, mem, source, reason, via_identity_id, n_orders, n_events, n_ids, n_parked)
	RETURNING merge_id INTO mid;

	-- Features with per-customer state (points, stats, tags) move theirs.
	PERFORM crm.run_customer_hooks('merge', s, m);
	FOREACH middle IN ARRAY chained LOOP
		PERFORM crm.run_customer_hooks('merge', s, middle);
	END LOOP;
	RETURN mid;
END
$$;
COMMENT ON FUNCTION crm.merge_goldens(bigint, bigint, text, text, bigint) IS
	'Merges the golden customers of two records (the oldest survives), moves their rows, logs the merge and runs the merge hooks; used by crm.merge_customers and stitching';

CREATE OR REPLACE FUNCTION crm.merge_customers(a bigint, b bigint, reason text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: reason may be NULL; NULL ids raise an error.
BEGIN
	IF a IS NULL OR b IS NULL THEN
		RAISE EXCEPTION 'crm.merge_customers needs two customer ids'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF a = b THEN
		RAISE EXCEPTION 'merge refused: a customer cannot be merged with itself'
			USING ERRCODE = 'CR004';
	END IF;
	-- an unknown id is 23503, as at every entry point
	PERFORM crm.resolve_customer(a), crm.resolve_customer(b);
	RETURN crm.merge_goldens(a, b, 'manual', reason, NULL);
END
$$;
COMMENT ON FUNCTION crm.merge_customers(bigint, bigint, text) IS
	'Merges the golden customers of records a and b by hand (the oldest survives) and returns the merge_id; refused with CR004 when they are one customer already, 23503 for an unknown id';

CREATE OR REPLACE FUNCTION crm.stitch_identities(OUT merges bigint, OUT reviews bigint, OUT rows_redirected bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- No arguments.  Builds the identity graph with crm.id_merge_agg and merges
-- every component's golden customers into its oldest one, under the same
-- policies as online stitching.  Idempotent: a second run merges nothing.
DECLARE
	graph crm.id_merge;
	comp record;
	h bigint;
	reviews_before bigint;
	n bigint;
	chained bigint[];
	strays bigint[];
	g bigint;
	citus boolean := crm.on_citus();
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	merges := 0;
	rows_redirected := 0;
	SELECT pg_catalog.count(*) INTO reviews_before FROM crm.identity_review;

	-- Chains an older release left (a record merged into a record that was
	-- merged later, as 0.1.0's batch stitching made after manual merges):
	-- every record points at its golden again; the middle records' rows
	-- follow with the strays below, then the merge hooks move the points,
	-- stats and tags they still hold to the golden.
	chained := ARRAY(SELECT DISTINCT c.merged_into FROM crm.customer c
	                 WHERE c.merged_into IN (SELECT p.customer_id FROM crm.customer p WHERE p.merged_into IS NOT NULL)
	                 ORDER BY 1);
	IF chained <> '{}' THEN
		PERFORM crm.lock_rows('crm.customer', chained || ARRAY(SELECT crm.golden_customer(u.id) FROM pg_catalog.unnest(chained) u(id)), 'NO KEY UPDATE');
		FOREACH h IN ARRAY chained LOOP
			g := crm.golden_customer(h);
			UPDATE crm.customer c SET merged_into = g WHERE c.merged_into = h;
		END LOOP;
	END IF;

	-- Rows left on records that were merged away (loaded with the origin
	-- trigger off) go to their golden; the merge hooks below move what
	-- they brought (points, stats, tags), as for the middle records.
	IF citus THEN
		SELECT x.moved, x.records INTO rows_redirected, strays FROM crm.stitch_strays_by_record() x;
	ELSE
	WITH u AS (UPDATE crm.orders o SET customer_id = c.merged_into
	           FROM crm.customer c WHERE c.merged_into IS NOT NULL AND o.customer_id = c.customer_id
	           RETURNING c.customer_id AS rec)
	SELECT pg_catalog.count(*), pg_catalog.array_agg(DISTINCT u.rec) INTO n, strays FROM u;
	rows_redirected := rows_redirected + n;
	WITH u AS (UPDATE crm.event e SET customer_id = c.merged_into
	           FROM crm.customer c WHERE c.merged_into IS NOT NULL AND e.customer_id = c.customer_id
	           RETURNING c.customer_id AS rec)
	SELECT pg_catalog.count(*), coalesce(strays, '{}') || coalesce(pg_catalog.array_agg(DISTINCT u.rec), '{}') INTO n, strays FROM u;
	rows_redirected := rows_redirected + n;
	-- identities too, unless the golden holds the value (then they are
	-- parked duplicates and stay); of several records of one golden that
	-- hold the same stray value, the lowest identity_id moves and the
	-- others stay parked on their records (unmerge finds them there).
	WITH cand AS (
		SELECT i.identity_id, c.merged_into AS golden,
		       pg_catalog.row_number() OVER (PARTITION BY i.kind, i.value, c.merged_into ORDER BY i.identity_id) AS rn
		FROM crm.identity i JOIN crm.customer c ON i.customer_id = c.customer_id
		WHERE c.merged_into IS NOT NULL
		  AND NOT EXISTS (SELECT 1 FROM crm.identity d
		                  WHERE d.kind = i.kind AND d.value = i.value AND d.customer_id = c.merged_into)
	)
	UPDATE crm.identity i SET customer_id = x.golden
	FROM cand x
	WHERE i.identity_id = x.identity_id AND x.rn = 1;
	GET DIAGNOSTICS n = ROW_COUNT;
	rows_redirected := rows_redirected + n;
	END IF;
	-- the middle records of chains and the records whose strays moved
	chained := ARRAY(SELECT DISTINCT x.id FROM pg_catalog.unnest(chained || strays) x(id) ORDER BY 1);
	PERFORM crm.run_merge_hooks(ARRAY(SELECT crm.golden_customer(u.h) FROM pg_catalog.unnest(chained) WITH ORDINALITY u(h, i) ORDER BY u.i),
	                               chained);

	graph := crm.identity_graph();
	PERFORM crm.stitch_review_hubs();
	CREATE TEMP TABLE crm_stitch_golden ON COMMIT DROP AS SELECT * FROM crm.stitch_goldens(graph);
	ANALYZE crm_stitch_golden;

	-- Components that need the careful path, merge by merge: a single-valued
	-- kind with two values among its goldens, or a pair kept apart.
	CREATE TEMP TABLE crm_stitch_pair ON COMMIT DROP AS
	SELECT g.comp, s.cust AS survivor, g.cust AS merged, g.rn, false AS careful
	FROM crm_stitch_golden g JOIN crm_stitch_golden s ON s.comp = g.comp AND s.rn = 1
	WHERE g.rn > 1
	  AND g.comp NOT IN (
		SELECT x.comp FROM crm_stitch_golden x
		JOIN crm.identity i ON i.customer_id = x.cust
		JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
		GROUP BY x.comp, i.kind HAVING pg_catalog.count(DISTINCT i.value) > 1
		UNION
		SELECT x.comp FROM crm.kept_apart_goldens() r
		JOIN crm_stitch_golden x ON x.cust = r.golden_a
		JOIN crm_stitch_golden y ON y.cust = r.golden_b AND y.comp = x.comp);
	-- The careful components are decided as merging their goldens one by
	-- one would decide (crm.stitch_plan_component), then merged with the
	-- others in one step; their reviews are written once they are locked.
	CREATE TEMP TABLE crm_stitch_careful ON COMMIT DROP AS
	SELECT g.comp, d.rn + 1 AS rn, d.golden, d.decision, d.conflict_kind
	FROM (SELECT x.comp, pg_catalog.array_agg(x.cust ORDER BY x.rn) AS goldens
	      FROM crm_stitch_golden x WHERE x.comp NOT IN (SELECT p.comp FROM crm_stitch_pair p)
	      GROUP BY x.comp) g,
	     LATERAL crm.stitch_plan_component(g.goldens) WITH ORDINALITY d(golden, decision, conflict_kind, rn);
	INSERT INTO crm_stitch_pair (comp, survivor, merged, rn, careful)
	SELECT c.comp, s.cust, c.golden, c.rn, true
	FROM crm_stitch_careful c JOIN crm_stitch_golden s ON s.comp = c.comp AND s.rn = 1
	WHERE c.decision = 'merge';
	ANALYZE crm_stitch_pair;

	-- The fast path, set-based: lock every golden involved in id order,
	-- drop components a concurrent merge changed meanwhile (the careful
	-- path takes them), then move everything in one statement per table.
	PERFORM crm.lock_rows('crm.customer', ARRAY(SELECT p.survivor FROM crm_stitch_pair p UNION SELECT p.merged FROM crm_stitch_pair p), 'NO KEY UPDATE');
	WITH changed AS (
		DELETE FROM crm_stitch_pair p WHERE p.comp IN (
			SELECT q.comp FROM crm_stitch_pair q JOIN crm.customer c ON c.customer_id = q.survivor WHERE c.merged_into IS NOT NULL
			UNION
			SELECT q.comp FROM crm_stitch_pair q JOIN crm.customer c ON c.customer_id = q.merged WHERE c.merged_into IS NOT NULL)
		RETURNING p.comp)
	DELETE FROM crm_stitch_careful c WHERE c.comp IN (SELECT changed.comp FROM changed);
	INSERT INTO crm.identity_review (customer_a, customer_b, conflict_kind, source)
	SELECT LEAST(s.cust, c.golden), GREATEST(s.cust, c.golden), c.conflict_kind, 'batch'
	FROM crm_stitch_careful c JOIN crm_stitch_golden s ON s.comp = c.comp AND s.rn = 1
	WHERE c.decision = 'review'
	ORDER BY c.comp, c.rn
	ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
	CREATE TEMP TABLE crm_stitch_member ON COMMIT DROP AS
	SELECT p.survivor, p.merged, p.merged AS member FROM crm_stitch_pair p
	UNION ALL
	SELECT p.survivor, p.merged, c.customer_id FROM crm_stitch_pair p JOIN crm.customer c ON c.merged_into = p.merged;
	CREATE TEMP TABLE crm_stitch_count (what text, merged bigint, cnt bigint) ON COMMIT DROP;
	ANALYZE crm_stitch_member;

	UPDATE crm.customer c SET merged_into = m.survivor FROM crm_stitch_member m WHERE c.customer_id = m.member;
	IF citus THEN
		-- rows change shards: moved merged golden by merged golden
		INSERT INTO crm_stitch_count SELECT * FROM crm.stitch_move_by_merged();
	ELSE
	WITH u AS (UPDATE crm.orders o SET customer_id = m.survivor FROM crm_stitch_member m
	           WHERE o.customer_id = m.member RETURNING m.merged)
	INSERT INTO crm_stitch_count SELECT 'orders', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	WITH u AS (UPDATE crm.event e SET customer_id = m.survivor FROM crm_stitch_member m
	           WHERE e.customer_id = m.member RETURNING m.merged)
	INSERT INTO crm_stitch_count SELECT 'events', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	-- Identities of each merged golden move unless the survivor holds the
	-- value already, or another merged golden of the component moves the
	-- same value in this pass (the lowest identity_id moves, the rest stay).
	WITH cand AS (
		SELECT i.identity_id, p.survivor, p.merged,
		       pg_catalog.row_number() OVER (PARTITION BY i.kind, i.value, p.survivor ORDER BY i.identity_id) AS rn
		FROM crm.identity i JOIN crm_stitch_pair p ON i.customer_id = p.merged
		WHERE NOT EXISTS (SELECT 1 FROM crm.identity d
		                  WHERE d.kind = i.kind AND d.value = i.value AND d.customer_id = p.survivor)
	), u AS (
		UPDATE crm.identity i SET customer_id = c.survivor FROM cand c
		WHERE i.identity_id = c.identity_id AND c.rn = 1 RETURNING c.merged
	)
	INSERT INTO crm_stitch_count SELECT 'identities', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	END IF;
	INSERT INTO crm_stitch_count
	SELECT 'parked', i.customer_id, pg_catalog.count(*) FROM crm.identity i
	WHERE i.customer_id IN (SELECT p.merged FROM crm_stitch_pair p) GROUP BY i.customer_id;

	INSERT INTO crm.merge_log (survivor, merged, members, source, reason,
	                           orders_moved, events_moved, identities_moved, identities_parked)
	SELECT p.survivor, p.merged, mm.members, 'batch', 'batch stitching',
	       COALESCE(k.orders, 0), COALESCE(k.events, 0), COALESCE(k.identities, 0), COALESCE(k.parked, 0)
	FROM crm_stitch_pair p
	JOIN (SELECT m.merged, pg_catalog.array_agg(m.member ORDER BY m.member) AS members
	      FROM crm_stitch_member m GROUP BY m.merged) mm ON mm.merged = p.merged
	LEFT JOIN (SELECT c.merged,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'orders') AS orders,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'events') AS events,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'identities') AS identities,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'parked') AS parked
	           FROM crm_stitch_count c GROUP BY c.merged) k ON k.merged = p.merged
	ORDER BY p.careful, p.comp, p.rn;
	GET DIAGNOSTICS n = ROW_COUNT;
	merges := merges + n;
	-- The features move their state for all these merges at once (a hook's
	-- set_fn makes that one pass over its rows, however large a component).
	PERFORM crm.run_merge_hooks(ARRAY(SELECT p.survivor FROM crm_stitch_pair p ORDER BY p.careful, p.comp, p.rn),
	                            ARRAY(SELECT p.merged FROM crm_stitch_pair p ORDER BY p.careful, p.comp, p.rn));

	-- Components a concurrent merge changed meanwhile: merge by merge,
	-- under crm.merge_goldens' checks (reviews, kept-apart pairs).
	FOR comp IN
		SELECT g.comp, pg_catalog.array_agg(g.cust ORDER BY g.rn) AS goldens
		FROM crm_stitch_golden g
		WHERE g.comp NOT IN (SELECT p.comp FROM crm_stitch_pair p)
		  AND g.comp NOT IN (SELECT c.comp FROM crm_stitch_careful c)
		GROUP BY g.comp ORDER BY g.comp
	LOOP
		FOREACH h IN ARRAY comp.goldens[2:] LOOP
			IF crm.merge_goldens(comp.goldens[1], h, 'batch', 'batch stitching', NULL) IS NOT NULL THEN
				merges := merges + 1;
			END IF;
		END LOOP;
	END LOOP;
	DROP TABLE pg_temp.crm_stitch_golden, pg_temp.crm_stitch_pair, pg_temp.crm_stitch_careful, pg_temp.crm_stitch_member,
	           pg_temp.crm_stitch_count;
	SELECT pg_catalog.count(*) - reviews_before INTO reviews FROM crm.identity_review;
END
$$;
COMMENT ON FUNCTION crm.stitch_identities() IS
	'Batch stitching: merges every component of crm.identity_graph() into its oldest golden customer under the kinds'' policies; idempotent; reports merges, new reviews and stray rows redirected';

CREATE OR REPLACE FUNCTION crm.unmerge(merge_id bigint, cascade boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: a NULL merge_id or cascade raises an error.
-- Undoes one merge, selectively: the merged record and the records under it
-- (merged into it by merges not undone, crm.unmerge_subtree) leave the
-- golden customer they are in now with exactly the rows that arrived on
-- them (origin_customer_id), also rows added since; the golden keeps
-- everything else, so merges made later stay as they are.  cascade undoes
-- the later merges of the same customers first, newest first.  Returns the
-- number of merges undone.
DECLARE
	l crm.merge_log;
	later bigint;
	n bigint := 0;
	who bigint[];
	g bigint;
	sub bigint[];
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	IF merge_id IS NULL THEN
		RAISE EXCEPTION 'crm.unmerge needs a merge_id'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF cascade IS NULL THEN
		RAISE EXCEPTION 'cascade of crm.unmerge must be true or false, not NULL'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Leave it out (false) to undo this merge alone, or pass cascade => true to undo the later merges of the same customers too.';
	END IF;
	SELECT * INTO l FROM crm.merge_log ml WHERE ml.merge_id = unmerge.merge_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unmerge refused: merge % does not exist', merge_id
			USING ERRCODE = 'CR004',
			      HINT = 'crm.merge_log lists every merge; a merged record''s merge is the row whose merged is that record and undone_at is NULL.';
	END IF;
	IF l.undone_at IS NOT NULL THEN
		RAISE EXCEPTION 'unmerge refused: merge % was already undone', merge_id
			USING ERRCODE = 'CR004',
			      HINT = 'crm.merge_log.undone_at and undone_by say when and by whom; crm.merge_customers merges the customers again.';
	END IF;

	IF cascade THEN
		who := l.members || l.survivor;
		FOR later IN
			SELECT ml.merge_id FROM crm.merge_log ml
			WHERE ml.merge_id > l.merge_id AND ml.undone_at IS NULL
			  AND (ml.survivor = ANY (who) OR ml.merged = ANY (who))
			ORDER BY ml.merge_id DESC
		LOOP
			-- an earlier iteration may have undone it already
			IF (SELECT ml.undone_at IS NULL FROM crm.merge_log ml WHERE ml.merge_id = later) THEN
				n := n + crm.unmerge(later, true);
			END IF;
		END LOOP;
	END IF;

	-- The golden customer the merged record is in now (the survivor, or
	-- whoever the survivor was merged into since), then the merged record
	-- (a golden's records after the golden: DEVELOPER.md, "Lock order"); a
	-- merge that moved them meanwhile is followed, its locks given back as
	-- in crm.merge_goldens.
	LOOP
		g := crm.golden_customer(l.merged);
		IF g = l.merged THEN
			RAISE EXCEPTION 'unmerge refused: merge % is not undone, but customer % is not merged', l.merge_id, l.merged
				USING ERRCODE = 'CR004',
				      HINT = 'crm.merge_log and crm.customer.merged_into disagree: crm.verify() lists such records.';
		END IF;
		BEGIN
			PERFORM 1 FROM crm.customer c WHERE c.customer_id = g FOR NO KEY UPDATE;
			PERFORM 1 FROM crm.customer c WHERE c.customer_id = l.merged FOR NO KEY UPDATE;
			IF crm.golden_customer(l.merged) = g THEN
				EXIT;
			END IF;
			RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			NULL;
		END;
	END LOOP;
	sub := crm.unmerge_subtree(l.merge_id);

	UPDATE crm.customer c
	SET merged_into = CASE WHEN c.customer_id = l.merged THEN NULL ELSE l.merged END
	WHERE c.customer_id = ANY (sub);
	-- Every row that arrived on one of these records goes back (attribution
	-- by origin_customer_id, also for rows added since the merge); the
	-- golden keeps the rows of its other records.
	PERFORM crm.move_customer_rows(x.tbl, l.merged, 't.customer_id = $2[1] AND t.origin_customer_id = ANY ($3)', ARRAY[g], sub)
	FROM (VALUES ('crm.orders'::regclass), ('crm.event'), ('crm.identity')) x(tbl);
	-- An identity parked on a record of either side because its golden held
	-- the same value, from a record that just went to the other side, moves
	-- up to its golden now (the lowest identity_id of a value; the rest stay
	-- parked), as batch stitching moves stray identities.
	PERFORM crm.identities_to_golden(g), crm.identities_to_golden(l.merged);

	UPDATE crm.merge_log x SET undone_at = pg_catalog.now(), undone_by = CURRENT_USER
	WHERE x.merge_id = l.merge_id;
	-- Stitching must not merge the pair a person separated again: only
	-- that pair is kept apart (delete the row to let stitching decide
	-- again), never the golden's other records.
	UPDATE crm.identity_review r SET resolved_at = pg_catalog.now(), resolution = 'kept_apart', merge_id = l.merge_id
	WHERE r.customer_a = LEAST(l.survivor, l.merged) AND r.customer_b = GREATEST(l.survivor, l.merged) AND r.resolved_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO crm.identity_review (customer_a, customer_b, source, merge_id, resolved_at, resolution)
		VALUES (LEAST(l.survivor, l.merged), GREATEST(l.survivor, l.merged), 'unmerge', l.merge_id, pg_catalog.now(), 'kept_apart');
	END IF;
	-- Points, stats and tags: the hooks see the golden and the record restored.
	PERFORM crm.run_customer_hooks('unmerge', g, l.merged);
	RETURN n + 1;
END
$$;
COMMENT ON FUNCTION crm.unmerge(bigint, boolean) IS
	'Undoes one merge selectively: the merged record and the records merged into it leave their golden customer with exactly the rows and points that arrived on them, later merges stay; the unmerge hooks run and only the pair separated is kept apart; cascade => true undoes the later merges of the same customers first; returns the merges undone';
-- end of issue 13, defects 1, 7 and 8

-- Hubs: a strong identifier held by more records than plausible for one
-- person links nobody; stitching sends its holders to review.
ALTER TABLE crm.identity_kind ADD COLUMN max_holders integer NOT NULL DEFAULT 20
	CONSTRAINT identity_kind_max_holders_valid CHECK (max_holders >= 2);
COMMENT ON COLUMN crm.identity_kind.max_holders IS 'For strong kinds: a value held by more customer records than this (a shop''s phone, a junk number) is a hub: it links none of them and stitching puts its holders in the review queue';
COMMENT ON TABLE crm.identity_review IS
	'Pairs of customers stitching will not merge: linked by an identifier but holding different values of a single-valued kind (two member numbers), or sharing a hub (a strong identifier held by more records than its kind''s max_holders), waiting for a person to decide; and pairs kept apart (resolution kept_apart, e.g. by crm.unmerge), which stitching never merges again';
COMMENT ON COLUMN crm.identity_review.conflict_kind IS 'The single-valued kind both customers hold with different values (NULL for a hub pair or a pair an unmerge separated)';
COMMENT ON COLUMN crm.identity_review.via_kind IS 'The kind of the shared identifier that linked them (NULL from batch stitching, except for a hub pair: the hub''s kind)';
CREATE INDEX identity_review_pair_idx ON crm.identity_review (customer_a, customer_b);

CREATE FUNCTION crm.identity_is_hub(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_is_hub_sql';
COMMENT ON FUNCTION crm.identity_is_hub(text, text) IS
	'The identity link policy''s hubs: true when a strong kind''s value is held by more records of crm.identity than the kind''s max_holders (and not blocklisted); a hub links nobody, stitching sends its holders to review';

CREATE FUNCTION crm.identity_is_hub(kind text, value text, holders bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_is_hub_sql';
COMMENT ON FUNCTION crm.identity_is_hub(text, text, bigint) IS
	'crm.identity_is_hub for a value held by the given number of customer records (batch stitching counts them itself); holders must not be negative';

CREATE FUNCTION crm.identity_review_hub(kind text, value text, source text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- A hub (crm.identity_is_hub) links nobody: every golden customer holding
-- the value goes to the review queue beside the oldest golden holding it
-- (conflict_kind NULL, via_kind the hub's kind), unless the pair has a
-- review already (open or decided).  Online and batch stitching both call
-- this.  Returns the rows added.
DECLARE
	n bigint;
BEGIN
	WITH holder AS (
		SELECT DISTINCT COALESCE(c.merged_into, c.customer_id) AS g
		FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		WHERE i.kind = identity_review_hub.kind AND i.value = identity_review_hub.value
	), ranked AS (
		SELECT h.g, pg_catalog.first_value(h.g) OVER (ORDER BY c.created_at, c.customer_id) AS anchor
		FROM holder h JOIN crm.customer c ON c.customer_id = h.g
		WHERE c.forgotten_at IS NULL
	)
	INSERT INTO crm.identity_review (customer_a, customer_b, via_kind, source)
	SELECT LEAST(r.anchor, r.g), GREATEST(r.anchor, r.g), identity_review_hub.kind, identity_review_hub.source
	FROM ranked r
	WHERE r.g <> r.anchor
	  AND NOT EXISTS (SELECT 1 FROM crm.identity_review x
	                  WHERE x.customer_a = LEAST(r.anchor, r.g) AND x.customer_b = GREATEST(r.anchor, r.g))
	ORDER BY r.g
	ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.identity_review_hub(text, text, text) IS
	'Internal: puts the golden customers holding a hub value (crm.identity_is_hub) in the review queue beside the oldest one, once per pair; returns the rows added';

CREATE FUNCTION crm.stitch_plan_component(goldens bigint[], OUT golden bigint, OUT decision text, OUT conflict_kind text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
-- What crm.merge_goldens would decide, merging goldens[2:] one by one into
-- goldens[1] (batch stitching's careful components), without merging: one
-- row per golden, in order: 'merge'; 'kept_apart' (a review kept it apart
-- from the survivor or from a golden merged before it); or 'review' (it
-- holds another value of a single-valued kind than the survivor holds by
-- then; conflict_kind names the first such kind).
DECLARE
	merged_so_far bigint[] := goldens[1:1];
	held_kind text[];
	held_value text[];
	kept_a bigint[];
	kept_b bigint[];
	h bigint;
BEGIN
	-- the survivor's single-valued identifiers; the pairs kept apart
	-- within the component (by the goldens their records have now)
	SELECT pg_catalog.array_agg(i.kind), pg_catalog.array_agg(i.value) INTO held_kind, held_value
	FROM crm.identity i JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
	WHERE i.customer_id = goldens[1];
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	SELECT pg_catalog.array_agg(x.golden_a), pg_catalog.array_agg(x.golden_b) INTO kept_a, kept_b
	FROM crm.kept_apart_goldens() x
	WHERE x.golden_a = ANY (goldens) AND x.golden_b = ANY (goldens);
	FOREACH h IN ARRAY goldens[2:] LOOP
		golden := h;
		conflict_kind := NULL;
		IF EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest(kept_a), pg_catalog.unnest(kept_b)) k(a, b)
		           WHERE (k.a = h AND k.b = ANY (merged_so_far)) OR (k.b = h AND k.a = ANY (merged_so_far))) THEN
			decision := 'kept_apart';
		ELSE
			SELECT pg_catalog.min(i.kind) INTO conflict_kind
			FROM crm.identity i
			JOIN ROWS FROM (pg_catalog.unnest(held_kind), pg_catalog.unnest(held_value)) v(kind, value)
			  ON v.kind = i.kind AND v.value <> i.value
			WHERE i.customer_id = h;
			IF conflict_kind IS NOT NULL THEN
				decision := 'review';
			ELSE
				decision := 'merge';
				merged_so_far := merged_so_far || h;
				SELECT held_kind || pg_catalog.array_agg(i.kind), held_value || pg_catalog.array_agg(i.value)
				INTO held_kind, held_value
				FROM crm.identity i JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
				WHERE i.customer_id = h;
			END IF;
		END IF;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.stitch_plan_component(bigint[]) IS
	'Internal: the decisions (merge, kept_apart, review with the conflicting kind) crm.merge_goldens would make merging goldens[2:] one by one into goldens[1], without merging; batch stitching merges a careful component by them in one step';

CREATE OR REPLACE FUNCTION crm.segmentation_on_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- One merge is the set form's smallest case (one owner of the rules).
	PERFORM crm.segmentation_on_merge_set(ARRAY[survivor], ARRAY[merged]);
END
$$;
COMMENT ON FUNCTION crm.segmentation_on_merge(bigint, bigint) IS
	'Customer hook (merge): moves manual tags to the survivor and rebuilds stats, stage and rule tags of both records from their orders';

CREATE OR REPLACE FUNCTION crm.loyalty_ensure_account(customer_id bigint, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- PL/pgSQL, not SQL: its plan is kept per session (every merge calls it).
	INSERT INTO crm.loyalty_account (customer_id, tier, tier_since)
	SELECT loyalty_ensure_account.customer_id, t.tier, loyalty_ensure_account.at FROM crm.tier t ORDER BY t.rank LIMIT 1
	ON CONFLICT ON CONSTRAINT loyalty_account_pkey DO NOTHING;
END
$$;
COMMENT ON FUNCTION crm.loyalty_ensure_account(bigint, timestamptz) IS
	'Internal: creates a customer''s account at the lowest tier when it has none';

-- crm.customer_stats_expected: what a stats rebuild would write, unwritten (for crm.verify).
CREATE FUNCTION crm.customer_stats_expected(customers bigint[] DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (customer_id bigint, orders integer, refunded_orders integer, spend numeric,
	first_order_at timestamptz, last_order_at timestamptz, mean_interval_days double precision,
	weekday_orders integer[], events integer, last_event_at timestamptz, days bytea, categories bytea,
	line_spend numeric, stage text, rule_tags integer[])
	LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'crm_customer_stats_expected';
COMMENT ON FUNCTION crm.customer_stats_expected(bigint[], timestamptz) IS
	'What crm.rebuild_customer_stats(customers, at) would write, computed by the same code but neither written nor locked: the stats row, stage and rule tags (tag_ids) of each golden customer with orders or events; crm.verify compares it with the tables. Not STRICT: NULLs are defaults';

-- crm.verify: every cross-feature invariant in one check (src/verify/verify.sql).
CREATE FUNCTION crm.verify(at timestamptz DEFAULT NULL)
RETURNS TABLE (invariant text, customer_id bigint, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- Whole tables are compared: hash joins, whatever the statistics say.  A
-- table vacuumed while it held only dead rows (reltuples 0, relpages > 0)
-- looks empty to the planner however many rows it holds now, and a nested
-- loop over two such tables took minutes in the test suite.  No JIT: the
-- cost of a disabled nested loop (the lateral function scans keep theirs)
-- would compile every call.
SET enable_nestloop = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
PERFORM crm.refuse_on_citus('crm.verify()');
RETURN QUERY
-- Not STRICT: at NULL (the default) checks what holds at any time; a time
-- also checks what crm.tick(at) leaves behind (stages, time-dependent rule
-- tags, tiers held past the hold lowered).
WITH
-- What crm.rebuild_customer_stats would write (the stats triggers' code),
-- for every customer that has or should have stats or rule tags.
expected AS MATERIALIZED (
	SELECT * FROM crm.customer_stats_expected(
		ARRAY(SELECT s.customer_id FROM crm.customer_stats s UNION SELECT o.customer_id FROM crm.orders o
		      UNION SELECT e.customer_id FROM crm.event e UNION SELECT ct.customer_id FROM crm.customer_tag ct),
		COALESCE(verify.at, crm.segmentation_now()))),
-- The rule tags checked: enabled ones; time-dependent ones only as of "at".
rule_tag AS MATERIALIZED (
	SELECT t.tag_id, t.name FROM crm.tag t
	WHERE t.kind = 'rule' AND t.enabled AND (verify.at IS NOT NULL OR NOT t.time_dependent)),
-- Each account's buckets against buckets rebuilt from its orders (crm.spend_buckets, the rule's owner).
spend AS (
	SELECT a.customer_id, a.spend_month, a.spend_cents, b.spend_month AS o_month, b.spend_cents AS o_cents
	FROM crm.loyalty_account a
	LEFT JOIN (SELECT o.customer_id, pg_catalog.array_agg(o.ordered_at) AS ordered_at,
	                  pg_catalog.array_agg(o.net_amount) AS net_amount
	           FROM crm.orders o GROUP BY o.customer_id) o ON o.customer_id = a.customer_id,
	LATERAL crm.spend_buckets(COALESCE(o.ordered_at, '{}'), COALESCE(o.net_amount, '{}')) b),
-- Compared as of now and as of the newer of the two newest months (a
-- timestamp in the middle of that month in the programme time zone).
spend_at AS (
	SELECT s.*, x.as_of,
	       crm.spend_buckets_total(s.spend_month, s.spend_cents, x.as_of) AS account_total,
	       crm.spend_buckets_total(s.o_month, s.o_cents, x.as_of) AS orders_total
	FROM spend s,
	LATERAL (SELECT now() AS as_of
	         UNION ALL
	         SELECT make_timestamptz(GREATEST(s.spend_month, s.o_month) / 12, GREATEST(s.spend_month, s.o_month) % 12 + 1,
	                                 15, 12, 0, 0, (SELECT p.time_zone FROM crm.loyalty_program p))
	         WHERE GREATEST(s.spend_month, s.o_month) > 0) x)

-- Ledgers and debt against the journal: crm.verify_ledgers() (loyalty's own check).
SELECT 'ledger matches journal', l.customer_id,
       format('%s: ledger %s, journal %s', l.what, COALESCE(l.ledger_value::text, 'none'), COALESCE(l.journal_value::text, 'none'))
FROM crm.verify_ledgers() l

-- crm.customer_stats against a rebuild from orders, lines and events.
UNION ALL
SELECT 'customer_stats match a rebuild', COALESCE(e.customer_id, s.customer_id),
       CASE WHEN s.customer_id IS NULL THEN 'no stats row; a rebuild writes one'
            WHEN e.customer_id IS NULL THEN 'a stats row, but the record is merged or has no orders or events'
            ELSE concat_ws('; ',
                 CASE WHEN s.orders <> e.orders THEN format('orders %s, rebuilt %s', s.orders, e.orders) END,
                 CASE WHEN s.refunded_orders <> e.refunded_orders THEN format('refunded_orders %s, rebuilt %s', s.refunded_orders, e.refunded_orders) END,
                 CASE WHEN s.spend <> e.spend THEN format('spend %s, rebuilt %s', s.spend, e.spend) END,
                 CASE WHEN s.first_order_at IS DISTINCT FROM e.first_order_at THEN 'first_order_at differs' END,
                 CASE WHEN s.last_order_at IS DISTINCT FROM e.last_order_at THEN 'last_order_at differs' END,
                 CASE WHEN s.mean_interval_days IS DISTINCT FROM e.mean_interval_days THEN 'mean_interval_days differs' END,
                 CASE WHEN s.weekday_orders <> e.weekday_orders THEN format('weekday_orders %s, rebuilt %s', s.weekday_orders, e.weekday_orders) END,
                 CASE WHEN s.events <> e.events THEN format('events %s, rebuilt %s', s.events, e.events) END,
                 CASE WHEN s.last_event_at IS DISTINCT FROM e.last_event_at THEN 'last_event_at differs' END,
                 CASE WHEN s.days <> e.days THEN 'day buckets differ' END,
                 CASE WHEN s.categories <> e.categories THEN 'categories differ' END,
                 CASE WHEN s.line_spend <> e.line_spend THEN format('line_spend %s, rebuilt %s', s.line_spend, e.line_spend) END,
                 CASE WHEN verify.at IS NOT NULL AND s.stage <> e.stage THEN format('stage %s, rebuilt %s as of %s', s.stage, e.stage, verify.at) END)
       END
FROM expected e FULL JOIN crm.customer_stats s ON s.customer_id = e.customer_id
WHERE s.customer_id IS NULL OR e.customer_id IS NULL
   OR (s.orders, s.refunded_orders, s.spend, s.weekday_orders, s.events, s.days, s.categories, s.line_spend)
      IS DISTINCT FROM (e.orders, e.refunded_orders, e.spend, e.weekday_orders, e.events, e.days, e.categories, e.line_spend)
   OR (s.first_order_at, s.last_order_at, s.mean_interval_days, s.last_event_at)
      IS DISTINCT FROM (e.first_order_at, e.last_order_at, e.mean_interval_days, e.last_event_at)
   OR (verify.at IS NOT NULL AND s.stage <> e.stage)

-- Rule tags against their rules, evaluated by the same code on the rebuilt stats.
UNION ALL
SELECT 'rule tags match their rules', COALESCE(h.customer_id, w.customer_id),
       CASE WHEN w.customer_id IS NULL THEN format('holds tag %s; its rule says no', h.name)
            ELSE format('lacks tag %s; its rule says yes', w.name) END
FROM (SELECT ct.customer_id, r.tag_id, r.name FROM crm.customer_tag ct JOIN rule_tag r ON r.tag_id = ct.tag_id) h
FULL JOIN (SELECT e.customer_id, r.tag_id, r.name FROM expected e, unnest(e.rule_tags) u(tag_id)
           JOIN rule_tag r ON r.tag_id = u.tag_id) w
  ON w.customer_id = h.customer_id AND w.tag_id = h.tag_id
WHERE h.customer_id IS NULL OR w.customer_id IS NULL

-- Orders, events, identities and journal rows sit on the golden customer of
-- the record they arrived on (c: that record; p: the one it is merged into,
-- which is golden unless there is a chain, reported below); an identity the golden
-- holds already stays parked on a merged record of that golden (identity.sql).
UNION ALL
SELECT 'rows sit on their origin''s golden customer', r.customer_id,
       format('%s %s of record %s belongs to %s', r.what, r.id, r.origin_customer_id, COALESCE(p.merged_into, c.merged_into, c.customer_id))
FROM (SELECT 'order' AS what, o.order_id AS id, o.customer_id, o.origin_customer_id FROM crm.orders o
      UNION ALL
      SELECT 'event', e.event_id, e.customer_id, e.origin_customer_id FROM crm.event e
      UNION ALL
      SELECT 'identity', i.identity_id, i.customer_id, i.origin_customer_id FROM crm.identity i
      UNION ALL
      SELECT 'journal row', j.journal_id, j.customer_id, j.origin_customer_id FROM crm.points_journal j
      UNION ALL
      SELECT 'line of order', l.order_id, l.customer_id, o.origin_customer_id
      FROM crm.order_line l JOIN crm.orders o ON o.order_id = l.order_id
      WHERE l.customer_id IS NOT NULL) r
JOIN crm.customer c ON c.customer_id = r.origin_customer_id
LEFT JOIN crm.customer p ON p.customer_id = c.merged_into
WHERE r.customer_id <> COALESCE(p.merged_into, c.merged_into, c.customer_id)
  AND NOT (r.what = 'identity'
           AND EXISTS (SELECT 1 FROM crm.identity i
                       JOIN crm.customer h ON h.customer_id = i.customer_id
                       JOIN crm.identity d ON d.kind = i.kind AND d.value = i.value AND d.customer_id = h.merged_into
                       WHERE i.identity_id = r.id
                         AND h.merged_into = COALESCE(p.merged_into, c.merged_into, c.customer_id)))

-- The order path's references hold (crm's triggers check them instead of
-- FOREIGN KEY constraints, src/common/references.c): rows loaded with the
-- triggers off (a restore into a database that differs, a trigger disabled
-- by hand) are the way to break them.
UNION ALL
SELECT 'references exist', r.customer_id, format('%s %s: %s %s does not exist', r.what, r.id, r.parent, r.key)
FROM (SELECT 'order' AS what, o.order_id::text AS id, o.customer_id, 'customer' AS parent, o.customer_id::bigint AS key
      FROM crm.orders o WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = o.customer_id)
      UNION ALL
      SELECT 'order', o.order_id::text, o.customer_id, 'origin customer', o.origin_customer_id
      FROM crm.orders o WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = o.origin_customer_id)
      UNION ALL
      SELECT 'order', o.order_id::text, o.customer_id, 'store', o.store_id
      FROM crm.orders o WHERE o.store_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.store s WHERE s.store_id = o.store_id)
      UNION ALL
      SELECT 'order line', l.order_id || '/' || l.line_no, NULL, 'order', l.order_id
      FROM crm.order_line l WHERE NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.order_id = l.order_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'customer', e.customer_id
      FROM crm.event e WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = e.customer_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'origin customer', e.origin_customer_id
      FROM crm.event e WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = e.origin_customer_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'store', e.store_id
      FROM crm.event e WHERE e.store_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.store s WHERE s.store_id = e.store_id)) r

-- No merge chains: a record is merged into a golden customer.
UNION ALL
SELECT 'merged into a golden customer', c.customer_id,
       format('merged into %s, which is merged into %s', c.merged_into, p.merged_into)
FROM crm.customer c JOIN crm.customer p ON p.customer_id = c.merged_into
WHERE p.merged_into IS NOT NULL

-- Merged records keep nothing of their own: no points, no debt, no manual
-- tags (their rule tags and stats are checked above).
UNION ALL
SELECT 'merged records hold nothing', a.customer_id,
       format('account holds %s points and %s debt', crm.ledger_total(a.ledger), a.debt)
FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id = a.customer_id
WHERE c.merged_into IS NOT NULL AND (crm.ledger_total(a.ledger) <> 0 OR a.debt <> 0)
UNION ALL
SELECT 'merged records hold nothing', ct.customer_id, format('holds manual tag %s', t.name)
FROM crm.customer_tag ct JOIN crm.tag t ON t.tag_id = ct.tag_id AND t.kind = 'manual'
JOIN crm.customer c ON c.customer_id = ct.customer_id
WHERE c.merged_into IS NOT NULL

-- Accounts exist where points can be: every golden customer with a paid
-- order has one (journal rows without an account: crm.verify_ledgers).
UNION ALL
SELECT 'paid orders have an account', o.customer_id,
       format('no loyalty account; paid orders: %s', count(*))
FROM crm.orders o JOIN crm.customer c ON c.customer_id = o.customer_id AND c.merged_into IS NULL
WHERE o.status = 'paid'
  AND NOT EXISTS (SELECT 1 FROM crm.loyalty_account a WHERE a.customer_id = o.customer_id)
GROUP BY o.customer_id

-- Rolling spend: an account's monthly buckets add up to what its orders do.
UNION ALL
SELECT 'rolling spend matches orders', y.customer_id, y.detail
FROM (SELECT DISTINCT ON (x.customer_id) x.customer_id,
             format('qualifying spend as of %s: account %s, orders %s', x.as_of, x.account_total, x.orders_total) AS detail
      FROM spend_at x
      WHERE x.account_total <> x.orders_total
      ORDER BY x.customer_id, x.as_of) y

-- Tiers, by the tier policy (crm.tier_held): an order raises the tier at
-- once to what the rolling spend reaches, and crm.tick(t) lowers it (then
-- tier_since = t) only to what the rolling spend at t reaches, which it can
-- only fall below later.  So no tier is below what the policy holds now
-- (crm.loyalty_now()), or at tier_since when a tick ran ahead of now.
UNION ALL
SELECT 'tier reaches rolling spend', a.customer_id,
       format('tier %s, rolling spend %s at %s reaches %s', a.tier,
              crm.spend_buckets_total(a.spend_month, a.spend_cents, x.as_of), x.as_of, r.tier)
FROM crm.loyalty_account a
JOIN crm.tier t ON t.tier = a.tier
CROSS JOIN LATERAL (SELECT y.as_of, crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, y.as_of) AS held
                    FROM (SELECT GREATEST(crm.loyalty_now(), a.tier_since) AS as_of) y) x
JOIN crm.tier r ON r.tier = x.held
WHERE r.rank > t.rank

-- What crm.tick(at) guarantees: no tier above what the policy holds at
-- "at" (a tier held past tier_hold_months drops to what the spend reaches).
UNION ALL
SELECT 'tier lowered after the hold', a.customer_id,
       format('tier %s since %s, rolling spend %s at %s: %s', a.tier, a.tier_since,
              crm.spend_buckets_total(a.spend_month, a.spend_cents, verify.at), verify.at, r.tier)
FROM crm.loyalty_account a
JOIN crm.tier t ON t.tier = a.tier
JOIN crm.tier r ON r.tier = crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, verify.at)
WHERE verify.at IS NOT NULL AND r.rank < t.rank

-- Coupons: each golden customer's uses of a template (crm.coupon_usage,
-- what the per-customer limit counts) are its records' coupons reserved or
-- redeemed; each coupon stands where its last journal row put it.
UNION ALL
SELECT 'coupon uses match coupons', COALESCE(u.customer_id, k.golden),
       format('template %s: %s counted, %s coupons reserved or redeemed', COALESCE(u.template_id, k.template_id),
              COALESCE(u.used, 0), COALESCE(k.n, 0))
FROM (SELECT x.customer_id, x.template_id, x.used FROM crm.coupon_usage x WHERE x.used > 0) u
FULL JOIN (SELECT COALESCE(r.merged_into, r.customer_id) AS golden, c.template_id, count(*) AS n
           FROM crm.coupon c JOIN crm.customer r ON r.customer_id = c.customer_id
           WHERE c.status IN ('reserved', 'redeemed') GROUP BY 1, 2) k
  ON k.golden = u.customer_id AND k.template_id = u.template_id
WHERE COALESCE(u.used, 0) <> COALESCE(k.n, 0)
UNION ALL
SELECT 'coupon budget matches redemptions', NULL::bigint,
       format('template %s, period from %s: %s redemptions and %s counted, %s and %s redeemed', COALESCE(b.template_id, k.template_id),
              COALESCE(b.period_start, k.period_start), COALESCE(b.redeemed, 0), COALESCE(b.discount, 0), COALESCE(k.n, 0), COALESCE(k.d, 0))
FROM (SELECT x.* FROM crm.coupon_budget x WHERE x.redeemed <> 0 OR x.discount <> 0) b
FULL JOIN (SELECT c.template_id, crm.coupon_budget_period(t, c.redeemed_at) AS period_start, count(*) AS n, sum(c.discount) AS d
           FROM crm.coupon c JOIN crm.coupon_template t ON t.template_id = c.template_id
           WHERE c.status = 'redeemed' AND (t.budget_count IS NOT NULL OR t.budget_value IS NOT NULL)
           GROUP BY 1, 2) k
  ON k.template_id = b.template_id AND k.period_start = b.period_start
WHERE COALESCE(b.redeemed, 0) <> COALESCE(k.n, 0) OR COALESCE(b.discount, 0) <> COALESCE(k.d, 0)
UNION ALL
SELECT 'coupon matches its journal', c.customer_id,
       format('coupon %s is %s, its last journal row says %s', c.coupon_id, c.status, COALESCE(j.change, 'nothing'))
FROM crm.coupon c
LEFT JOIN LATERAL (SELECT x.change, x.discount FROM crm.coupon_journal x WHERE x.coupon_id = c.coupon_id
                   ORDER BY x.entry_id DESC LIMIT 1) j ON true
WHERE j.change IS NULL
   OR c.status <> CASE j.change WHEN 'reserve' THEN 'reserved' WHEN 'redeem' THEN 'redeemed' WHEN 'expire' THEN 'expired' ELSE 'issued' END
   OR (c.status = 'redeemed' AND c.discount IS DISTINCT FROM j.discount)

-- Stored value: every wallet equals its journal, every transaction balances.
UNION ALL
SELECT w.invariant, w.customer_id, w.detail FROM crm.verify_wallets() w

ORDER BY 1, 2, 3;
END
$$;
COMMENT ON FUNCTION crm.verify(timestamptz) IS
	'Every violated cross-feature invariant, one row each (invariant, customer, detail): ledgers vs journal, customer_stats vs a rebuild, rule tags vs their rules, rows on their origin''s golden customer, the order path''s references, no merge chains, nothing on merged records, accounts for paid orders, rolling spend vs orders, tier vs rolling spend, coupon uses vs coupons, coupon budgets vs redemptions, coupons vs their journal and the stored-value ledger (crm.verify_wallets); with "at", also what crm.tick(at) leaves (stages, time-dependent tags, tiers lowered after the hold).  Empty when all is well';

-- ---------------------------------------------------------------------------
-- Issue 13, defect 5: crm.reassign_order moves an order recorded for the
-- wrong shopper with its points, spend, stats and tags (src/core/core.sql).
-- The loyalty update trigger and the stats trigger (C) see the origin change.
-- ---------------------------------------------------------------------------
CREATE SEQUENCE crm.order_reassignment_id_seq;
CREATE TABLE crm.order_reassignment (
	reassignment_id	bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.order_reassignment_id_seq'::pg_catalog.regclass),
	-- No foreign keys: the log outlives a deleted order or customer record.
	order_id		bigint NOT NULL,
	from_customer	bigint NOT NULL,
	from_golden		bigint NOT NULL,
	to_customer		bigint NOT NULL,
	to_golden		bigint NOT NULL,
	reason			text NOT NULL CONSTRAINT order_reassignment_reason_not_blank CHECK (pg_catalog.btrim(reason) <> ''),
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reassigned_by	name NOT NULL DEFAULT CURRENT_USER
);
ALTER SEQUENCE crm.order_reassignment_id_seq OWNED BY crm.order_reassignment.reassignment_id;
CREATE INDEX order_reassignment_order_idx ON crm.order_reassignment (order_id);
COMMENT ON TABLE crm.order_reassignment IS 'Every order crm.reassign_order moved to another customer: from which record (and its golden customer) to which, why, when and by whom';
COMMENT ON COLUMN crm.order_reassignment.from_customer IS 'The order''s origin_customer_id before the move';
COMMENT ON COLUMN crm.order_reassignment.to_customer IS 'The record the order was re-assigned to (its new origin_customer_id); to_golden is that record''s golden customer';
SELECT pg_catalog.pg_extension_config_dump('crm.order_reassignment', '');
SELECT pg_catalog.pg_extension_config_dump('crm.order_reassignment_id_seq', '');

CREATE FUNCTION crm.reassign_order_steps(order_id bigint, customer_id bigint, reason text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments are errors.  Only crm.reassign_order (C) lets
-- its UPDATE change origin_customer_id; called directly it fails there.
DECLARE
	o record;
	from_golden bigint;
	to_golden bigint;
	attempts integer := 0;
	logged bigint;
BEGIN
	IF order_id IS NULL OR customer_id IS NULL OR reason IS NULL THEN
		RAISE EXCEPTION 'order_id, customer_id and reason must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_catalog.btrim(reason) OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'the reason must not be blank' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Say why the order moves (for example: cashier scanned the wrong card); it is kept in crm.order_reassignment.';
	END IF;
	-- Lock order (DEVELOPER.md): both golden customers FOR SHARE in id
	-- order, then the order row.  A merge, unmerge or other re-assignment
	-- that committed before the locks were granted moved a golden or the
	-- order: the locks are given back (the block's subtransaction) and taken
	-- again for the customers as they are now.
	LOOP
		SELECT x.customer_id INTO from_golden FROM crm.orders x WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'order % does not exist', reassign_order_steps.order_id USING ERRCODE = 'no_data_found';
		END IF;
		to_golden := crm.resolve_customer(reassign_order_steps.customer_id);
		BEGIN
			IF crm.lock_customer(LEAST(from_golden, to_golden)) OPERATOR(pg_catalog.<>) LEAST(from_golden, to_golden)
			   OR crm.lock_customer(GREATEST(from_golden, to_golden)) OPERATOR(pg_catalog.<>) GREATEST(from_golden, to_golden) THEN
				RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
			END IF;
			SELECT x.customer_id, x.origin_customer_id INTO o FROM crm.orders x
			WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id FOR UPDATE;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'order % does not exist', reassign_order_steps.order_id USING ERRCODE = 'no_data_found';
			END IF;
			IF o.customer_id OPERATOR(pg_catalog.<>) from_golden THEN
				RAISE EXCEPTION USING ERRCODE = 'CR900';
			END IF;
			EXIT;
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			attempts := attempts OPERATOR(pg_catalog.+) 1;
			IF attempts OPERATOR(pg_catalog.>=) 100 THEN
				RAISE EXCEPTION 'order % keeps moving while it is re-assigned', reassign_order_steps.order_id
					USING ERRCODE = 'serialization_failure', HINT = 'Retry the transaction.';
			END IF;
		END;
	END LOOP;
	-- Already on that record: nothing to do (a retry is harmless).
	IF o.origin_customer_id OPERATOR(pg_catalog.=) reassign_order_steps.customer_id THEN
		RETURN NULL;
	END IF;
	IF EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) to_golden AND c.forgotten_at IS NOT NULL) THEN
		RAISE EXCEPTION 'order % cannot be re-assigned to customer %: the customer was forgotten', reassign_order_steps.order_id, reassign_order_steps.customer_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'A forgotten customer takes no new data; re-assign the order to another customer.';
	END IF;
	-- The loyalty and stats triggers see origin_customer_id change: the
	-- order's points and spend leave the old golden customer and go to the
	-- new one (journaled), both customers' stats, stages and rule tags are
	-- rebuilt; the lines follow the order.
	UPDATE crm.orders x SET origin_customer_id = reassign_order_steps.customer_id, customer_id = to_golden
	WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id;
	INSERT INTO crm.order_reassignment (order_id, from_customer, from_golden, to_customer, to_golden, reason)
	VALUES (reassign_order_steps.order_id, o.origin_customer_id, from_golden, reassign_order_steps.customer_id, to_golden, reassign_order_steps.reason)
	RETURNING reassignment_id INTO logged;
	RETURN logged;
END
$$;
COMMENT ON FUNCTION crm.reassign_order_steps(bigint, bigint, text) IS
	'Internal: the work of crm.reassign_order (checks, locks, the UPDATE, the log row); fails (23000) unless called by it';

CREATE FUNCTION crm.reassign_order(order_id bigint, customer_id bigint, reason text) RETURNS bigint
	LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'crm_reassign_order';
COMMENT ON FUNCTION crm.reassign_order(bigint, bigint, text) IS
	'Moves an order recorded for the wrong customer to customer_id (its new origin record; the order goes to its golden customer) with its points, qualifying spend, stats and rule tags, journaled and logged in crm.order_reassignment; returns the log id, NULL when the order already came from that record. Not STRICT: NULL arguments are 22004; unknown order P0002, unknown customer 23503, forgotten customer 55000, blank reason 22023';
COMMENT ON FUNCTION crm.loyalty_orders_update() IS
	'AFTER UPDATE statement trigger on crm.orders: refunds (status refunded or refunded_amount raised) claw points back proportionally; an order crm.reassign_order moved takes the points it holds and its qualifying spend to the new customer';

COMMENT ON COLUMN crm.orders.origin_customer_id IS 'The customer record the order arrived on; merges never change it (they move customer_id); crm.reassign_order does, for an order recorded for the wrong customer';
COMMENT ON FUNCTION crm.fill_origin_customer() IS
	'BEFORE INSERT OR UPDATE row trigger: a NULL origin_customer_id becomes customer_id; origin_customer_id never changes afterwards (except by crm.reassign_order), and customer_id only along the origin''s merges (to the origin or a record it is merged into, as merges, unmerges and stitching move rows; else SQLSTATE 55000); arguments: to_golden (a row inserted for a merged record goes to its golden customer, which is locked FOR SHARE first), stitch (crm.identity, with crm.stitch_on_insert on: an identifier inserted for a merged record goes to its golden customer, unlocked, unless the golden holds the same kind and value already), time=<column> (the column lies between 1900-01-01 UTC and now() + crm.max_future, SQLSTATE 22008), pattern (crm.identity: the value matches its kind''s pattern unless blocklisted, SQLSTATE 23514), <column>-><table> (the column references crm.<table>''s primary key: the row is locked FOR KEY SHARE once per key and statement, SQLSTATE 23503 when missing; to_golden checks customer_id and origin_customer_id against crm.customer the same way)';

-- ---------------------------------------------------------------------------
-- References of the order path (issue 14; src/common/references.c)
--
-- orders.customer_id, orders.origin_customer_id, orders.store_id,
-- order_line.order_id, event.customer_id, event.origin_customer_id and
-- event.store_id are foreign keys checked by crm's triggers instead of
-- FOREIGN KEY constraints, which cost a query per row and key: a row's
-- customers and store are looked up and locked (FOR SHARE / FOR KEY SHARE)
-- by crm.fill_origin_customer, once per key and statement; the orders of
-- lines by crm.lock_line_orders, once per order and statement.  The parent's
-- side is below: deleting a customer or store that rows still reference, or
-- changing its key, fails as with NO ACTION; deleting an order deletes its
-- lines (ON DELETE CASCADE); TRUNCATE of a parent needs its referencing
-- tables in the same command.  Errors are 23503 with the constraint names
-- (orders_customer_id_fkey, ...) the foreign keys had.
-- ---------------------------------------------------------------------------
ALTER TABLE crm.orders DROP CONSTRAINT orders_customer_id_fkey, DROP CONSTRAINT orders_origin_customer_id_fkey,
	DROP CONSTRAINT orders_store_id_fkey;
ALTER TABLE crm.order_line DROP CONSTRAINT order_line_order_id_fkey;
ALTER TABLE crm.event DROP CONSTRAINT event_customer_id_fkey, DROP CONSTRAINT event_origin_customer_id_fkey,
	DROP CONSTRAINT event_store_id_fkey;
CREATE FUNCTION crm.referenced_row() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_referenced_row';
COMMENT ON FUNCTION crm.referenced_row() IS
	'AFTER DELETE OR UPDATE row (and AFTER TRUNCATE statement) trigger on a parent of the order path: ''restrict'' or ''cascade'', then the referencing ''table.column''s';
CREATE TRIGGER customer_referenced AFTER DELETE OR UPDATE OF customer_id ON crm.customer
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.customer_id', 'orders.origin_customer_id',
		'event.customer_id', 'event.origin_customer_id');
CREATE TRIGGER customer_referenced_truncate AFTER TRUNCATE ON crm.customer
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.customer_id', 'event.customer_id');
CREATE TRIGGER store_referenced AFTER DELETE OR UPDATE OF store_id ON crm.store
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.store_id', 'event.store_id');
CREATE TRIGGER store_referenced_truncate AFTER TRUNCATE ON crm.store
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.store_id', 'event.store_id');
-- a row trigger: it fires before the DELETE's statement triggers (loyalty,
-- stats), as the foreign key's cascade did
CREATE TRIGGER orders_cascade_lines AFTER DELETE OR UPDATE OF order_id ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('cascade', 'order_line.order_id');
CREATE TRIGGER orders_cascade_lines_truncate AFTER TRUNCATE ON crm.orders
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'order_line.order_id');

-- ---------------------------------------------------------------------------
-- Order lines may carry their order's customer (issue 15: on Citus it places
-- the line on its order's shard).
-- ---------------------------------------------------------------------------
ALTER TABLE crm.order_line ADD COLUMN customer_id bigint;
COMMENT ON COLUMN crm.order_line.customer_id IS 'The customer_id of the line''s order, or NULL: optional on one node (checked against the order when given, and kept equal to it when a merge moves the order); required after crm.distribute(), where it places the line on the order''s shard';
-- Lines that carry their order's customer follow the order when a merge,
-- unmerge or crm.reassign_order moves it.
CREATE FUNCTION crm.order_lines_follow() RETURNS trigger
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	UPDATE crm.order_line l SET customer_id = n.customer_id
	FROM crm_moved n
	WHERE l.order_id OPERATOR(pg_catalog.=) n.order_id AND l.customer_id IS NOT NULL
	  AND l.customer_id OPERATOR(pg_catalog.<>) n.customer_id;
	RETURN NULL;
END $$;
COMMENT ON FUNCTION crm.order_lines_follow() IS
	'AFTER UPDATE statement trigger on crm.orders (REFERENCING NEW TABLE AS crm_moved): lines that carry a customer_id take their order''s new one';
CREATE TRIGGER orders_lines_follow AFTER UPDATE ON crm.orders
	REFERENCING NEW TABLE AS crm_moved
	FOR EACH STATEMENT EXECUTE FUNCTION crm.order_lines_follow();

CREATE OR REPLACE FUNCTION crm.tick(at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (task text, changed bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'crm.tick needs a finite time, not %', at
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- One tick at a time: a second caller waits, then finds nothing to do.
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crm.tick'));
	FOR t IN SELECT k.task, k.fn FROM crm.tick_task k WHERE k.enabled ORDER BY k.run_order LOOP
		task := t.task;
		EXECUTE pg_catalog.format('SELECT %s($1)', t.fn::oid::regproc) INTO changed USING at;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.tick(timestamptz) IS
	'Runs every enabled crm.tick_task for time "at" (default now()) and reports what each changed; idempotent, safe to run from pg_cron every few minutes';


CREATE OR REPLACE FUNCTION crm.clv_fit(model text, as_of timestamptz, period interval DEFAULT '1 week', name text DEFAULT NULL)
RETURNS crm.clv_model
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: name NULL means "the model's own name".
DECLARE
	started timestamptz := pg_catalog.clock_timestamp();
	e crm.clv_estimate_result;
	result crm.clv_model;
BEGIN
	IF model IS NULL OR as_of IS NULL OR period IS NULL THEN
		RAISE EXCEPTION 'crm.clv_fit needs a model, as_of and period'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF model NOT IN ('bgnbd', 'mbgnbd', 'paretonbd', 'gammagamma') THEN
		RAISE EXCEPTION 'unknown CLV model "%"', model
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Use bgnbd, mbgnbd, paretonbd or gammagamma.';
	END IF;
	IF model OPERATOR(pg_catalog.=) 'gammagamma' THEN
		e := (SELECT crm.clv_estimate_spend(s.frequency, s.monetary::double precision, 1)
		      FROM crm.clv_summary(as_of, period) s
		      WHERE s.frequency OPERATOR(pg_catalog.>) 0 AND s.monetary OPERATOR(pg_catalog.>) 0);
	ELSE
		e := (SELECT crm.clv_estimate(model, s.frequency, s.recency, s.t, 1)
		      FROM crm.clv_summary(as_of, period) s
		      WHERE s.t OPERATOR(pg_catalog.>) 0);
	END IF;
	INSERT INTO crm.clv_model AS m (name, model, params, param_names, log_likelihood, customers,
		summary_rows, as_of, period, seconds, fitted_at)
	VALUES (COALESCE(clv_fit.name, clv_fit.model), e.model, e.params, e.param_names, e.log_likelihood,
		e.customers::bigint, e.summary_rows, clv_fit.as_of, clv_fit.period,
		pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started),
		pg_catalog.now())
	ON CONFLICT ON CONSTRAINT clv_model_pkey DO UPDATE SET
		model = EXCLUDED.model, params = EXCLUDED.params, param_names = EXCLUDED.param_names,
		log_likelihood = EXCLUDED.log_likelihood, customers = EXCLUDED.customers,
		summary_rows = EXCLUDED.summary_rows, as_of = EXCLUDED.as_of, period = EXCLUDED.period,
		seconds = EXCLUDED.seconds, fitted_at = EXCLUDED.fitted_at
	RETURNING m.* INTO result;
	RETURN result;
END
$$;
COMMENT ON FUNCTION crm.clv_fit(text, timestamptz, interval, text) IS
	'Fits model (bgnbd, mbgnbd, paretonbd, gammagamma) to crm.clv_summary(as_of, period) and stores it in crm.clv_model under name (default: the model''s name), replacing an earlier fit of that name';


CREATE OR REPLACE FUNCTION crm.replenishment(as_of timestamptz DEFAULT pg_catalog.now(), min_purchases integer DEFAULT 3,
	sku_min_purchases integer DEFAULT 4)
RETURNS TABLE (customer_id bigint, category text, sku text, purchases integer, interval_days double precision,
	last_purchase date, next_expected date)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT pg_catalog.isfinite(as_of) THEN
		RAISE EXCEPTION 'as_of must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF min_purchases < 2 OR sku_min_purchases < 2 THEN
		RAISE EXCEPTION 'a purchase cycle needs at least 2 purchases'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- (On Citus a line is joined to its order on customer_id too, so that
	-- each shard joins its own: crm.line_join; as_of and the minimums are
	-- $1 to $3.)
	RETURN QUERY EXECUTE $q$
	WITH bought AS (
		SELECT o.customer_id AS cid, l.category AS cat, l.sku AS item, o.ordered_at::date AS day
		FROM crm.orders o
		JOIN crm.order_line l ON $q$ || crm.line_join('l', 'o') || $q$
		JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) o.customer_id
		WHERE c.merged_into IS NULL
		  AND o.status OPERATOR(pg_catalog.=) 'paid'
		  AND o.ordered_at OPERATOR(pg_catalog.<=) $1
	), cycles AS (
		SELECT b.cid, b.cat, NULL::text AS item, crm.purchase_days(b.day) AS n,
		       crm.purchase_interval(b.day) AS gap, pg_catalog.max(b.day) AS last_day
		FROM bought b GROUP BY b.cid, b.cat
		HAVING crm.purchase_days(b.day) OPERATOR(pg_catalog.>=) $2
		UNION ALL
		SELECT b.cid, b.cat, b.item, crm.purchase_days(b.day),
		       crm.purchase_interval(b.day), pg_catalog.max(b.day)
		FROM bought b GROUP BY b.cid, b.cat, b.item
		HAVING crm.purchase_days(b.day) OPERATOR(pg_catalog.>=) $3
	)
	SELECT y.cid, y.cat, y.item, y.n, y.gap, y.last_day,
	       y.last_day OPERATOR(pg_catalog.+) pg_catalog.round(y.gap)::integer
	FROM cycles y$q$ USING as_of, min_purchases, sku_min_purchases;
END
$$;
COMMENT ON FUNCTION crm.replenishment(timestamptz, integer, integer) IS
	'Purchase cycles up to as_of: per golden customer and category bought on at least min_purchases days (sku NULL), and per sku bought on at least sku_min_purchases days, the median days between purchases, the last purchase day and the next expected one';


-- Work that spans customers refuses to run on a distributed crm_ext until it
-- has been made to (src/common/shard.c; README, "Scaling out with Citus").
CREATE FUNCTION crm.refuse_on_citus(what text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'crm_refuse_on_citus_sql';
COMMENT ON FUNCTION crm.refuse_on_citus(text) IS
	'Internal: SQLSTATE 0A000 naming "what" when crm_ext is distributed with Citus (crm.distribute()) and this is not a trigger on a shard; nothing otherwise';

CREATE OR REPLACE FUNCTION crm.set_local_on_cluster(setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SET LOCAL citus.propagate_set_commands = 'local';
	EXECUTE pg_catalog.format('SET LOCAL %I = %L', setting, value);
END
$$;
COMMENT ON FUNCTION crm.set_local_on_cluster(text, text) IS
	'Internal (Citus): SET LOCAL setting = value on the coordinator and on the workers of this transaction';


CREATE OR REPLACE FUNCTION crm.move_customer_rows(tbl regclass, to_customer bigint, cond text,
                                       a bigint[] DEFAULT NULL, b bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	moved_orders bigint[];
	moved_from bigint[];
BEGIN
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('UPDATE %s t SET customer_id = $1 WHERE %s', tbl, cond) USING to_customer, a, b;
		GET DIAGNOSTICS n = ROW_COUNT;
		RETURN n;
	END IF;
	IF tbl = 'crm.orders'::regclass THEN
		-- an order's lines go with it (on one node orders_lines_follow moves them)
		EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.order_id), pg_catalog.array_agg(DISTINCT t.customer_id) FROM crm.orders t WHERE %s', cond)
		INTO moved_orders, moved_from USING to_customer, a, b;
	END IF;
	SELECT pg_catalog.sum(x.moved) INTO n FROM crm.move_rows_on_citus(tbl, 'WHERE ' || cond, '$1', a, b, to_customer) x;
	IF moved_orders IS NOT NULL THEN
		PERFORM crm.move_customer_rows('crm.order_line', to_customer,
		                               't.order_id = ANY ($2) AND t.customer_id = ANY ($3)', moved_orders, moved_from);
	END IF;
	RETURN coalesce(n, 0);
END
$$;
COMMENT ON FUNCTION crm.move_customer_rows(regclass, bigint, text, bigint[], bigint[]) IS
	'Internal: moves the rows of tbl matching cond (alias t; $1 to_customer, $2 a, $3 b) to customer to_customer: an UPDATE on one node; on Citus a delete and insert on the new customer''s shard with crm''s triggers held back (an order''s lines follow it); returns the rows moved';


CREATE OR REPLACE FUNCTION crm.records_under(golden bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	found bigint[] := ARRAY[golden];
	level bigint[] := ARRAY[golden];
	depth integer := 0;
BEGIN
	WHILE level <> '{}' AND depth < 1000 LOOP
		level := ARRAY(SELECT c.customer_id FROM crm.customer c
		               WHERE c.merged_into = ANY (level) AND c.customer_id <> ALL (found));
		found := found || level;
		depth := depth + 1;
	END LOOP;
	RETURN ARRAY(SELECT DISTINCT u.id FROM pg_catalog.unnest(found) u(id) ORDER BY 1);
END
$$;
COMMENT ON FUNCTION crm.records_under(bigint) IS
	'Internal: a golden record and every record merged into it, also along a chain an older release left, sorted';


CREATE FUNCTION crm.on_citus() RETURNS boolean
	LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'crm_on_citus';
COMMENT ON FUNCTION crm.on_citus() IS
	'Internal: true when crm_ext is distributed with Citus (crm.distribute()) and this runs on the coordinator, not on a shard';


CREATE FUNCTION crm.rebuild_customer_stats_on_shard(shard regclass, customers bigint[], at timestamptz)
RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_rebuild_customer_stats_on_shard';
COMMENT ON FUNCTION crm.rebuild_customer_stats_on_shard(regclass, bigint[], timestamptz) IS
	'Internal (Citus): crm.rebuild_customer_stats of customers on the shard group of shard, run on its worker; 22023 when shard is not a shard of a distributed crm table';


-- crm.loyalty_unmerge finds the records of a side with crm.records_under
DROP FUNCTION crm.loyalty_golden(bigint);

CREATE OR REPLACE FUNCTION crm.loyalty_expire_points(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.loyalty_each_account('crm.loyalty_expire_account(timestamptz,bigint)',
		'crm.ledger_next_expiry(a.ledger) OPERATOR(pg_catalog.<=) $1', at);
END
$$;
COMMENT ON FUNCTION crm.loyalty_expire_points(timestamptz) IS
	'crm.tick task: journals and removes every lot that expired by "at"; returns the number of accounts changed';


CREATE OR REPLACE FUNCTION crm.loyalty_expire_account(at timestamptz, customer bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- (Custom plans: with a customer, Citus routes the statement to its shard.)
-- Not STRICT: customer NULL is every account.
DECLARE
	n bigint;
BEGIN
	-- Lock in customer order (as redemptions do), then journal and remove
	-- every lot that expired by "at".  Idempotent: nothing is left to expire.
	WITH locked AS (
		SELECT a.customer_id, a.ledger FROM crm.loyalty_account a
		WHERE crm.ledger_next_expiry(a.ledger) OPERATOR(pg_catalog.<=) at
		  AND (customer IS NULL OR a.customer_id OPERATOR(pg_catalog.=) customer)
		ORDER BY a.customer_id FOR UPDATE),
	gone AS (
		SELECT l.customer_id, l.ledger, l.ledger OPERATOR(crm.-) crm.ledger_expire(l.ledger, at) AS lots
		FROM locked l
		WHERE crm.ledger_next_expiry(l.ledger) OPERATOR(pg_catalog.<=) at),
	j AS (
		INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, reason, at)
		SELECT g.customer_id, g.customer_id, 'expire', - crm.ledger_total(g.lots), g.lots, 'expired', at FROM gone g),
	u AS (
		UPDATE crm.loyalty_account a SET ledger = crm.ledger_expire(g.ledger, at), updated_at = pg_catalog.now()
		FROM gone g WHERE a.customer_id OPERATOR(pg_catalog.=) g.customer_id
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM u;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_expire_account(timestamptz, bigint) IS
	'Internal: crm.loyalty_expire_points for one customer''s account (NULL: every account); returns the accounts changed';


CREATE OR REPLACE FUNCTION crm.loyalty_downgrade_account(at timestamptz, customer bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- (Custom plans: with a customer, Citus routes the statement to its shard.)
-- Not STRICT: customer NULL is every account.
DECLARE
	n bigint;
	hold integer := (SELECT p.tier_hold_months FROM crm.loyalty_program p);
BEGIN
	-- Policy (crm.tier_held): a tier held at least tier_hold_months drops to
	-- the highest tier that the rolling 12-month spend at "at" still
	-- reaches.  Only lowers.  The tier_since filter only spares the lock on
	-- accounts whose tier is protected anyway.
	WITH cand AS (
		-- the account's own spend (crm.qualifying_spend would read a merged record's golden)
		SELECT a.customer_id, a.tier AS old_tier, cur.rank AS old_rank,
		       crm.spend_buckets_total(a.spend_month, a.spend_cents, at)::pg_catalog.numeric(20,2) AS spend,
		       crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, at) AS new_tier
		FROM crm.loyalty_account a JOIN crm.tier cur ON cur.tier OPERATOR(pg_catalog.=) a.tier
		WHERE cur.rank OPERATOR(pg_catalog.>) (SELECT pg_catalog.min(t.rank) FROM crm.tier t)
		  AND a.tier_since OPERATOR(pg_catalog.<=) (at OPERATOR(pg_catalog.-) pg_catalog.make_interval(months => hold))
		  AND (customer IS NULL OR a.customer_id OPERATOR(pg_catalog.=) customer)
		ORDER BY a.customer_id FOR UPDATE OF a),
	down AS (
		SELECT t.customer_id, t.old_tier, t.spend, t.new_tier FROM cand t JOIN crm.tier nt ON nt.tier OPERATOR(pg_catalog.=) t.new_tier
		JOIN crm.tier ot ON ot.tier OPERATOR(pg_catalog.=) t.old_tier
		WHERE nt.rank OPERATOR(pg_catalog.<) ot.rank),
	h AS (
		INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason, qualifying_spend)
		SELECT d.customer_id, d.old_tier, d.new_tier, at, 'downgrade', d.spend FROM down d),
	u AS (
		UPDATE crm.loyalty_account a SET tier = d.new_tier, tier_since = at, updated_at = pg_catalog.now()
		FROM down d WHERE a.customer_id OPERATOR(pg_catalog.=) d.customer_id
		RETURNING 1)
	SELECT pg_catalog.count(*) INTO n FROM u;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_downgrade_account(timestamptz, bigint) IS
	'Internal: crm.loyalty_downgrade_tiers for one customer''s account (NULL: every account); returns the tiers lowered';


CREATE OR REPLACE FUNCTION crm.loyalty_each_account(fn regprocedure, cond text, at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint := 0;
	k bigint;
	c bigint;
BEGIN
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('SELECT %s($1, NULL)', fn::oid::regproc) INTO n USING at;
		RETURN n;
	END IF;
	FOR c IN EXECUTE pg_catalog.format('SELECT a.customer_id FROM crm.loyalty_account a WHERE %s ORDER BY 1', cond) USING at LOOP
		EXECUTE pg_catalog.format('SELECT %s($1, $2)', fn::oid::regproc) INTO k USING at, c;
		n := n OPERATOR(pg_catalog.+) k;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.loyalty_each_account(regprocedure, text, timestamptz) IS
	'Internal: runs a loyalty tick task fn(at, customer): once for every account on one node, account by account (those matching cond) on Citus; returns the sum';


CREATE FUNCTION crm.segmentation_tick_on_shard(shard regclass, at timestamptz) RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_segmentation_tick_on_shard';
COMMENT ON FUNCTION crm.segmentation_tick_on_shard(regclass, timestamptz) IS
	'Internal (Citus): crm.segmentation_tick of the customers on the shard group of shard, run on its worker; 22023 when shard is not a shard of a distributed crm table';



CREATE OR REPLACE FUNCTION crm.identities_to_golden(golden bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.move_customer_rows('crm.identity', golden, 't.identity_id = ANY ($2)',
		ARRAY(SELECT DISTINCT ON (i.kind, i.value) i.identity_id
		      FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		      WHERE c.merged_into = golden
		        AND (i.kind, i.value) NOT IN (SELECT d.kind, d.value FROM crm.identity d WHERE d.customer_id = golden)
		      ORDER BY i.kind, i.value, i.identity_id));
END
$$;
COMMENT ON FUNCTION crm.identities_to_golden(bigint) IS
	'Internal: moves identifiers parked on the records under golden that golden does not hold up to it (the lowest identity_id of a value); returns how many moved';


CREATE OR REPLACE FUNCTION crm.kept_apart_goldens() RETURNS TABLE (golden_a bigint, golden_b bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH a AS MATERIALIZED (
		SELECT COALESCE(c.merged_into, c.customer_id) AS ga, r.customer_b
		FROM crm.identity_review r JOIN crm.customer c ON c.customer_id = r.customer_a
		WHERE r.resolution = 'kept_apart')
	SELECT a.ga, COALESCE(c.merged_into, c.customer_id)
	FROM a JOIN crm.customer c ON c.customer_id = a.customer_b;
END;
COMMENT ON FUNCTION crm.kept_apart_goldens() IS
	'Internal (stitching): the pairs kept apart, as the golden customers of their two records now';


CREATE OR REPLACE FUNCTION crm.stitch_review_hubs() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.identity_review_hub(h.kind, h.value, 'batch')
	FROM (SELECT i.kind, i.value FROM crm.identity i GROUP BY i.kind, i.value
	      HAVING pg_catalog.count(*) > 2 AND crm.identity_is_hub(i.kind, i.value, pg_catalog.count(*))) h
	ORDER BY h.kind, h.value;
END
$$;
COMMENT ON FUNCTION crm.stitch_review_hubs() IS
	'Internal (batch stitching): sends the holders of every hub identifier to review';


CREATE OR REPLACE FUNCTION crm.stitch_goldens(graph crm.id_merge)
RETURNS TABLE (comp bigint, cust bigint, rn bigint, ngold bigint)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
BEGIN
	RETURN QUERY
	WITH rg AS MATERIALIZED (
		SELECT DISTINCT m.golden AS comp, COALESCE(c.merged_into, c.customer_id) AS cust
		FROM crm.id_merge_groups(graph) m JOIN crm.customer c ON c.customer_id = m.member
	), g AS (
		SELECT DISTINCT j.golden AS comp, rg.cust
		FROM crm.id_merge_groups((SELECT crm.id_merge_agg(r.comp, r.cust) FROM rg r)) j
		JOIN rg ON rg.cust = j.member
	), ranked AS (
		SELECT g.comp, g.cust,
		       pg_catalog.row_number() OVER (PARTITION BY g.comp ORDER BY c.created_at, c.customer_id) AS rn,
		       pg_catalog.count(*) OVER (PARTITION BY g.comp) AS ngold
		FROM g JOIN crm.customer c ON c.customer_id = g.cust
		WHERE c.forgotten_at IS NULL)
	SELECT r.comp, r.cust, r.rn, r.ngold FROM ranked r WHERE r.ngold > 1;
END
$$;
COMMENT ON FUNCTION crm.stitch_goldens(crm.id_merge) IS
	'Internal (batch stitching): the golden customers of each component of graph with more than one, oldest first (rn), forgotten ones left out';


CREATE OR REPLACE FUNCTION crm.stitch_strays_by_record(OUT moved bigint, OUT records bigint[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	r record;
BEGIN
	moved := 0;
	records := '{}';
	FOR r IN SELECT 'crm.orders'::regclass AS tbl, x.rec, x.golden
	         FROM (SELECT DISTINCT o.customer_id AS rec, c.merged_into AS golden
	               FROM crm.orders o JOIN crm.customer c ON c.customer_id = o.customer_id
	               WHERE c.merged_into IS NOT NULL) x
	         UNION ALL
	         SELECT 'crm.event'::regclass, x.rec, x.golden
	         FROM (SELECT DISTINCT e.customer_id AS rec, c.merged_into AS golden
	               FROM crm.event e JOIN crm.customer c ON c.customer_id = e.customer_id
	               WHERE c.merged_into IS NOT NULL) x
	         ORDER BY 1, 2 LOOP
		moved := moved + crm.move_customer_rows(r.tbl, r.golden, 't.customer_id = $2[1]', ARRAY[r.rec]);
		records := records || r.rec;
	END LOOP;
	FOR r IN SELECT DISTINCT c.merged_into AS golden
	         FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
	         WHERE c.merged_into IS NOT NULL ORDER BY 1 LOOP
		moved := moved + crm.identities_to_golden(r.golden);
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.stitch_strays_by_record() IS
	'Internal (batch stitching on Citus): moves the rows left on merged records to their golden, record by record; returns the rows moved and the records whose orders or events moved';


CREATE OR REPLACE FUNCTION crm.stitch_move_by_merged() RETURNS TABLE (what text, merged bigint, cnt bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	members bigint[];
	survivors bigint[];
BEGIN
	SELECT pg_catalog.array_agg(m.member ORDER BY m.member), pg_catalog.array_agg(m.survivor ORDER BY m.member)
	INTO members, survivors FROM pg_temp.crm_stitch_member m;
	IF members IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY
	SELECT 'orders', m.merged, pg_catalog.sum(x.moved)::bigint
	FROM crm.move_customers('crm.orders', members, survivors) x JOIN pg_temp.crm_stitch_member m ON m.member = x.from_customer
	GROUP BY m.merged;
	RETURN QUERY
	SELECT 'events', m.merged, pg_catalog.sum(x.moved)::bigint
	FROM crm.move_customers('crm.event', members, survivors) x JOIN pg_temp.crm_stitch_member m ON m.member = x.from_customer
	GROUP BY m.merged;
	-- (the identifiers of the pass's goldens read first, each set in a
	-- query of its own: Citus joins a distributed table with a local one
	-- only on the distribution column)
	CREATE TEMP TABLE crm_stitch_idmove ON COMMIT DROP AS
	WITH held AS MATERIALIZED (
		SELECT d.kind, d.value, d.customer_id FROM crm.identity d
		WHERE d.customer_id IN (SELECT v.survivor FROM pg_temp.crm_stitch_pair v)),
	cand AS MATERIALIZED (
		SELECT i.identity_id, i.kind, i.value, i.customer_id FROM crm.identity i
		WHERE i.customer_id IN (SELECT q.merged FROM pg_temp.crm_stitch_pair q))
	SELECT DISTINCT ON (i.kind, i.value, q.survivor) i.identity_id, q.survivor, q.merged
	FROM cand i JOIN pg_temp.crm_stitch_pair q ON i.customer_id = q.merged
	WHERE (i.kind, i.value, q.survivor) NOT IN (SELECT h.kind, h.value, h.customer_id FROM held h)
	ORDER BY i.kind, i.value, q.survivor, i.identity_id;
	PERFORM crm.move_rows_on_citus('crm.identity',
		'USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) m(id, t2) WHERE t.identity_id OPERATOR(pg_catalog.=) m.id',
		'm.t2',
		ARRAY(SELECT x.identity_id FROM pg_temp.crm_stitch_idmove x ORDER BY x.identity_id),
		ARRAY(SELECT x.survivor FROM pg_temp.crm_stitch_idmove x ORDER BY x.identity_id), NULL);
	RETURN QUERY SELECT 'identities', x.merged, pg_catalog.count(*) FROM pg_temp.crm_stitch_idmove x GROUP BY x.merged;
	DROP TABLE pg_temp.crm_stitch_idmove;
END
$$;
COMMENT ON FUNCTION crm.stitch_move_by_merged() IS
	'Internal (batch stitching on Citus): moves each merged golden''s orders, events and identifiers to its survivor; returns the counts per merged golden';


CREATE OR REPLACE FUNCTION crm.move_customers(tbl regclass, froms bigint[], tos bigint[])
RETURNS TABLE (from_customer bigint, moved bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT crm.on_citus() THEN
		RETURN QUERY EXECUTE pg_catalog.format(
			'WITH u AS (UPDATE %s t SET customer_id = m.t2 FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) m(f, t2) '
			'WHERE t.customer_id OPERATOR(pg_catalog.=) m.f RETURNING m.f) '
			'SELECT u.f, pg_catalog.count(*) FROM u GROUP BY u.f', tbl) USING froms, tos;
		RETURN;
	END IF;
	RETURN QUERY SELECT * FROM crm.move_rows_on_citus(tbl,
		'USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) m(f, t2) WHERE t.customer_id OPERATOR(pg_catalog.=) m.f',
		'm.t2', froms, tos, NULL);
	IF tbl = 'crm.orders'::regclass THEN
		-- (all of these customers' orders moved: all their lines follow)
		PERFORM crm.move_customers('crm.order_line', froms, tos);
	END IF;
END
$$;
COMMENT ON FUNCTION crm.move_customers(regclass, bigint[], bigint[]) IS
	'Internal: moves every row of tbl of customer froms[i] to customer tos[i] (an order''s lines with it), as crm.move_customer_rows does for one; returns the rows moved per customer they left';


CREATE OR REPLACE FUNCTION crm.move_rows_on_citus(tbl regclass, from_clause text, to_expr text, a bigint[], b bigint[], c bigint)
RETURNS TABLE (from_customer bigint, moved bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cols text;
	vals text;
	held text := pg_catalog.current_setting('session_replication_role');
BEGIN
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x.attname), ', ' ORDER BY x.attnum),
	       pg_catalog.string_agg(CASE WHEN x.attname = 'customer_id' THEN 'g.crm_to' ELSE 'g.' || pg_catalog.quote_ident(x.attname) END,
	                             ', ' ORDER BY x.attnum)
	INTO cols, vals
	FROM pg_catalog.pg_attribute x
	WHERE x.attrelid = tbl AND x.attnum > 0 AND NOT x.attisdropped AND x.attgenerated = '';
	PERFORM crm.citus_one_connection_per_worker();
	PERFORM crm.set_local_on_cluster('session_replication_role', 'replica');
	RETURN QUERY EXECUTE pg_catalog.format(
		'WITH gone AS (DELETE FROM %1$s t %2$s RETURNING t.*, %3$s AS crm_to), '
		'put AS (INSERT INTO %1$s (%4$s) SELECT %5$s FROM gone g RETURNING 1) '
		'SELECT g.customer_id, pg_catalog.count(*) FROM gone g GROUP BY g.customer_id', tbl, from_clause, to_expr, cols, vals)
	USING c, a, b;
	PERFORM crm.set_local_on_cluster('session_replication_role', held);
END
$$;
COMMENT ON FUNCTION crm.move_rows_on_citus(regclass, text, text, bigint[], bigint[], bigint) IS
	'Internal (Citus): deletes the rows of tbl from_clause picks and inserts them again with customer to_expr, on its shard, crm''s triggers held back on every node; returns the rows moved per customer they left';


CREATE OR REPLACE FUNCTION crm.distribute_functions()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f regprocedure;
BEGIN
	FOREACH f IN ARRAY ARRAY['crm.redeem_points(bigint,bigint,text,timestamptz)', 'crm.adjust_points(bigint,bigint,text,text,timestamptz)',
	                         'crm.points_balance(bigint,timestamptz)', 'crm.points_expiring(bigint,interval,timestamptz)',
	                         'crm.qualifying_spend(bigint,timestamptz)']::regprocedure[] LOOP
		PERFORM pg_catalog.create_distributed_function(f, 'customer_id', colocate_with => 'crm.customer');
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_functions() IS
	'crm.distribute(): the entry points that take a customer id run on the worker that holds the customer when called on their own (Citus function call delegation)';


CREATE OR REPLACE FUNCTION crm.line_join(l text, o text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN pg_catalog.format('%1$I.order_id OPERATOR(pg_catalog.=) %2$I.order_id', l, o)
	    || CASE WHEN crm.on_citus() THEN pg_catalog.format(' AND %1$I.customer_id OPERATOR(pg_catalog.=) %2$I.customer_id', l, o) ELSE '' END;
END
$$;
COMMENT ON FUNCTION crm.line_join(text, text) IS
	'Internal: the join condition of order lines (alias l) to their orders (alias o): by order_id, and on Citus by customer_id too';


CREATE OR REPLACE FUNCTION crm.lock_rows(tbl regclass, ids bigint[], strength text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	IF strength NOT IN ('UPDATE', 'NO KEY UPDATE', 'SHARE') THEN
		RAISE EXCEPTION 'lock strength must be UPDATE, NO KEY UPDATE or SHARE, not %', strength
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %s t WHERE t.customer_id OPERATOR(pg_catalog.=) ANY ($1) '
		                          'ORDER BY t.customer_id FOR %s) x', tbl, strength) USING ids;
		RETURN;
	END IF;
	PERFORM crm.citus_one_connection_per_worker();
	FOR id IN SELECT DISTINCT u.id FROM pg_catalog.unnest(ids) u(id) ORDER BY 1 LOOP
		EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %s t WHERE t.customer_id OPERATOR(pg_catalog.=) $1 FOR %s) x',
		                          tbl, strength) USING id;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.lock_rows(regclass, bigint[], text) IS
	'Internal: locks the rows of customers ids in tbl FOR strength (UPDATE, NO KEY UPDATE, SHARE) in customer_id order';


-- A golden customer's tier: its account's, or the lowest tier for a
-- customer without an account (one who has earned nothing yet).
CREATE FUNCTION crm.customer_tier(golden bigint) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN COALESCE((SELECT a.tier FROM crm.loyalty_account a WHERE a.customer_id = golden),
                (SELECT x.tier FROM crm.tier x ORDER BY x.rank LIMIT 1));
COMMENT ON FUNCTION crm.customer_tier(bigint) IS
	'The tier of a golden customer: its loyalty account''s, or the lowest tier without an account';

-- ===========================================================================
-- coupons/coupons.sql: coupon templates and coupons (issue 16, first part).
--
-- A template says what a coupon gives and under which rules; a coupon is
-- one use of it issued to one customer, with an unguessable code
-- (coupon_code.c).  At checkout a coupon is reserved for an order (it
-- counts against the customer's limit until the reservation is released,
-- redeemed or expires: crm.tick releases it), then redeemed on the order,
-- exactly once: a retry on the same order returns the first result, any
-- other use is refused.  Every change of a coupon is a row of
-- crm.coupon_journal written in the same transaction.
--
-- Rejections have SQLSTATEs of their own (README, "Coupons"):
--   CR301 unknown code    CR302 expired          CR303 not yet valid
--   CR304 out of stock    CR305 customer limit   CR306 budget spent
--   CR307 not eligible
--   CR308 used or reserved for another order     CR309 not the customer's
--   CR310 does not stack with a coupon used on the order
--
-- Lock order (DEVELOPER.md): the golden customer FOR SHARE
-- (crm.lock_customer), a redemption's order, the template row (issuing),
-- the coupon row, the customer's usage row of the template
-- (crm.coupon_usage), the template's budget row (crm.coupon_budget).
-- ===========================================================================

CREATE TABLE crm.coupon_template (
	template_id			integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	kind				text NOT NULL CONSTRAINT coupon_template_kind_valid
		CHECK (kind IN ('amount_off', 'percent_off', 'free_delivery', 'gift_item')),
	amount_off			numeric(14,2) CONSTRAINT coupon_template_amount_positive CHECK (amount_off > 0),
	percent_off			numeric(5,2) CONSTRAINT coupon_template_percent_range CHECK (percent_off > 0 AND percent_off <= 100),
	max_discount		numeric(14,2) CONSTRAINT coupon_template_cap_positive CHECK (max_discount > 0),
	gift_sku			text,
	min_spend			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT coupon_template_min_spend_valid CHECK (min_spend >= 0),
	valid_from			timestamptz,
	valid_until			timestamptz,
	valid_days			integer CONSTRAINT coupon_template_days_positive CHECK (valid_days > 0),
	stock				bigint CONSTRAINT coupon_template_stock_valid CHECK (stock >= 0),
	issued				bigint NOT NULL DEFAULT 0,
	per_customer_limit	integer CONSTRAINT coupon_template_limit_positive CHECK (per_customer_limit > 0),
	eligible_tiers		text[] CONSTRAINT coupon_template_tiers_given CHECK (pg_catalog.cardinality(eligible_tiers) > 0),
	eligible_categories	text[] CONSTRAINT coupon_template_categories_given CHECK (pg_catalog.cardinality(eligible_categories) > 0),
	eligible_skus		text[] CONSTRAINT coupon_template_skus_given CHECK (pg_catalog.cardinality(eligible_skus) > 0),
	restore_on_refund	boolean NOT NULL DEFAULT false,
	stacking			text NOT NULL DEFAULT 'exclusive' CONSTRAINT coupon_template_stacking_valid
		CHECK (stacking IN ('exclusive', 'combinable')),
	percent_base		text NOT NULL DEFAULT 'before_discounts' CONSTRAINT coupon_template_percent_base_valid
		CHECK (percent_base IN ('before_discounts', 'after_discounts')),
	budget_count		bigint CONSTRAINT coupon_template_budget_count_positive CHECK (budget_count > 0),
	budget_value		numeric(14,2) CONSTRAINT coupon_template_budget_value_positive CHECK (budget_value > 0),
	budget_period		text CONSTRAINT coupon_template_budget_period_valid CHECK (budget_period IN ('day', 'week', 'month')),
	enabled				boolean NOT NULL DEFAULT true,
	CONSTRAINT coupon_template_kind_fields CHECK (CASE kind
		WHEN 'amount_off' THEN amount_off IS NOT NULL AND percent_off IS NULL AND gift_sku IS NULL
		WHEN 'percent_off' THEN percent_off IS NOT NULL AND amount_off IS NULL AND gift_sku IS NULL
		WHEN 'gift_item' THEN gift_sku IS NOT NULL AND amount_off IS NULL AND percent_off IS NULL
		ELSE amount_off IS NULL AND percent_off IS NULL AND gift_sku IS NULL END),
	CONSTRAINT coupon_template_cap_percent CHECK (max_discount IS NULL OR kind = 'percent_off'),
	CONSTRAINT coupon_template_validity CHECK ((valid_until IS NULL) <> (valid_days IS NULL)),
	CONSTRAINT coupon_template_window CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until),
	CONSTRAINT coupon_template_stock_held CHECK (stock IS NULL OR issued <= stock),
	CONSTRAINT coupon_template_budget_has_cap CHECK (budget_period IS NULL OR budget_count IS NOT NULL OR budget_value IS NOT NULL)
);
COMMENT ON TABLE crm.coupon_template IS
	'What a coupon gives (kind: amount_off, percent_off with an optional max_discount, free_delivery, gift_item) and its rules: min_spend of the order, validity (a fixed window ending at valid_until, or valid_days from issue), stock (coupons that may be issued; issued counts them), per_customer_limit (coupons of the template a golden customer may hold reserved or redeemed), eligible_tiers (NULL: every tier), eligible_categories and eligible_skus (the coupon applies to the order''s lines of these: min_spend and the discount count them only; NULL: the whole order), restore_on_refund (a fully refunded order gives its coupon back while the coupon is valid), stacking (exclusive: alone on an order; combinable: with other combinable coupons of other templates), percent_base (a percent off the order''s amount before or after the discounts of the coupons used on it before), budget_count and budget_value (redemptions and discount given per budget_period: day, week or month in the programme''s time zone; NULL: over the template''s life)';
COMMENT ON COLUMN crm.coupon_template.issued IS 'Coupons issued so far; never more than stock';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_template', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_template_template_id_seq', '');

CREATE SEQUENCE crm.coupon_id_seq;
CREATE TABLE crm.coupon (
	coupon_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.coupon_id_seq'),
	code				text NOT NULL CONSTRAINT coupon_code_unique UNIQUE,
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	issued_at			timestamptz NOT NULL,
	valid_from			timestamptz NOT NULL,
	valid_until			timestamptz NOT NULL,
	status				text NOT NULL DEFAULT 'issued' CONSTRAINT coupon_status_valid
		CHECK (status IN ('issued', 'reserved', 'redeemed', 'expired')),
	order_ref			text,
	reserved_until		timestamptz,
	order_id			bigint,
	discount			numeric(14,2),
	redeemed_at			timestamptz,
	issue_key			text,
	CONSTRAINT coupon_reserved_fields CHECK ((status = 'reserved') = (reserved_until IS NOT NULL)),
	CONSTRAINT coupon_redeemed_fields CHECK ((status = 'redeemed') = (order_id IS NOT NULL AND redeemed_at IS NOT NULL AND discount IS NOT NULL))
);
CREATE INDEX coupon_customer_idx ON crm.coupon (customer_id, template_id);
CREATE INDEX coupon_reserved_idx ON crm.coupon (reserved_until) WHERE status = 'reserved';
CREATE INDEX coupon_valid_until_idx ON crm.coupon (valid_until) WHERE status IN ('issued', 'reserved');
CREATE UNIQUE INDEX coupon_issue_key_unique ON crm.coupon (issue_key) WHERE issue_key IS NOT NULL;
CREATE INDEX coupon_order_idx ON crm.coupon (order_id) WHERE order_id IS NOT NULL;
COMMENT ON TABLE crm.coupon IS
	'Coupons issued to customers: code (crm.coupon_code: random, with a check character), validity, and where the coupon stands: issued, reserved for an order (order_ref, until reserved_until), redeemed on an order (order_id, the discount given), or expired';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_id_seq', '');

-- How many coupons of a template a golden customer holds reserved or
-- redeemed: the row crm.coupon_take_use locks and counts against the
-- template's per_customer_limit, so that two checkouts at once cannot both
-- take the last use.
CREATE TABLE crm.coupon_usage (
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	used				integer NOT NULL CONSTRAINT coupon_usage_not_negative CHECK (used >= 0),
	PRIMARY KEY (customer_id, template_id)
);
COMMENT ON TABLE crm.coupon_usage IS 'Coupons of a template each golden customer holds reserved or redeemed (counted against per_customer_limit)';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_usage', '');

-- What each template's budget has spent per period (crm.coupon_take_budget
-- locks the row): redemptions and the discount they gave.
CREATE TABLE crm.coupon_budget (
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	period_start		timestamptz NOT NULL,
	redeemed			bigint NOT NULL CONSTRAINT coupon_budget_redeemed_not_negative CHECK (redeemed >= 0),
	discount			numeric(14,2) NOT NULL CONSTRAINT coupon_budget_discount_not_negative CHECK (discount >= 0),
	PRIMARY KEY (template_id, period_start)
);
COMMENT ON TABLE crm.coupon_budget IS 'Redemptions and discount given per coupon template and budget period (period_start -infinity: the template''s whole life)';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_budget', '');

CREATE SEQUENCE crm.coupon_journal_id_seq;
CREATE TABLE crm.coupon_journal (
	entry_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.coupon_journal_id_seq'),
	coupon_id			bigint NOT NULL,
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	change				text NOT NULL CONSTRAINT coupon_journal_change_valid
		CHECK (change IN ('issue', 'reserve', 'release', 'redeem', 'restore', 'expire')),
	order_ref			text,
	order_id			bigint,
	discount			numeric(14,2),
	at					timestamptz NOT NULL,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX coupon_journal_coupon_idx ON crm.coupon_journal (coupon_id);
COMMENT ON TABLE crm.coupon_journal IS 'Every change of a coupon (issue, reserve, release, redeem, restore after a refund, expire), written in the transaction that made it';
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_journal', '');
SELECT pg_catalog.pg_extension_config_dump('crm.coupon_journal_id_seq', '');

CREATE FUNCTION crm.coupon_code() RETURNS text
	LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'crm_coupon_code';
COMMENT ON FUNCTION crm.coupon_code() IS
	'A new coupon code: 20 random Crockford base-32 characters (100 bits) and a check character';

CREATE FUNCTION crm.coupon_code_normal(typed text) RETURNS text
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_coupon_code_normal';
COMMENT ON FUNCTION crm.coupon_code_normal(text) IS
	'A typed coupon code as stored (upper case, I/L read as 1 and O as 0, hyphens and spaces dropped) when its check character matches; NULL when it is not a well-formed code';

-- ---------------------------------------------------------------------------
-- Issuing
-- ---------------------------------------------------------------------------

-- Takes n coupons of a template's stock (the template row locked until the
-- transaction ends) and returns the template; refuses a disabled template
-- (CR307), one whose fixed window has ended (CR302) and one with fewer than
-- n left (CR304).
CREATE FUNCTION crm.coupon_take_stock(template integer, n bigint, at timestamptz)
RETURNS crm.coupon_template
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.coupon_template;
BEGIN
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = template FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'coupon template % does not exist', template
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF NOT t.enabled THEN
		RAISE EXCEPTION 'coupon template "%" is disabled', t.name
			USING ERRCODE = 'CR307', HINT = 'UPDATE crm.coupon_template SET enabled = true to issue it again.';
	END IF;
	IF t.valid_until IS NOT NULL AND t.valid_until <= at THEN
		RAISE EXCEPTION 'coupon template "%" ended at %', t.name, t.valid_until
			USING ERRCODE = 'CR302';
	END IF;
	IF t.stock IS NOT NULL AND t.issued + n > t.stock THEN
		RAISE EXCEPTION 'coupon template "%" has % coupons left, % asked for', t.name, t.stock - t.issued, n
			USING ERRCODE = 'CR304';
	END IF;
	UPDATE crm.coupon_template x SET issued = x.issued + n WHERE x.template_id = template;
	t.issued := t.issued + n;
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_stock(integer, bigint, timestamptz) IS
	'Internal: takes n coupons of the template''s stock (row locked); CR307 disabled, CR302 ended, CR304 not enough left, 23503 unknown template';

-- The coupons of template t for customers (golden ids), issued at "at", in
-- one statement; journaled.  issue_keys, when given, holds each one's key
-- (same order).  Returns them.
CREATE FUNCTION crm.coupon_insert(t crm.coupon_template, customers bigint[], issue_keys text[], at timestamptz)
RETURNS SETOF crm.coupon
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN QUERY
	WITH made AS (
		INSERT INTO crm.coupon (code, template_id, customer_id, issued_at, valid_from, valid_until, issue_key)
		SELECT crm.coupon_code(), t.template_id, u.c, at, GREATEST(COALESCE(t.valid_from, at), at),
		       COALESCE(t.valid_until, at + pg_catalog.make_interval(days => t.valid_days)), u.k
		FROM ROWS FROM (pg_catalog.unnest(customers), pg_catalog.unnest(issue_keys)) u(c, k)
		RETURNING *),
	j AS (
		INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, at)
		SELECT m.coupon_id, m.customer_id, 'issue', at FROM made m)
	SELECT * FROM made;
END
$$;
COMMENT ON FUNCTION crm.coupon_insert(crm.coupon_template, bigint[], text[], timestamptz) IS
	'Internal: inserts and journals the coupons of a template for golden customers (with their issue keys, when given)';

CREATE FUNCTION crm.issue_coupon(template integer, customer_id bigint, issue_key text DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: issue_key may be NULL; other NULLs are errors.
DECLARE
	g bigint;
	c crm.coupon;
BEGIN
	PERFORM crm.refuse_on_citus('crm.issue_coupon()');
	IF template IS NULL OR customer_id IS NULL OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'crm.issue_coupon needs a template, a customer and a finite time'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	g := crm.lock_customer(customer_id);
	IF issue_key IS NOT NULL THEN
		-- exactly once per key: a retry returns the first code
		SELECT * INTO c FROM crm.coupon x WHERE x.issue_key = issue_coupon.issue_key;
		IF FOUND THEN
			IF c.template_id <> template OR crm.golden_customer(c.customer_id) <> g THEN
				RAISE EXCEPTION 'issue key "%" was used for another coupon', issue_key
					USING ERRCODE = 'CR002', HINT = 'An issue key names one coupon of one template for one customer.';
			END IF;
			RETURN c.code;
		END IF;
	END IF;
	BEGIN
		SELECT * INTO c FROM crm.coupon_insert(crm.coupon_take_stock(template, 1, at), ARRAY[g], ARRAY[issue_key], at);
	EXCEPTION WHEN unique_violation THEN
		-- a concurrent issue with the same key committed first: its coupon
		-- (the stock this one took is given back with the subtransaction)
		SELECT * INTO c FROM crm.coupon x WHERE x.issue_key = issue_coupon.issue_key;
		IF NOT FOUND THEN
			RAISE;
		END IF;
		IF c.template_id <> template OR crm.golden_customer(c.customer_id) <> g THEN
			RAISE EXCEPTION 'issue key "%" was used for another coupon', issue_key
				USING ERRCODE = 'CR002', HINT = 'An issue key names one coupon of one template for one customer.';
		END IF;
	END;
	RETURN c.code;
END
$$;
COMMENT ON FUNCTION crm.issue_coupon(integer, bigint, text, timestamptz) IS
	'Issues one coupon of a template to a customer (its golden customer) and returns the code; exactly once per issue_key (a retry returns the first code, CR002 for another template or customer); CR307 disabled template, CR302 ended, CR304 out of stock, 23503 unknown customer or template';

CREATE FUNCTION crm.issue_coupons(template integer, customers bigint[], at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- One coupon for each golden customer of the given records (a record and
-- its golden, or two records of one golden, get one), in one statement:
-- all or none (CR304 when the stock cannot cover them all).
DECLARE
	goldens bigint[];
BEGIN
	PERFORM crm.refuse_on_citus('crm.issue_coupons()');
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	goldens := ARRAY(SELECT DISTINCT crm.resolve_customer(u.c) FROM pg_catalog.unnest(customers) u(c) ORDER BY 1);
	IF pg_catalog.array_position(goldens, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'customers must not hold NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.lock_rows('crm.customer', goldens, 'SHARE');
	RETURN (SELECT pg_catalog.count(*) FROM crm.coupon_insert(
		crm.coupon_take_stock(template, pg_catalog.cardinality(goldens), at), goldens, NULL, at));
END
$$;
COMMENT ON FUNCTION crm.issue_coupons(integer, bigint[], timestamptz) IS
	'Issues one coupon of a template to the golden customer of each given record, all in one statement, and returns how many; CR304 when the stock cannot cover them all (none issued), CR307 disabled, CR302 ended, 23503 an unknown customer or template';

-- ---------------------------------------------------------------------------
-- Reserving and redeeming
-- ---------------------------------------------------------------------------

-- The coupon golden customer presents, locked (the caller locked the
-- customer first, crm.lock_customer): the code checked (CR301 for a
-- mistyped or unknown one), and the coupon the customer's (CR309).
CREATE FUNCTION crm.coupon_of(code text, golden bigint) RETURNS crm.coupon
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	normal text;
	c crm.coupon;
BEGIN
	PERFORM crm.refuse_on_citus('coupons');
	IF code IS NULL OR golden IS NULL THEN
		RAISE EXCEPTION 'a coupon code and a customer are needed' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	normal := crm.coupon_code_normal(code);
	IF normal IS NULL THEN
		RAISE EXCEPTION 'coupon code "%" is not a valid code', code
			USING ERRCODE = 'CR301', HINT = 'A code has 21 characters, the last a check character; check for a typing error.';
	END IF;
	SELECT * INTO c FROM crm.coupon x WHERE x.code = normal FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'coupon % does not exist', normal USING ERRCODE = 'CR301';
	END IF;
	IF crm.golden_customer(c.customer_id) <> golden THEN
		RAISE EXCEPTION 'coupon % belongs to another customer', normal USING ERRCODE = 'CR309';
	END IF;
	RETURN c;
END
$$;
COMMENT ON FUNCTION crm.coupon_of(text, bigint) IS
	'Internal: the coupon with a typed code, locked, presented by a golden customer the caller locked; CR301 unknown or mistyped code, CR309 another customer''s';

-- Counts one more use of the coupon's template against the golden
-- customer's limit (CR305 when none is left), or one fewer (used < 0).
CREATE FUNCTION crm.coupon_take_use(golden bigint, template integer, delta integer)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.coupon_template;
BEGIN
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = template;
	INSERT INTO crm.coupon_usage AS u (customer_id, template_id, used)
	VALUES (golden, template, GREATEST(delta, 0))
	ON CONFLICT (customer_id, template_id) DO UPDATE SET used = u.used + excluded.used + LEAST(delta, 0);
	IF delta > 0 AND t.per_customer_limit IS NOT NULL
	   AND (SELECT u.used FROM crm.coupon_usage u WHERE u.customer_id = golden AND u.template_id = template) > t.per_customer_limit THEN
		RAISE EXCEPTION 'customer % has used % coupons of template "%" already, its limit', golden, t.per_customer_limit, t.name
			USING ERRCODE = 'CR305', HINT = 'Coupons reserved for an order count until they are released or their reservation lapses.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_use(bigint, integer, integer) IS
	'Internal: counts delta uses of a template for a golden customer (the usage row locked); CR305 past the template''s per_customer_limit';

-- A coupon (locked by the caller) back to issued, its use given back and
-- the change journaled: a reservation released ('release', also one that
-- lapsed, found by the tick or the next checkout), or a redemption undone
-- by a refund ('restore', the budget's share given back too).
CREATE FUNCTION crm.coupon_give_back(c crm.coupon, change text, at timestamptz) RETURNS crm.coupon
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	was crm.coupon := c;
BEGIN
	UPDATE crm.coupon x SET status = 'issued', order_ref = NULL, reserved_until = NULL,
		order_id = NULL, discount = NULL, redeemed_at = NULL
	WHERE x.coupon_id = c.coupon_id AND x.customer_id = c.customer_id
	RETURNING * INTO c;
	PERFORM crm.coupon_take_use(crm.golden_customer(c.customer_id), c.template_id, -1);
	IF was.status = 'redeemed' THEN
		PERFORM crm.coupon_take_budget(x, was.redeemed_at, -1, was.discount) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	END IF;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_id, at)
	VALUES (c.coupon_id, c.customer_id, change, was.order_id, at);
	RETURN c;
END
$$;
COMMENT ON FUNCTION crm.coupon_give_back(crm.coupon, text, timestamptz) IS
	'Internal: a reserved or redeemed coupon (locked by the caller) issued again, its use (and a redemption''s budget share) given back, journaled as change (release or restore)';

-- Refuses a coupon that cannot be used at "at": expired (CR302), not yet
-- valid (CR303), used or reserved for another order (CR308).
CREATE FUNCTION crm.coupon_check_usable(c crm.coupon, at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF c.status = 'redeemed' THEN
		RAISE EXCEPTION 'coupon % was used on order %', c.code, c.order_id USING ERRCODE = 'CR308';
	END IF;
	IF c.status = 'reserved' THEN
		RAISE EXCEPTION 'coupon % is reserved for order "%" until %', c.code, c.order_ref, c.reserved_until
			USING ERRCODE = 'CR308', HINT = 'crm.release_coupon gives it back; the reservation also lapses by itself.';
	END IF;
	IF c.status = 'expired' OR c.valid_until <= at THEN
		RAISE EXCEPTION 'coupon % expired at %', c.code, c.valid_until USING ERRCODE = 'CR302';
	END IF;
	IF c.valid_from > at THEN
		RAISE EXCEPTION 'coupon % is valid from %', c.code, c.valid_from USING ERRCODE = 'CR303';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_usable(crm.coupon, timestamptz) IS
	'Internal: CR302 expired, CR303 not yet valid, CR308 used or reserved, for a coupon at a time';

-- Refuses a coupon of template t to a golden customer outside its
-- eligible tiers (CR307; a customer without an account is at the lowest
-- tier), when the template names any.
CREATE FUNCTION crm.coupon_check_eligible(t crm.coupon_template, golden bigint) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tier text;
BEGIN
	IF t.eligible_tiers IS NULL THEN
		RETURN;
	END IF;
	tier := crm.customer_tier(golden);
	IF tier IS NULL OR NOT tier = ANY (t.eligible_tiers) THEN
		RAISE EXCEPTION 'coupons of template "%" are for tiers %, customer % is %', t.name,
			pg_catalog.array_to_string(t.eligible_tiers, ', '), golden, tier
			USING ERRCODE = 'CR307';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_eligible(crm.coupon_template, bigint) IS
	'Internal: CR307 when a golden customer''s tier is not among the template''s eligible_tiers';

CREATE FUNCTION crm.reserve_coupon(code text, customer_id bigint, order_ref text,
	ttl interval DEFAULT '15 minutes', at timestamptz DEFAULT pg_catalog.now())
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns until when the coupon is held.
DECLARE
	c crm.coupon;
	g bigint;
BEGIN
	IF order_ref IS NULL OR ttl IS NULL OR ttl <= '0'::interval OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'a reservation needs an order reference, a positive ttl and a finite time'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	c := crm.coupon_of(code, g);
	IF c.status = 'reserved' AND c.reserved_until > at AND c.order_ref = reserve_coupon.order_ref THEN
		RETURN c.reserved_until;		-- a retry: the first reservation stands
	END IF;
	IF c.status = 'reserved' AND c.reserved_until <= at THEN
		c := crm.coupon_give_back(c, 'release', at);
	END IF;
	PERFORM crm.coupon_check_usable(c, at);
	PERFORM crm.coupon_check_eligible(x, g) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	PERFORM crm.coupon_take_use(g, c.template_id, 1);
	UPDATE crm.coupon x SET status = 'reserved', order_ref = reserve_coupon.order_ref, reserved_until = at + ttl
	WHERE x.coupon_id = c.coupon_id;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_ref, at)
	VALUES (c.coupon_id, c.customer_id, 'reserve', reserve_coupon.order_ref, at);
	RETURN at + ttl;
END
$$;
COMMENT ON FUNCTION crm.reserve_coupon(text, bigint, text, interval, timestamptz) IS
	'Holds a coupon for an order at checkout until at + ttl (counted against the customer''s limit meanwhile) and returns that time; a retry for the same order returns the first reservation; CR301 unknown code, CR302 expired, CR303 not yet valid, CR305 customer limit, CR307 tier not eligible, CR308 used or reserved for another order, CR309 another customer''s';

CREATE FUNCTION crm.release_coupon(code text, customer_id bigint, order_ref text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  False when the coupon was not reserved
-- for this order (released already, say): releasing is safe to retry.
DECLARE
	c crm.coupon;
BEGIN
	IF order_ref IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'releasing needs the order reference it was reserved for'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	c := crm.coupon_of(code, crm.lock_customer(customer_id));
	IF c.status <> 'reserved' OR c.order_ref <> release_coupon.order_ref THEN
		RETURN false;
	END IF;
	PERFORM crm.coupon_give_back(c, 'release', at);
	RETURN true;
END
$$;
COMMENT ON FUNCTION crm.release_coupon(text, bigint, text, timestamptz) IS
	'Gives back a coupon reserved for an order (checkout abandoned); false when it was not reserved for that order';

-- The discount a coupon of template t gives on an order of this amount.
CREATE FUNCTION crm.coupon_discount(t crm.coupon_template, amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE t.kind
	WHEN 'amount_off' THEN LEAST(t.amount_off, amount)
	WHEN 'percent_off' THEN LEAST(pg_catalog.round(amount * t.percent_off / 100, 2), COALESCE(t.max_discount, amount))
	ELSE 0 END;
COMMENT ON FUNCTION crm.coupon_discount(crm.coupon_template, numeric) IS
	'The discount a coupon of a template gives on an order amount: amount_off up to the amount, percent_off rounded to cents up to max_discount; 0 for free delivery and gift items';

-- Refuses a coupon of template t on an order that has coupons already
-- (CR310) unless all of them and t are combinable and none is of t.
CREATE FUNCTION crm.coupon_check_stacking(t crm.coupon_template, order_id bigint) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	other record;
BEGIN
	SELECT k.code, x.name, x.stacking, x.template_id INTO other
	FROM crm.coupon k JOIN crm.coupon_template x ON x.template_id = k.template_id
	WHERE k.order_id = coupon_check_stacking.order_id AND k.status = 'redeemed'
	  AND (t.stacking = 'exclusive' OR x.stacking = 'exclusive' OR x.template_id = t.template_id)
	ORDER BY k.coupon_id LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'order % has a coupon of template "%" already, which does not stack with one of "%"', order_id, other.name, t.name
			USING ERRCODE = 'CR310',
			      HINT = 'Only combinable coupons of different templates are used together on one order.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_check_stacking(crm.coupon_template, bigint) IS
	'Internal: CR310 when an order has a coupon already that a coupon of template t may not join (either exclusive, or the same template)';

-- The start of the budget period of template t that time "at" falls in:
-- the day, week or month in the loyalty programme's time zone, or
-- -infinity for a budget over the template's whole life.
CREATE FUNCTION crm.coupon_budget_period(t crm.coupon_template, at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN t.budget_period IS NULL THEN '-infinity'::timestamptz
            ELSE pg_catalog.date_trunc(t.budget_period, at, (SELECT p.time_zone FROM crm.loyalty_program p)) END;
COMMENT ON FUNCTION crm.coupon_budget_period(crm.coupon_template, timestamptz) IS
	'Internal: the start of the budget period of a coupon template that a time falls in (-infinity without a budget_period)';

-- Counts n redemptions giving value against the budget of template t in
-- the period of "at" (the budget row locked); CR306 past budget_count or
-- budget_value.  n = -1 gives a redemption back (a restored coupon).
CREATE FUNCTION crm.coupon_take_budget(t crm.coupon_template, at timestamptz, n integer, value numeric) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b crm.coupon_budget;
BEGIN
	IF t.budget_count IS NULL AND t.budget_value IS NULL THEN
		RETURN;
	END IF;
	IF n < 0 THEN
		-- (the row exists: the redemption given back was counted in it)
		UPDATE crm.coupon_budget x SET redeemed = x.redeemed + n, discount = x.discount + n * value
		WHERE x.template_id = t.template_id AND x.period_start = crm.coupon_budget_period(t, at);
		RETURN;
	END IF;
	INSERT INTO crm.coupon_budget AS x (template_id, period_start, redeemed, discount)
	VALUES (t.template_id, crm.coupon_budget_period(t, at), n, n * value)
	ON CONFLICT (template_id, period_start) DO UPDATE SET redeemed = x.redeemed + excluded.redeemed, discount = x.discount + excluded.discount
	RETURNING * INTO b;
	IF b.redeemed > t.budget_count OR b.discount > t.budget_value THEN
		RAISE EXCEPTION 'the budget of coupon template "%" is spent%: % redemptions (cap %), % of discount given (cap %)', t.name,
			CASE WHEN t.budget_period IS NULL THEN '' ELSE ' for this ' || t.budget_period END,
			b.redeemed - 1, COALESCE(t.budget_count::text, 'none'), b.discount - value, COALESCE(t.budget_value::text, 'none')
			USING ERRCODE = 'CR306';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.coupon_take_budget(crm.coupon_template, timestamptz, integer, numeric) IS
	'Internal: counts redemptions and their discount against a coupon template''s budget for the period (row locked); CR306 past budget_count or budget_value';

-- What of order o a coupon of template t applies to: the order's net
-- amount, or with eligible categories or skus the amount of its lines of
-- those (scaled down as the order was partly refunded).
CREATE FUNCTION crm.coupon_eligible_amount(t crm.coupon_template, o crm.orders) RETURNS numeric
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN t.eligible_categories IS NULL AND t.eligible_skus IS NULL THEN o.net_amount
            WHEN o.amount = 0 THEN 0
            ELSE pg_catalog.round(COALESCE((SELECT pg_catalog.sum(l.amount) FROM crm.order_line l
                                             WHERE l.order_id = o.order_id
                                               AND (l.category = ANY (t.eligible_categories) OR l.sku = ANY (t.eligible_skus))), 0)
                                  * o.net_amount / o.amount, 2) END;
COMMENT ON FUNCTION crm.coupon_eligible_amount(crm.coupon_template, crm.orders) IS
	'Internal: the amount of an order a coupon of a template applies to: its net amount, or the amount of its lines in the eligible categories or skus (scaled as the order was refunded)';

CREATE FUNCTION crm.redeem_coupon(code text, customer_id bigint, order_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS numeric
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns the discount given.
DECLARE
	c crm.coupon;
	g bigint;
	o crm.orders;
	t crm.coupon_template;
	d numeric;
	base numeric;
BEGIN
	IF order_id IS NULL OR at IS NULL OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'redeeming needs an order and a finite time' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Lock order: the customer, the order (so that coupons used on one
	-- order are decided one at a time: stacking), the coupon.
	g := crm.lock_customer(customer_id);
	SELECT * INTO o FROM crm.orders x WHERE x.order_id = redeem_coupon.order_id FOR NO KEY UPDATE;
	IF NOT FOUND OR o.customer_id <> g THEN
		RAISE EXCEPTION 'order % is not an order of customer %', order_id, customer_id
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	c := crm.coupon_of(code, g);
	IF c.status = 'redeemed' AND c.order_id = redeem_coupon.order_id THEN
		RETURN c.discount;				-- a retry on the same order: the first result
	END IF;
	-- A live reservation for this order (its reference, or the order id) is
	-- consumed; a lapsed one is released first; any other is refused.
	IF c.status = 'reserved' AND c.reserved_until <= at THEN
		c := crm.coupon_give_back(c, 'release', at);
	END IF;
	IF c.status = 'reserved' AND c.order_ref IN (o.external_ref, o.order_id::text) THEN
		PERFORM 1;						-- its use is counted already
	ELSE
		PERFORM crm.coupon_check_usable(c, at);
		PERFORM crm.coupon_check_eligible(x, g) FROM crm.coupon_template x WHERE x.template_id = c.template_id;
		PERFORM crm.coupon_take_use(g, c.template_id, 1);
	END IF;
	SELECT * INTO t FROM crm.coupon_template x WHERE x.template_id = c.template_id;
	base := crm.coupon_eligible_amount(t, o);
	IF o.status <> 'paid' OR base < t.min_spend OR base = 0 THEN
		RAISE EXCEPTION 'order % does not qualify for coupon %: % spent%, % needed', order_id, c.code, base,
			CASE WHEN t.eligible_categories IS NULL AND t.eligible_skus IS NULL THEN '' ELSE ' on eligible lines' END,
			GREATEST(t.min_spend, 0.01)
			USING ERRCODE = 'CR307';
	END IF;
	PERFORM crm.coupon_check_stacking(t, o.order_id);
	d := crm.coupon_discount(t, GREATEST(base - CASE WHEN t.percent_base = 'after_discounts'
		THEN (SELECT COALESCE(pg_catalog.sum(k.discount), 0) FROM crm.coupon k WHERE k.order_id = o.order_id AND k.status = 'redeemed')
		ELSE 0 END, 0));
	PERFORM crm.coupon_take_budget(t, at, 1, d);
	UPDATE crm.coupon x SET status = 'redeemed', order_id = o.order_id, discount = d, redeemed_at = at,
		order_ref = COALESCE(x.order_ref, o.external_ref), reserved_until = NULL
	WHERE x.coupon_id = c.coupon_id;
	INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, order_ref, order_id, discount, at)
	VALUES (c.coupon_id, c.customer_id, 'redeem', o.external_ref, o.order_id, d, at);
	RETURN d;
END
$$;
COMMENT ON FUNCTION crm.redeem_coupon(text, bigint, bigint, timestamptz) IS
	'Uses a coupon on a paid order of the customer and returns the discount, exactly once: a retry on the same order returns the first result; consumes a reservation for the order (its external_ref or order id); CR301 unknown code, CR302 expired, CR303 not yet valid, CR305 customer limit, CR306 budget spent, CR307 order below min_spend or not paid, CR308 used or reserved for another order, CR309 another customer''s, CR310 does not stack with a coupon used on the order, 23503 an order not the customer''s';

-- ---------------------------------------------------------------------------
-- Refunds: a fully refunded order gives its coupon back
-- ---------------------------------------------------------------------------

-- AFTER UPDATE statement trigger on crm.orders: the coupons redeemed on
-- orders this statement fully refunded come back (issued again, their use
-- given back, journaled 'restore') when their template says so
-- (restore_on_refund) and they are still valid; the others stay used.  On
-- a Citus shard it does nothing (coupons do not run on a cluster yet).
CREATE FUNCTION crm.coupons_on_refund() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c crm.coupon;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;
	END IF;
	FOR c IN
		SELECT k.* FROM crm_new n
		JOIN crm_old o ON o.order_id = n.order_id
		JOIN crm.coupon k ON k.order_id = n.order_id AND k.status = 'redeemed'
		JOIN crm.coupon_template t ON t.template_id = k.template_id
		WHERE n.status = 'refunded' AND o.status <> 'refunded'
		  AND t.restore_on_refund AND k.valid_until > pg_catalog.now()
		ORDER BY k.coupon_id
		FOR UPDATE OF k
	LOOP
		PERFORM crm.coupon_give_back(c, 'restore', pg_catalog.now());
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.coupons_on_refund() IS
	'Trigger: the coupons redeemed on orders an UPDATE fully refunded come back when their template has restore_on_refund and they are still valid (journaled restore, use given back)';
CREATE TRIGGER orders_coupons_refund AFTER UPDATE ON crm.orders
	REFERENCING OLD TABLE AS crm_old NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.coupons_on_refund();

-- ---------------------------------------------------------------------------
-- Time: reservations lapse, coupons expire (crm.tick)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.coupons_expire(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	c crm.coupon;
	n bigint := 0;
BEGIN
	-- Lapsed reservations give their use back, coupon by coupon in id
	-- order, each locked as a checkout would lock it (one being used now
	-- is left to its checkout, which releases or redeems it).
	FOR r IN SELECT x.coupon_id, x.customer_id FROM crm.coupon x
	         WHERE x.status = 'reserved' AND x.reserved_until <= at ORDER BY x.coupon_id LOOP
		SELECT * INTO c FROM crm.coupon x
		WHERE x.coupon_id = r.coupon_id AND x.customer_id = r.customer_id
		  AND x.status = 'reserved' AND x.reserved_until <= at
		FOR UPDATE SKIP LOCKED;
		IF FOUND THEN
			PERFORM crm.coupon_give_back(c, 'release', at);
			n := n + 1;
		END IF;
	END LOOP;
	-- Coupons past their validity that nobody holds expire.
	WITH gone AS (
		UPDATE crm.coupon x SET status = 'expired'
		WHERE x.status = 'issued' AND x.valid_until <= at
		RETURNING x.coupon_id, x.customer_id),
	j AS (
		INSERT INTO crm.coupon_journal (coupon_id, customer_id, change, at)
		SELECT g.coupon_id, g.customer_id, 'expire', at FROM gone g)
	SELECT n + pg_catalog.count(*) INTO n FROM gone;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.coupons_expire(timestamptz) IS
	'crm.tick task: releases reservations that lapsed by "at" (their use given back) and expires unused coupons past valid_until; returns how many changed; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('coupons_expire', 120, 'crm.coupons_expire(timestamptz)'::regprocedure, true);

CREATE FUNCTION crm.coupons_expiring(within interval DEFAULT '7 days', at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (coupon_id bigint, code text, customer_id bigint, template text, valid_until timestamptz)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT c.coupon_id, c.code, c.customer_id, t.name, c.valid_until
	FROM crm.coupon c JOIN crm.coupon_template t ON t.template_id = c.template_id
	WHERE c.status = 'issued' AND c.valid_until > at AND c.valid_until <= at + within
	ORDER BY c.valid_until, c.coupon_id;
END;
COMMENT ON FUNCTION crm.coupons_expiring(interval, timestamptz) IS
	'Unused coupons that expire within the interval after "at" (a reminder campaign''s audience), soonest first';

-- ---------------------------------------------------------------------------
-- Merges: a customer's limits count on the golden customer
-- ---------------------------------------------------------------------------

-- The usage rows (coupons reserved or redeemed, per template) of golden
-- customers, recounted from their records' coupons: after a merge the
-- survivor holds both sides' uses, after an unmerge each side its own.  The
-- coupons are locked first (FOR SHARE, after the customers the merge
-- locked), so a tick releasing one of them decides before or after.
CREATE FUNCTION crm.coupon_recount(goldens bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	records bigint[] := ARRAY(SELECT c.customer_id FROM crm.customer c
	                          WHERE c.customer_id = ANY (goldens) OR c.merged_into = ANY (goldens) ORDER BY 1);
BEGIN
	PERFORM crm.lock_rows('crm.coupon', records, 'SHARE');
	DELETE FROM crm.coupon_usage u WHERE u.customer_id = ANY (records);
	INSERT INTO crm.coupon_usage (customer_id, template_id, used)
	SELECT COALESCE(r.merged_into, r.customer_id), k.template_id, pg_catalog.count(*)
	FROM crm.customer r JOIN crm.coupon k ON k.customer_id = r.customer_id
	WHERE r.customer_id = ANY (records) AND k.status IN ('reserved', 'redeemed')
	GROUP BY 1, 2;
END
$$;
COMMENT ON FUNCTION crm.coupon_recount(bigint[]) IS
	'Internal: recounts the coupon uses (reserved or redeemed, per template) of golden customers from their records'' coupons';

CREATE FUNCTION crm.coupons_on_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.coupon_recount(ARRAY[survivor, merged]);
END
$$;
COMMENT ON FUNCTION crm.coupons_on_merge(bigint, bigint) IS
	'Customer hook (merge, unmerge): the coupon uses of both customers recounted, so per-customer limits count on the golden customer';

CREATE FUNCTION crm.coupons_on_merge_set(survivors bigint[], merged bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.coupon_recount(survivors || merged);
END
$$;
COMMENT ON FUNCTION crm.coupons_on_merge_set(bigint[], bigint[]) IS
	'Customer hook (merge, set_fn): crm.coupons_on_merge for many merges at once';

INSERT INTO crm.customer_hook (event, hook, run_order, fn, builtin, set_fn) VALUES
	('merge', 'coupons', 200, 'crm.coupons_on_merge(bigint, bigint)'::regprocedure, true,
	 'crm.coupons_on_merge_set(bigint[], bigint[])'::regprocedure),
	('unmerge', 'coupons', 200, 'crm.coupons_on_merge(bigint, bigint)'::regprocedure, true, NULL);

-- ---------------------------------------------------------------------------
-- Tier benefits: crm.tier.benefits that come as coupons, issued by crm.tick
-- ---------------------------------------------------------------------------

-- Which coupon template a benefit of crm.tier.benefits gives, and how often:
-- every month, or once a year in the customer's birthday month.  A benefit
-- no row names (concierge, say) is a service, not a coupon.
CREATE TABLE crm.tier_benefit_coupon (
	benefit				text PRIMARY KEY CONSTRAINT tier_benefit_coupon_name_format CHECK (benefit ~ '^[a-z][a-z0-9_]{0,39}$'),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	every				text NOT NULL CONSTRAINT tier_benefit_coupon_every_valid CHECK (every IN ('month', 'birthday'))
);
COMMENT ON TABLE crm.tier_benefit_coupon IS
	'The tier benefits (keys of crm.tier.benefits set to true) that come as a coupon of template_id: every month, or every year in the member''s birthday month (every = birthday); issued by the tick task tier_benefits, once per member and period';
SELECT pg_catalog.pg_extension_config_dump('crm.tier_benefit_coupon', '');

CREATE FUNCTION crm.tier_benefits(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
-- For each benefit that comes as a coupon, one coupon to every golden
-- member whose tier has it (and, yearly, whose birthday month it is in the
-- programme's time zone), once per period: the period is in the coupon's
-- issue key (benefit:<benefit>:<period>:<customer>), which is unique, so a
-- second tick in the same period issues nothing.  Returns the coupons issued.
DECLARE
	b record;
	tz text := (SELECT p.time_zone FROM crm.loyalty_program p);
	period text;
	members bigint[];
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;		-- coupons do not run on a cluster yet
	END IF;
	FOR b IN SELECT * FROM crm.tier_benefit_coupon x ORDER BY x.benefit LOOP
		period := pg_catalog.to_char(at AT TIME ZONE tz, CASE b.every WHEN 'month' THEN 'YYYY-MM' ELSE 'YYYY' END);
		members := ARRAY(
			SELECT a.customer_id
			FROM crm.loyalty_account a
			JOIN crm.tier t ON t.tier = a.tier AND (t.benefits ->> b.benefit) = 'true'
			JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
			WHERE (b.every = 'month' OR pg_catalog.date_part('month', c.birthday) = pg_catalog.date_part('month', at AT TIME ZONE tz))
			  AND NOT EXISTS (SELECT 1 FROM crm.coupon k
			                  WHERE k.issue_key = pg_catalog.format('benefit:%s:%s:%s', b.benefit, period, a.customer_id))
			ORDER BY 1);
		IF members = '{}' THEN
			CONTINUE;
		END IF;
		PERFORM crm.lock_rows('crm.customer', members, 'SHARE');
		n := n + (SELECT pg_catalog.count(*) FROM crm.coupon_insert(
			crm.coupon_take_stock(b.template_id, pg_catalog.cardinality(members), at), members,
			ARRAY(SELECT pg_catalog.format('benefit:%s:%s:%s', b.benefit, period, u.c) FROM pg_catalog.unnest(members) WITH ORDINALITY u(c, i) ORDER BY u.i),
			at));
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.tier_benefits(timestamptz) IS
	'crm.tick task: issues the coupons of the tier benefits in crm.tier_benefit_coupon to every golden member whose tier has them (yearly ones in the birthday month), once per member and period (the period is in the issue key); returns how many; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('tier_benefits', 130, 'crm.tier_benefits(timestamptz)'::regprocedure, true);

-- ---------------------------------------------------------------------------
-- Reports
-- ---------------------------------------------------------------------------
CREATE VIEW crm.v_coupon_templates AS
SELECT t.template_id, t.name, t.kind, t.issued, t.stock,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'issued') AS open,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'reserved') AS reserved,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'redeemed') AS redeemed,
       pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'expired') AS expired,
       pg_catalog.round(pg_catalog.count(c.coupon_id) FILTER (WHERE c.status = 'redeemed')::numeric
                        / NULLIF(pg_catalog.count(c.coupon_id), 0), 4) AS redemption_rate,
       COALESCE(pg_catalog.sum(c.discount) FILTER (WHERE c.status = 'redeemed'), 0) AS discount_given
FROM crm.coupon_template t
LEFT JOIN crm.coupon c ON c.template_id = t.template_id
GROUP BY t.template_id;
COMMENT ON VIEW crm.v_coupon_templates IS
	'Per coupon template: coupons issued (and stock), open, reserved, redeemed and expired now, the redemption rate (redeemed / issued) and the discount given';

-- ===========================================================================
-- rewards/rewards.sql: the rewards catalogue (issue 16).
--
-- A reward is something a member takes for points: goods, an in-store
-- service or a partner's benefit, each handed over as a coupon of a
-- template (a gift item, a free service, a partner's amount off).
-- crm.exchange_points spends the points (FIFO by expiry, through
-- crm.redeem_points) and issues the coupons in one transaction, exactly
-- once per idempotency key; stock is never oversold.
--
-- Lock order: the golden customer FOR SHARE, the reward row, the loyalty
-- account (crm.redeem_points), the coupon template row (issuing).
-- ===========================================================================

CREATE TABLE crm.reward (
	reward_id			integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	kind				text NOT NULL CONSTRAINT reward_kind_valid CHECK (kind IN ('goods', 'service', 'partner')),
	points_price		bigint NOT NULL CONSTRAINT reward_price_positive CHECK (points_price > 0),
	template_id			integer NOT NULL REFERENCES crm.coupon_template (template_id),
	stock				bigint CONSTRAINT reward_stock_valid CHECK (stock >= 0),
	exchanged			bigint NOT NULL DEFAULT 0,
	per_customer_limit	integer CONSTRAINT reward_limit_positive CHECK (per_customer_limit > 0),
	eligible_tiers		text[] CONSTRAINT reward_tiers_given CHECK (pg_catalog.cardinality(eligible_tiers) > 0),
	valid_from			timestamptz,
	valid_until			timestamptz,
	enabled				boolean NOT NULL DEFAULT true,
	CONSTRAINT reward_stock_held CHECK (stock IS NULL OR exchanged <= stock),
	CONSTRAINT reward_window CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_from < valid_until)
);
COMMENT ON TABLE crm.reward IS
	'The rewards catalogue: goods, in-store services and partner benefits members take for points_price points each, handed over as coupons of template_id; stock (exchanged counts it), per_customer_limit (per golden customer), eligible_tiers, validity window';
SELECT pg_catalog.pg_extension_config_dump('crm.reward', '');
SELECT pg_catalog.pg_extension_config_dump('crm.reward_reward_id_seq', '');

CREATE SEQUENCE crm.reward_exchange_id_seq;
CREATE TABLE crm.reward_exchange (
	exchange_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.reward_exchange_id_seq'),
	reward_id			integer NOT NULL REFERENCES crm.reward (reward_id),
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	qty					integer NOT NULL CONSTRAINT reward_exchange_qty_positive CHECK (qty > 0),
	points				bigint NOT NULL,
	codes				text[] NOT NULL,
	idempotency_key		text NOT NULL CONSTRAINT reward_exchange_key_unique UNIQUE,
	at					timestamptz NOT NULL
);
CREATE INDEX reward_exchange_customer_idx ON crm.reward_exchange (customer_id, reward_id);
COMMENT ON TABLE crm.reward_exchange IS 'Every exchange of points for rewards: who, what, how many, the points spent and the coupon codes handed over';
SELECT pg_catalog.pg_extension_config_dump('crm.reward_exchange', '');
SELECT pg_catalog.pg_extension_config_dump('crm.reward_exchange_id_seq', '');

-- Locks a reward and refuses it to golden customer g for qty at "at": 23503
-- unknown, CR307 disabled or the customer's tier not eligible, CR302 ended,
-- CR303 not yet, CR304 stock short, CR305 the customer's limit reached.
CREATE FUNCTION crm.reward_take(reward integer, g bigint, qty integer, at timestamptz) RETURNS crm.reward
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r crm.reward;
	taken bigint;
BEGIN
	SELECT * INTO r FROM crm.reward x WHERE x.reward_id = reward FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'reward % does not exist', reward USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF NOT r.enabled THEN
		RAISE EXCEPTION 'reward "%" is not offered now', r.name USING ERRCODE = 'CR307';
	END IF;
	IF r.valid_until IS NOT NULL AND r.valid_until <= at THEN
		RAISE EXCEPTION 'reward "%" ended at %', r.name, r.valid_until USING ERRCODE = 'CR302';
	END IF;
	IF r.valid_from IS NOT NULL AND r.valid_from > at THEN
		RAISE EXCEPTION 'reward "%" is offered from %', r.name, r.valid_from USING ERRCODE = 'CR303';
	END IF;
	IF r.eligible_tiers IS NOT NULL AND NOT crm.customer_tier(g) = ANY (r.eligible_tiers) THEN
		RAISE EXCEPTION 'reward "%" is for tiers %, customer % is %', r.name, pg_catalog.array_to_string(r.eligible_tiers, ', '),
			g, crm.customer_tier(g) USING ERRCODE = 'CR307';
	END IF;
	IF r.stock IS NOT NULL AND r.exchanged + qty > r.stock THEN
		RAISE EXCEPTION 'reward "%" has % left, % asked for', r.name, r.stock - r.exchanged, qty USING ERRCODE = 'CR304';
	END IF;
	IF r.per_customer_limit IS NOT NULL THEN
		SELECT COALESCE(pg_catalog.sum(e.qty), 0) INTO taken FROM crm.reward_exchange e
		WHERE e.reward_id = reward AND e.customer_id = ANY (crm.records_under(g));
		IF taken + qty > r.per_customer_limit THEN
			RAISE EXCEPTION 'customer % has taken % of reward "%", its limit is %', g, taken, r.name, r.per_customer_limit
				USING ERRCODE = 'CR305';
		END IF;
	END IF;
	UPDATE crm.reward x SET exchanged = x.exchanged + qty WHERE x.reward_id = reward;
	RETURN r;
END
$$;
COMMENT ON FUNCTION crm.reward_take(integer, bigint, integer, timestamptz) IS
	'Internal: locks a reward and takes qty of its stock for a golden customer; 23503 unknown, CR307 not offered or tier not eligible, CR302 ended, CR303 not yet, CR304 stock short, CR305 customer limit';

CREATE FUNCTION crm.exchange_points(customer_id bigint, reward integer, qty integer, idempotency_key text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Returns the codes of the coupons handed over.
DECLARE
	g bigint;
	r crm.reward;
	e crm.reward_exchange;
	codes text[];
BEGIN
	PERFORM crm.refuse_on_citus('crm.exchange_points()');
	IF customer_id IS NULL OR reward IS NULL OR qty IS NULL OR idempotency_key IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'an exchange needs a customer, a reward, a quantity and an idempotency key'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Pass a key unique to this exchange; a retry with the same key returns the first result.';
	END IF;
	IF qty < 1 THEN
		RAISE EXCEPTION 'qty must be at least 1, not %', qty USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	SELECT * INTO e FROM crm.reward_exchange x WHERE x.idempotency_key = exchange_points.idempotency_key;
	IF FOUND THEN
		IF e.reward_id <> reward OR e.qty <> qty OR crm.golden_customer(e.customer_id) <> g THEN
			RAISE EXCEPTION 'idempotency key "%" was used for another exchange', idempotency_key USING ERRCODE = 'CR002';
		END IF;
		RETURN e.codes;					-- a retry: the first result
	END IF;
	r := crm.reward_take(reward, g, qty, at);
	-- the points, FIFO by expiry (CR001 when the member has too few)
	PERFORM crm.redeem_points(g, r.points_price * qty, 'reward:' || idempotency_key, at);
	codes := ARRAY(SELECT c.code FROM crm.coupon_insert(crm.coupon_take_stock(r.template_id, qty, at),
	                                                     pg_catalog.array_fill(g, ARRAY[qty]), NULL, at) c ORDER BY c.coupon_id);
	INSERT INTO crm.reward_exchange (reward_id, customer_id, qty, points, codes, idempotency_key, at)
	VALUES (reward, g, qty, r.points_price * qty, codes, idempotency_key, at);
	RETURN codes;
END
$$;
COMMENT ON FUNCTION crm.exchange_points(bigint, integer, integer, text, timestamptz) IS
	'Exchanges points for qty of a reward: spends points_price * qty points FIFO by expiry and hands over the reward''s coupons in one transaction, exactly once per idempotency key (a retry returns the first codes, CR002 for another exchange); returns the codes; CR001 too few points, CR302/CR303 outside the reward''s window, CR304 stock short, CR305 customer limit, CR307 not offered or tier not eligible, 23503 unknown customer or reward';

CREATE VIEW crm.v_rewards AS
SELECT r.reward_id, r.name, r.kind, r.points_price, r.stock, r.exchanged,
       pg_catalog.count(e.exchange_id) AS exchanges, COALESCE(pg_catalog.sum(e.points), 0) AS points_spent,
       pg_catalog.count(DISTINCT e.customer_id) AS members
FROM crm.reward r LEFT JOIN crm.reward_exchange e ON e.reward_id = r.reward_id
GROUP BY r.reward_id;
COMMENT ON VIEW crm.v_rewards IS 'Per reward: stock, units exchanged, exchanges, points spent and members who took it';

CREATE OR REPLACE FUNCTION crm.citus_one_connection_per_worker() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	PERFORM pg_catalog.set_config('citus.max_adaptive_executor_pool_size', '1', true);
END
$$;
COMMENT ON FUNCTION crm.citus_one_connection_per_worker() IS
	'Internal (Citus): multi-shard statements of this transaction run over one connection per worker, the one holding its row locks';


-- Trigger for append-only tables (ledgers, histories): an edit is refused
-- with 55000; a correction is a new row.
CREATE FUNCTION crm.refuse_edit_of_history() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
		USING ERRCODE = 'object_not_in_prerequisite_state',
		      HINT = 'Record a new row instead (a refund, a new answer); the history keeps every change.';
END
$$;
COMMENT ON FUNCTION crm.refuse_edit_of_history() IS
	'Trigger: refuses UPDATE, DELETE and TRUNCATE on an append-only table (crm.wallet_txn, crm.wallet_journal, crm.consent_event) with 55000';

-- ===========================================================================
-- wallet/wallet.sql: stored value (issue 16).
--
-- A customer tops up a wallet (cash, with an optional bonus that is spent
-- last, expires and is never paid out in cash) and pays with it, at once or
-- through a hold on an open POS order that is later captured or released.
--
-- Double entry.  Every movement is one crm.wallet_txn and its entries in
-- crm.wallet_journal, which sum to zero: a wallet entry adds to (> 0) or
-- takes from (< 0) one bucket of a customer's wallet (cash, bonus,
-- held_cash, held_bonus; bonus entries name their lot); the company's
-- accounts carry the other side:
--   cash_received    -x at a top-up of x cash (money taken in, owed as value)
--   bonus_liability  -b at a top-up with bonus b
--   sales            +x when x is spent on an order, -x when refunded
--   breakage         +b when bonus b expires unspent
--   cash_refunded    +x when a refund goes back to the original payment
-- crm.wallet and crm.wallet_bonus_lot are caches of the journal, changed
-- only by crm.wallet_apply in the same transaction; crm.verify_wallets()
-- checks both against it.
--
-- Pockets.  A wallet row belongs to a customer record, not to the golden
-- customer: a top-up goes to the record named, a golden customer spends
-- from all its records' wallets (its own first), and a merge moves no money
-- at all, so an unmerge gives each side exactly what is left of its own.
--
-- Rejections (README, "Stored value"):
--   CR401 too little in the wallet   CR402 hold not open / capture over it
--   CR403 a wallet paying for its own top-up (or a top-up paid by wallet)
--   CR404 refund over what is left of the payment
--   CR405 unknown transaction key     CR002 key reused with other arguments
--
-- Lock order (DEVELOPER.md): the golden customer FOR SHARE
-- (crm.lock_customer), the order row (a payment or top-up for an order),
-- the wallet rows of the pockets involved FOR UPDATE in customer_id order.
-- Bonus lots are changed only under their pocket's wallet row lock, so they
-- need no lock of their own.
-- ===========================================================================

CREATE TABLE crm.wallet_program (
	program			text PRIMARY KEY DEFAULT 'default' CONSTRAINT wallet_program_single CHECK (program = 'default'),
	refund_to		text NOT NULL DEFAULT 'wallet' CONSTRAINT wallet_program_refund_to_valid CHECK (refund_to IN ('wallet', 'original')),
	bonus_valid		interval NOT NULL DEFAULT '12 months' CONSTRAINT wallet_program_bonus_valid_positive CHECK (bonus_valid > interval '0'),
	hold_ttl		interval NOT NULL DEFAULT '1 day' CONSTRAINT wallet_program_hold_ttl_positive CHECK (hold_ttl > interval '0'),
	builtin			boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.wallet_program IS
	'Stored-value settings (one row): where a refund of a wallet payment goes by default (refund_to: wallet, or original = its cash part back to the payment that topped the wallet up, its bonus part to the wallet), how long a top-up''s bonus stays valid, how long a hold lasts';
INSERT INTO crm.wallet_program (program, builtin) VALUES ('default', true);
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_program', 'WHERE NOT builtin');

CREATE TABLE crm.wallet (
	customer_id		bigint PRIMARY KEY REFERENCES crm.customer (customer_id),
	cash			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_cash_never_negative CHECK (cash >= 0),
	bonus			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_bonus_never_negative CHECK (bonus >= 0),
	held_cash		numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_held_cash_never_negative CHECK (held_cash >= 0),
	held_bonus		numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_held_bonus_never_negative CHECK (held_bonus >= 0)
);
COMMENT ON TABLE crm.wallet IS
	'Stored value of one customer record (a golden customer spends from its records'' wallets): cash and bonus to spend, and what holds keep for open orders; a cache of crm.wallet_journal';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet', '');

CREATE SEQUENCE crm.wallet_txn_id_seq;
CREATE TABLE crm.wallet_txn (
	txn_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_txn_id_seq'),
	kind			text NOT NULL CONSTRAINT wallet_txn_kind_valid
					CHECK (kind IN ('top_up', 'pay', 'hold', 'capture', 'release', 'refund', 'expire')),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_txn_amount_valid CHECK (amount >= 0 AND amount <> 'NaN'::numeric),
	bonus			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_txn_bonus_valid CHECK (bonus >= 0 AND bonus <> 'NaN'::numeric),
	idempotency_key	text NOT NULL CONSTRAINT wallet_txn_key_unique UNIQUE
					CONSTRAINT wallet_txn_key_format CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 200 AND pg_catalog.btrim(idempotency_key) <> ''),
	order_id		bigint,
	order_ref		text,
	paid_with		text,
	refund_to		text CONSTRAINT wallet_txn_refund_to_valid CHECK (refund_to IN ('wallet', 'original')),
	ref_txn_id		bigint REFERENCES crm.wallet_txn (txn_id),
	expires_at		timestamptz,
	at				timestamptz NOT NULL,
	CONSTRAINT wallet_txn_top_up_fields CHECK ((kind = 'top_up') = (paid_with IS NOT NULL)),
	CONSTRAINT wallet_txn_refers CHECK ((kind IN ('capture', 'release', 'refund')) = (ref_txn_id IS NOT NULL)),
	CONSTRAINT wallet_txn_refund_fields CHECK ((kind = 'refund') = (refund_to IS NOT NULL)),
	CONSTRAINT wallet_txn_hold_fields CHECK ((kind = 'hold') = (expires_at IS NOT NULL))
);
-- A hold is closed once: captured or released, never both, never twice.
CREATE UNIQUE INDEX wallet_txn_hold_closed_once ON crm.wallet_txn (ref_txn_id) WHERE kind IN ('capture', 'release');
CREATE INDEX wallet_txn_refunds_idx ON crm.wallet_txn (ref_txn_id) WHERE kind = 'refund';
CREATE INDEX wallet_txn_order_idx ON crm.wallet_txn (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX wallet_txn_open_hold_idx ON crm.wallet_txn (expires_at) WHERE kind = 'hold';
COMMENT ON TABLE crm.wallet_txn IS
	'Append-only: every stored-value movement (top_up, pay, hold, capture, release, refund, expire), once per idempotency key; its entries are in crm.wallet_journal';
COMMENT ON COLUMN crm.wallet_txn.customer_id IS 'The customer record named (a top-up goes to its wallet; a payment spends from its golden customer''s wallets)';
COMMENT ON COLUMN crm.wallet_txn.amount IS 'The value moved: topped up (cash), paid, held, captured, released, refunded or expired';
COMMENT ON COLUMN crm.wallet_txn.bonus IS 'A top-up''s bonus (besides amount); an expiry''s amount (all bonus); 0 otherwise';
COMMENT ON COLUMN crm.wallet_txn.ref_txn_id IS 'The hold a capture or release closes; the payment (pay or capture) a refund gives back';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_txn', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_txn_id_seq', '');

CREATE SEQUENCE crm.wallet_bonus_lot_id_seq;
CREATE TABLE crm.wallet_bonus_lot (
	lot_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_bonus_lot_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.wallet (customer_id),
	txn_id			bigint NOT NULL REFERENCES crm.wallet_txn (txn_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_bonus_lot_amount_positive CHECK (amount > 0),
	remaining		numeric(14,2) NOT NULL CONSTRAINT wallet_bonus_lot_remaining_range CHECK (remaining >= 0 AND remaining <= amount),
	expires_at		timestamptz NOT NULL
);
CREATE INDEX wallet_bonus_lot_customer_idx ON crm.wallet_bonus_lot (customer_id, expires_at, lot_id);
CREATE INDEX wallet_bonus_lot_expiry_idx ON crm.wallet_bonus_lot (expires_at) WHERE remaining > 0;
COMMENT ON TABLE crm.wallet_bonus_lot IS
	'The bonus of one top-up: amount given, remaining to spend (held bonus is not in it), expires_at; spent after the cash, soonest expiry first; a cache of the journal''s bonus entries';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_bonus_lot', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_bonus_lot_id_seq', '');

CREATE SEQUENCE crm.wallet_journal_id_seq;
CREATE TABLE crm.wallet_journal (
	entry_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_journal_id_seq'),
	txn_id			bigint NOT NULL REFERENCES crm.wallet_txn (txn_id),
	account			text NOT NULL CONSTRAINT wallet_journal_account_valid
					CHECK (account IN ('wallet', 'cash_received', 'bonus_liability', 'sales', 'breakage', 'cash_refunded')),
	customer_id		bigint REFERENCES crm.wallet (customer_id),
	bucket			text CONSTRAINT wallet_journal_bucket_valid CHECK (bucket IN ('cash', 'bonus', 'held_cash', 'held_bonus')),
	lot_id			bigint REFERENCES crm.wallet_bonus_lot (lot_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_journal_amount_nonzero CHECK (amount <> 0 AND amount <> 'NaN'::numeric),
	CONSTRAINT wallet_journal_wallet_fields CHECK (
		CASE WHEN account = 'wallet' THEN customer_id IS NOT NULL AND bucket IS NOT NULL
		     ELSE customer_id IS NULL AND bucket IS NULL AND lot_id IS NULL END),
	CONSTRAINT wallet_journal_lot_fields CHECK ((bucket IN ('bonus', 'held_bonus')) = (lot_id IS NOT NULL))
);
CREATE INDEX wallet_journal_txn_idx ON crm.wallet_journal (txn_id);
CREATE INDEX wallet_journal_customer_idx ON crm.wallet_journal (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX wallet_journal_lot_idx ON crm.wallet_journal (lot_id) WHERE lot_id IS NOT NULL;
COMMENT ON TABLE crm.wallet_journal IS
	'Append-only double-entry journal: the entries of each crm.wallet_txn, summing to zero; a wallet entry adds to (> 0) or takes from (< 0) one bucket of a customer record''s wallet, the company accounts (cash_received, bonus_liability, sales, breakage, cash_refunded) carry the other side';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_journal', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_journal_id_seq', '');

CREATE TRIGGER wallet_txn_append_only BEFORE UPDATE OR DELETE ON crm.wallet_txn
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_txn_no_truncate BEFORE TRUNCATE ON crm.wallet_txn
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_journal_append_only BEFORE UPDATE OR DELETE ON crm.wallet_journal
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_journal_no_truncate BEFORE TRUNCATE ON crm.wallet_journal
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();

-- ---------------------------------------------------------------------------
-- The ledger's owner: entries in, caches updated, balance checked
-- ---------------------------------------------------------------------------

-- Applies the entries of transaction txn to the wallets and bonus lots (the
-- caller inserted them and holds the pockets' wallet rows); refuses a
-- transaction whose entries do not sum to zero.  The CHECKs of crm.wallet
-- and crm.wallet_bonus_lot are the last guard of "never negative": the
-- callers refuse first, with CR401.
CREATE FUNCTION crm.wallet_apply(txn bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- (every call runs the same statements on a few rows: a generic plan is
-- the right one, and planning each call cost as much as running it)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	total numeric;
	bonus_moved boolean;
BEGIN
	SELECT pg_catalog.sum(j.amount), pg_catalog.bool_or(j.lot_id IS NOT NULL) INTO total, bonus_moved
	FROM crm.wallet_journal j WHERE j.txn_id = txn;
	IF total IS DISTINCT FROM 0 THEN
		RAISE EXCEPTION 'wallet transaction % does not balance: its entries sum to %', txn, COALESCE(total::text, 'nothing')
			USING ERRCODE = 'check_violation';
	END IF;
	UPDATE crm.wallet w SET cash = w.cash + d.cash, bonus = w.bonus + d.bonus,
	                        held_cash = w.held_cash + d.held_cash, held_bonus = w.held_bonus + d.held_bonus
	FROM (SELECT j.customer_id,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'cash'), 0) AS cash,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'bonus'), 0) AS bonus,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_cash'), 0) AS held_cash,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_bonus'), 0) AS held_bonus
	      FROM crm.wallet_journal j WHERE j.txn_id = txn AND j.account = 'wallet' GROUP BY j.customer_id) d
	WHERE w.customer_id = d.customer_id;
	IF bonus_moved THEN
		UPDATE crm.wallet_bonus_lot l SET remaining = l.remaining + d.amount
		FROM (SELECT j.lot_id, pg_catalog.sum(j.amount) AS amount FROM crm.wallet_journal j
		      WHERE j.txn_id = txn AND j.bucket = 'bonus' GROUP BY j.lot_id) d
		WHERE l.lot_id = d.lot_id;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_apply(bigint) IS
	'Internal: applies a wallet transaction''s journal entries to the wallets and bonus lots (the caches), refusing one whose entries do not sum to zero (23514)';

-- The transaction already written under key, checked against the call
-- that repeats it (CR002 when it differs), or NULL for a new key.
CREATE FUNCTION crm.wallet_retry(key text, kind text, golden bigint, amount numeric) RETURNS crm.wallet_txn
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
BEGIN
	SELECT * INTO t FROM crm.wallet_txn x WHERE x.idempotency_key = key;
	IF FOUND AND (t.kind <> kind OR t.amount <> amount OR crm.golden_customer(t.customer_id) <> golden) THEN
		RAISE EXCEPTION 'idempotency key "%" was used for another wallet movement (% of % for customer %)',
			key, t.kind, t.amount, t.customer_id USING ERRCODE = 'CR002';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_retry(text, text, bigint, numeric) IS
	'Internal: the wallet transaction written under an idempotency key (NULL when new); CR002 when it was another kind, amount or customer';

-- Refuses what no wallet movement may take: NULL arguments, an amount that
-- is not a positive number of cents, a time that is not finite.
CREATE FUNCTION crm.wallet_check_args(what text, customer_id bigint, amount numeric, key text, at timestamptz) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF customer_id IS NULL OR amount IS NULL OR key IS NULL OR at IS NULL THEN
		RAISE EXCEPTION '% needs a customer, an amount, an idempotency key and a time', what
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Pass a key unique to this movement; a retry with the same key returns the first result.';
	END IF;
	IF amount <= 0 OR amount = 'NaN'::numeric OR amount <> pg_catalog.round(amount, 2) OR amount > 999999999999.99 THEN
		RAISE EXCEPTION '% needs a positive amount in cents, not %', what, amount USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION '% needs a finite time, not %', what, at USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_check_args(text, bigint, numeric, text, timestamptz) IS
	'Internal: 22004 for a NULL argument, 22023 for an amount that is not a positive number of cents or a time that is not finite';

-- Locks the wallet rows of the given customer records FOR UPDATE in
-- customer_id order (records without a wallet have nothing to lock: only a
-- top-up creates a wallet).
CREATE FUNCTION crm.wallet_lock(pockets bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM 1 FROM crm.wallet w WHERE w.customer_id = ANY (pockets) ORDER BY w.customer_id FOR UPDATE;
END
$$;
COMMENT ON FUNCTION crm.wallet_lock(bigint[]) IS
	'Internal: locks the wallet rows of customer records FOR UPDATE in customer_id order';

-- Locks the wallets that transactions moved (a hold's, a payment's: an
-- unmerge may have put them under another golden since), all at once in
-- customer_id order.
CREATE FUNCTION crm.wallet_lock_txns(txns bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.wallet_lock(ARRAY(SELECT DISTINCT j.customer_id FROM crm.wallet_journal j
	                              WHERE j.txn_id = ANY (txns) AND j.account = 'wallet'));
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_txns(bigint[]) IS
	'Internal: locks the wallet rows that wallet transactions moved, in customer_id order (crm.wallet_lock)';

-- The order a payment or top-up is for, locked (so a payment and a top-up
-- of one order are decided one after the other), refused unless it is the
-- golden customer's and not refunded, and refused when the wallet's own
-- top-up and a wallet payment would meet on it: "other" is the kind of
-- movement that may not be on the order already (top_up for a payment,
-- pay or hold for a top-up).
CREATE FUNCTION crm.wallet_lock_order(order_id bigint, golden bigint, other text[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
BEGIN
	SELECT x.customer_id, x.status INTO o FROM crm.orders x WHERE x.order_id = wallet_lock_order.order_id FOR NO KEY UPDATE;
	IF NOT FOUND OR o.customer_id <> golden THEN
		RAISE EXCEPTION 'order % is not an order of customer %', order_id, golden USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF o.status = 'refunded' THEN
		RAISE EXCEPTION 'order % is refunded', order_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT 1 FROM crm.wallet_txn x WHERE x.order_id = wallet_lock_order.order_id AND x.kind = ANY (other)) THEN
		RAISE EXCEPTION 'a wallet cannot pay for its own top-up: order % %', order_id,
			CASE WHEN 'top_up' = ANY (other) THEN 'tops up the wallet' ELSE 'was paid with the wallet' END
			USING ERRCODE = 'CR403', HINT = 'Pay for a top-up with cash, a card or another outside payment.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_order(bigint, bigint, text[]) IS
	'Internal: locks the order a wallet movement is for; 23503 when it is not the customer''s, 22023 when it is refunded, CR403 when the wallet would pay for its own top-up';

-- ---------------------------------------------------------------------------
-- Top-up
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_top_up(customer_id bigint, amount numeric, idempotency_key text,
	bonus numeric DEFAULT 0, paid_with text DEFAULT 'cash', order_id bigint DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now(), bonus_expires_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id and bonus_expires_at may be NULL.  Returns the txn id.
DECLARE
	g bigint;
	t crm.wallet_txn;
	lot bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_top_up()');
	PERFORM crm.wallet_check_args('a top-up', customer_id, amount, idempotency_key, at);
	IF bonus IS NULL OR bonus < 0 OR bonus <> pg_catalog.round(bonus, 2) OR bonus > 999999999999.99 OR paid_with IS NULL THEN
		RAISE EXCEPTION 'a top-up needs a bonus of zero or more cents (not %) and a payment method', bonus
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF paid_with = 'wallet' THEN
		RAISE EXCEPTION 'a wallet cannot pay for its own top-up' USING ERRCODE = 'CR403',
			HINT = 'Top up with cash, a card or another outside payment.';
	END IF;
	g := crm.lock_customer(customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_top_up.order_id FOR NO KEY UPDATE;
	END IF;
	INSERT INTO crm.wallet (customer_id) VALUES (customer_id) ON CONFLICT DO NOTHING;
	PERFORM crm.wallet_lock(ARRAY[customer_id]);
	-- A retry returns the first result: checked under the wallet's lock,
	-- where a concurrent call with the same key is decided.
	t := crm.wallet_retry(idempotency_key, 'top_up', g, amount);
	IF t.txn_id IS NOT NULL THEN
		RETURN t.txn_id;
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, g, ARRAY['pay', 'hold']);
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, bonus, idempotency_key, order_id, paid_with, at)
	VALUES ('top_up', customer_id, amount, bonus, idempotency_key, order_id, paid_with, at)
	RETURNING * INTO t;
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, amount) VALUES
		(t.txn_id, 'wallet', customer_id, 'cash', amount),
		(t.txn_id, 'cash_received', NULL, NULL, -amount);
	IF bonus > 0 THEN
		INSERT INTO crm.wallet_bonus_lot (customer_id, txn_id, amount, remaining, expires_at)
		VALUES (customer_id, t.txn_id, bonus, 0,
		        COALESCE(bonus_expires_at, at + (SELECT p.bonus_valid FROM crm.wallet_program p)))
		RETURNING lot_id INTO lot;
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount) VALUES
			(t.txn_id, 'wallet', customer_id, 'bonus', lot, bonus),
			(t.txn_id, 'bonus_liability', NULL, NULL, NULL, -bonus);
	END IF;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t.txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_top_up(bigint, numeric, text, numeric, text, bigint, timestamptz, timestamptz) IS
	'Tops up the wallet of the customer record named with amount cash (paid_with: cash, card, ...; never wallet) and an optional bonus, spent after the cash, valid until bonus_expires_at (default: at + wallet_program.bonus_valid), never paid out in cash; exactly once per idempotency key; returns the transaction id.  CR403 paid with the wallet, or for an order the wallet paid; CR002 key reused; 22023 bad amount; 23503 unknown customer or another customer''s order';

-- ---------------------------------------------------------------------------
-- Paying: at once, or hold then capture or release
-- ---------------------------------------------------------------------------

-- Takes amount from the wallets of pockets (the golden customer g's first):
-- cash first, pocket by pocket, then bonus, soonest expiry first, from lots
-- valid at "at".  Writes the wallet entries of txn (held: into the held
-- buckets, same pocket and lot, not out of the wallet).  CR401 when the
-- wallets hold less than amount.
CREATE FUNCTION crm.wallet_draw(txn bigint, g bigint, pockets bigint[], amount numeric, held boolean, at timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- (a custom plan for the draw took three times as long as running it)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	taken numeric;
BEGIN
	WITH source AS (
		SELECT w.customer_id, NULL::bigint AS lot_id, w.cash AS avail,
		       0 AS pass, (w.customer_id <> g)::integer AS own_last, NULL::timestamptz AS expires_at, w.customer_id AS tie
		FROM crm.wallet w WHERE w.customer_id = ANY (pockets) AND w.cash > 0
		UNION ALL
		SELECT l.customer_id, l.lot_id, l.remaining, 1, 0, l.expires_at, l.lot_id
		FROM crm.wallet_bonus_lot l WHERE l.customer_id = ANY (pockets) AND l.remaining > 0 AND l.expires_at > at),
	running AS (
		SELECT s.*, pg_catalog.row_number() OVER w AS n, pg_catalog.sum(s.avail) OVER w - s.avail AS before
		FROM source s WINDOW w AS (ORDER BY s.pass, s.own_last, s.expires_at, s.tie ROWS UNBOUNDED PRECEDING)),
	draw AS (
		SELECT r.customer_id, r.lot_id, r.n, LEAST(r.avail, amount - r.before) AS take FROM running r WHERE r.before < amount),
	-- The entries in the order drawn (a capture spends a hold in that order):
	-- out of the buckets, then, for a hold, into the held buckets.
	entries AS (
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
		SELECT txn, 'wallet', d.customer_id,
		       CASE WHEN k.into_held THEN 'held_' ELSE '' END || CASE WHEN d.lot_id IS NULL THEN 'cash' ELSE 'bonus' END,
		       d.lot_id, CASE WHEN k.into_held THEN d.take ELSE -d.take END
		FROM draw d CROSS JOIN (VALUES (false), (true)) k(into_held)
		WHERE NOT k.into_held OR held
		ORDER BY k.into_held, d.n
		RETURNING wallet_journal.amount AS moved)
	SELECT COALESCE(-pg_catalog.sum(e.moved) FILTER (WHERE e.moved < 0), 0) INTO taken FROM entries e;
	IF taken < amount THEN
		RAISE EXCEPTION 'customer % has % in the wallet, % needed', g, taken, amount
			USING ERRCODE = 'CR401', HINT = 'Held and expired value cannot be spent; see crm.wallet_balance().';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_draw(bigint, bigint, bigint[], numeric, boolean, timestamptz) IS
	'Internal: writes the wallet entries that take an amount from a golden customer''s wallets (cash first, own wallet first, then bonus by expiry; into the held buckets for a hold); CR401 when too little';

-- What pay and hold share: arguments checked, customer and order locked,
-- a retry answered, the draw written.  Returns the transaction.
CREATE FUNCTION crm.wallet_spend(kind text, customer_id bigint, amount numeric, idempotency_key text,
	order_id bigint, order_ref text, at timestamptz, hold_until timestamptz)
RETURNS crm.wallet_txn
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint;
	t crm.wallet_txn;
	pockets bigint[];
BEGIN
	PERFORM crm.refuse_on_citus(pg_catalog.format('crm.wallet_%s()', kind));
	PERFORM crm.wallet_check_args(CASE kind WHEN 'pay' THEN 'a wallet payment' ELSE 'a hold' END, customer_id, amount, idempotency_key, at);
	g := crm.lock_customer(customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_spend.order_id FOR NO KEY UPDATE;
	END IF;
	pockets := crm.records_under(g);
	PERFORM crm.wallet_lock(pockets);
	-- A retry returns the first result: checked under the wallets' lock,
	-- where a concurrent call with the same key is decided.
	t := crm.wallet_retry(idempotency_key, kind, g, amount);
	IF t.txn_id IS NOT NULL THEN
		RETURN t;
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, g, ARRAY['top_up']);
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, expires_at, at)
	VALUES (kind, customer_id, amount, idempotency_key, order_id, order_ref, hold_until, at)
	RETURNING * INTO t;
	PERFORM crm.wallet_draw(t.txn_id, g, pockets, amount, kind = 'hold', at);
	IF kind = 'pay' THEN
		INSERT INTO crm.wallet_journal (txn_id, account, amount) VALUES (t.txn_id, 'sales', amount);
	END IF;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_spend(text, bigint, numeric, text, bigint, text, timestamptz, timestamptz) IS
	'Internal: a payment or a hold of amount from a customer''s wallets, exactly once per key (crm.wallet_pay, crm.wallet_hold)';

CREATE FUNCTION crm.wallet_pay(customer_id bigint, amount numeric, idempotency_key text,
	order_id bigint DEFAULT NULL, order_ref text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- (PL/pgSQL, not SQL: a SQL function is planned again on every call)
BEGIN
	RETURN (crm.wallet_spend('pay', customer_id, amount, idempotency_key, order_id, order_ref, at, NULL)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_pay(bigint, numeric, text, bigint, text, timestamptz) IS
	'Pays amount from the customer''s stored value (a merged record''s id means its golden customer; all its records'' wallets, its own first; cash before bonus, bonus by expiry), exactly once per idempotency key; returns the transaction id.  CR401 too little in the wallet, CR403 the order tops up the wallet, CR002 key reused, 22023 bad amount or refunded order, 23503 unknown customer or another customer''s order';

CREATE FUNCTION crm.wallet_hold(customer_id bigint, amount numeric, idempotency_key text,
	order_ref text DEFAULT NULL, ttl interval DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (crm.wallet_spend('hold', customer_id, amount, idempotency_key, NULL, order_ref, at,
		at + COALESCE(ttl, (SELECT p.hold_ttl FROM crm.wallet_program p)))).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_hold(bigint, numeric, text, text, interval, timestamptz) IS
	'Holds amount of the customer''s stored value for an open order (order_ref) until crm.wallet_capture or crm.wallet_release, or until ttl (default wallet_program.hold_ttl) passes and crm.tick releases it; held value cannot be spent elsewhere; exactly once per idempotency key; returns the hold''s transaction id.  CR401 too little, CR002 key reused';

-- The hold under key with its customer, the order it is captured for (when
-- given) and the wallets it holds locked, in the lock order (CR405 when
-- there is none), and the transaction that closed it (capture or release;
-- NULL while it is open).
CREATE FUNCTION crm.wallet_lock_hold(hold_key text, order_id bigint, OUT hold crm.wallet_txn, OUT closed crm.wallet_txn)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id may be NULL.
BEGIN
	SELECT * INTO hold FROM crm.wallet_txn x WHERE x.idempotency_key = hold_key AND x.kind = 'hold';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no wallet hold has the key "%"', hold_key USING ERRCODE = 'CR405';
	END IF;
	PERFORM crm.lock_customer(hold.customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_lock_hold.order_id FOR NO KEY UPDATE;
	END IF;
	PERFORM crm.wallet_lock_txns(ARRAY[hold.txn_id]);
	SELECT * INTO closed FROM crm.wallet_txn x WHERE x.ref_txn_id = hold.txn_id AND x.kind IN ('capture', 'release');
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_hold(text, bigint) IS
	'Internal: the wallet hold under a key, its customer, the order it is captured for and its wallets locked, and the capture or release that closed it (NULL while open); CR405 unknown';

-- Closes hold h: of what it holds, "captured" is spent (to sales: cash
-- first, in the order it was drawn), the rest goes back to the buckets it
-- came from.  One transaction of the kind given.
CREATE FUNCTION crm.wallet_close_hold(h crm.wallet_txn, kind text, captured numeric, key text, at timestamptz)
RETURNS crm.wallet_txn
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
BEGIN
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, ref_txn_id, at)
	VALUES (kind, h.customer_id, CASE kind WHEN 'capture' THEN captured ELSE h.amount END, key, h.order_id, h.order_ref, h.txn_id, at)
	RETURNING * INTO t;
	WITH held AS (
		SELECT j.customer_id, j.bucket, j.lot_id, j.amount,
		       pg_catalog.sum(j.amount) OVER (ORDER BY j.entry_id ROWS UNBOUNDED PRECEDING) - j.amount AS before
		FROM crm.wallet_journal j WHERE j.txn_id = h.txn_id AND j.amount > 0),
	split AS (
		SELECT x.*, GREATEST(LEAST(x.amount, captured - x.before), 0) AS spent FROM held x)
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
	SELECT t.txn_id, 'wallet', s.customer_id, s.bucket, s.lot_id, -s.amount FROM split s
	UNION ALL
	SELECT t.txn_id, 'wallet', s.customer_id, pg_catalog.substr(s.bucket, 6), s.lot_id, s.amount - s.spent FROM split s WHERE s.amount > s.spent
	UNION ALL
	SELECT t.txn_id, 'sales', NULL, NULL, NULL, captured WHERE captured > 0;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_close_hold(crm.wallet_txn, text, numeric, text, timestamptz) IS
	'Internal: closes a wallet hold: captured of it spent (cash first), the rest back where it was drawn from';

CREATE FUNCTION crm.wallet_capture(hold_key text, amount numeric, order_id bigint DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id may be NULL.  Once per hold: the capture's key is
-- 'capture:' || hold_key, and a retry with the same amount returns it.  A
-- hold past its ttl can still be captured until crm.tick releases it.
DECLARE
	h record;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_capture()');
	PERFORM crm.wallet_check_args('a capture', 0, amount, hold_key, at);
	h := crm.wallet_lock_hold(hold_key, order_id);
	IF (h.closed).kind = 'capture' AND (h.closed).amount = amount THEN
		RETURN (h.closed).txn_id;			-- a retry: the first result
	ELSIF (h.closed).txn_id IS NOT NULL THEN
		RAISE EXCEPTION 'wallet hold "%" was % already', hold_key, CASE (h.closed).kind WHEN 'capture' THEN 'captured' ELSE 'released' END
			USING ERRCODE = 'CR402', DETAIL = pg_catalog.format('%s of %s at %s', (h.closed).kind, (h.closed).amount, (h.closed).at);
	ELSIF amount > (h.hold).amount THEN
		RAISE EXCEPTION 'wallet hold "%" holds %, % cannot be captured', hold_key, (h.hold).amount, amount
			USING ERRCODE = 'CR402', HINT = 'Pay the rest with crm.wallet_pay() or another payment.';
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, crm.golden_customer((h.hold).customer_id), ARRAY['top_up']);
		h.hold.order_id := order_id;
	END IF;
	RETURN (crm.wallet_close_hold(h.hold, 'capture', amount, 'capture:' || hold_key, at)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_capture(text, numeric, bigint, timestamptz) IS
	'Spends amount (at most what it holds) of an open wallet hold on its order (order_id: the order as finally written) and gives the rest back; once per hold (a retry with the same amount returns the first transaction id); a hold past its ttl can be captured until crm.tick releases it.  CR405 unknown hold, CR402 captured or released already, or amount over the hold, CR403 the order tops up the wallet';

CREATE FUNCTION crm.wallet_release(hold_key text, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	h record;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_release()');
	h := crm.wallet_lock_hold(hold_key, NULL);
	IF (h.closed).kind = 'release' THEN
		RETURN (h.closed).txn_id;			-- released already (a retry, or the tick)
	ELSIF (h.closed).txn_id IS NOT NULL THEN
		RAISE EXCEPTION 'wallet hold "%" was captured already', hold_key USING ERRCODE = 'CR402',
			HINT = 'Refund the capture instead: crm.wallet_refund(''capture:'' || hold key, ...).';
	END IF;
	RETURN (crm.wallet_close_hold(h.hold, 'release', 0, 'release:' || hold_key, at)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_release(text, timestamptz) IS
	'Gives everything an open wallet hold holds back to the wallets it came from; a second release returns the first; CR405 unknown hold, CR402 captured already';

-- ---------------------------------------------------------------------------
-- Refunds
-- ---------------------------------------------------------------------------

-- What of payment p (pay or capture) has not been refunded yet, per
-- wallet, bucket and lot it came from (held buckets count as the bucket
-- they were held from): the payment's entries less what its refunds gave
-- back (their entries into the wallet: a refund to the original payment
-- puts the cash back where it came from and takes it out again, so it
-- counts too).
CREATE FUNCTION crm.wallet_unrefunded(p bigint)
RETURNS TABLE (customer_id bigint, bucket text, lot_id bigint, expires_at timestamptz, amount numeric)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT j.customer_id, pg_catalog.replace(j.bucket, 'held_', ''), j.lot_id, l.expires_at, -pg_catalog.sum(j.amount)
	FROM crm.wallet_journal j
	LEFT JOIN crm.wallet_bonus_lot l ON l.lot_id = j.lot_id
	WHERE j.account = 'wallet'
	  AND (j.txn_id = p OR (j.amount > 0 AND j.txn_id IN (SELECT r.txn_id FROM crm.wallet_txn r WHERE r.ref_txn_id = p AND r.kind = 'refund')))
	GROUP BY 1, 2, 3, 4
	HAVING pg_catalog.sum(j.amount) < 0;
END;
COMMENT ON FUNCTION crm.wallet_unrefunded(bigint) IS
	'Internal: what of a wallet payment is not refunded yet, per wallet, bucket and bonus lot it came from';

-- Refund of amount of payment p: bonus first (the last value spent is the
-- first given back: latest expiry first, to its lot), then cash, each to
-- the wallet it came from; to = original then pays the cash part out to
-- the outside payment (a second entry takes it out of the wallet again;
-- bonus is never paid out).  The caller locked the payment's wallets.
CREATE FUNCTION crm.wallet_refund_txn(p crm.wallet_txn, amount numeric, key text, refund_to text, at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
	left_to_refund numeric;
BEGIN
	SELECT COALESCE(pg_catalog.sum(u.amount), 0) INTO left_to_refund FROM crm.wallet_unrefunded(p.txn_id) u;
	IF amount > left_to_refund THEN
		RAISE EXCEPTION 'wallet payment "%" has % left to refund, not %', p.idempotency_key, left_to_refund, amount
			USING ERRCODE = 'CR404';
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, refund_to, ref_txn_id, at)
	VALUES ('refund', p.customer_id, amount, key, p.order_id, p.order_ref, refund_to, p.txn_id, at)
	RETURNING * INTO t;
	WITH source AS (
		SELECT u.*, pg_catalog.sum(u.amount) OVER (ORDER BY u.bucket = 'cash', u.expires_at DESC, u.lot_id DESC, u.customer_id DESC
		                                           ROWS UNBOUNDED PRECEDING) - u.amount AS before
		FROM crm.wallet_unrefunded(p.txn_id) u),
	back AS (
		SELECT s.customer_id, s.bucket, s.lot_id, LEAST(s.amount, wallet_refund_txn.amount - s.before) AS give
		FROM source s WHERE s.before < wallet_refund_txn.amount)
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
	SELECT t.txn_id, 'sales', NULL, NULL, NULL, -amount
	UNION ALL
	SELECT t.txn_id, 'wallet', b.customer_id, b.bucket, b.lot_id, b.give FROM back b
	UNION ALL
	SELECT t.txn_id, 'wallet', b.customer_id, b.bucket, NULL, -b.give FROM back b
	WHERE b.bucket = 'cash' AND refund_to = 'original'
	UNION ALL
	SELECT t.txn_id, 'cash_refunded', NULL, NULL, NULL, pg_catalog.sum(b.give) FROM back b
	WHERE b.bucket = 'cash' AND refund_to = 'original' HAVING pg_catalog.sum(b.give) > 0;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t.txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_refund_txn(crm.wallet_txn, numeric, text, text, timestamptz) IS
	'Internal: refunds amount of a wallet payment (bonus first, each part to where it came from; cash to the original payment when refund_to = original); CR404 over what is left';

CREATE FUNCTION crm.wallet_refund(payment_key text, amount numeric, idempotency_key text,
	refund_to text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: refund_to NULL means the programme's policy.
DECLARE
	p crm.wallet_txn;
	t crm.wallet_txn;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_refund()');
	PERFORM crm.wallet_check_args('a wallet refund', 0, amount, idempotency_key, at);
	IF payment_key IS NULL OR (refund_to IS NOT NULL AND refund_to NOT IN ('wallet', 'original')) THEN
		RAISE EXCEPTION 'a wallet refund needs the payment''s key and refund_to wallet or original, not %', refund_to
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO p FROM crm.wallet_txn x WHERE x.idempotency_key = payment_key AND x.kind IN ('pay', 'capture');
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no wallet payment has the key "%"', payment_key USING ERRCODE = 'CR405',
			HINT = 'A hold is refunded through its capture, whose key is capture:<hold key>.';
	END IF;
	PERFORM crm.lock_customer(p.customer_id);
	PERFORM crm.wallet_lock_txns(ARRAY[p.txn_id]);
	t := crm.wallet_retry(idempotency_key, 'refund', crm.golden_customer(p.customer_id), amount);
	IF t.txn_id IS NOT NULL THEN
		IF t.ref_txn_id <> p.txn_id THEN
			RAISE EXCEPTION 'idempotency key "%" refunded another payment', idempotency_key USING ERRCODE = 'CR002';
		END IF;
		RETURN t.txn_id;
	END IF;
	RETURN crm.wallet_refund_txn(p, amount, idempotency_key,
		COALESCE(refund_to, (SELECT w.refund_to FROM crm.wallet_program w)), at);
END
$$;
COMMENT ON FUNCTION crm.wallet_refund(text, numeric, text, text, timestamptz) IS
	'Refunds amount of a wallet payment (pay, or capture:<hold key>): bonus first, back to the lots it came from, then cash, to the wallet it came from or (refund_to = original; default wallet_program.refund_to) to the original payment; exactly once per idempotency key; returns the transaction id.  CR404 more than is left of the payment, CR405 unknown payment, CR002 key reused';

-- AFTER UPDATE statement trigger on crm.orders: the wallet payments of
-- orders this statement fully refunded are refunded too, whatever is left
-- of each, by the programme's policy, once (key order-refund:<txn id>).
CREATE FUNCTION crm.wallet_on_refund() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	payments crm.wallet_txn[];
	p crm.wallet_txn;
	left_to_refund numeric;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;					-- stored value does not run on a cluster yet
	END IF;
	payments := ARRAY(
		SELECT x FROM crm_new n
		JOIN crm_old o ON o.order_id = n.order_id
		JOIN crm.wallet_txn x ON x.order_id = n.order_id AND x.kind IN ('pay', 'capture')
		WHERE n.status = 'refunded' AND o.status <> 'refunded'
		ORDER BY x.txn_id);
	IF payments = '{}' THEN
		RETURN NULL;
	END IF;
	-- The wallets of all these payments at once, in customer_id order (one
	-- payment's after another's could lock them out of order).  No customer
	-- lock: the UPDATE holds the order rows (step 2 of the lock order),
	-- which a merge waits for while holding its customers.
	PERFORM crm.wallet_lock_txns(ARRAY(SELECT u.txn_id FROM pg_catalog.unnest(payments) u));
	FOREACH p IN ARRAY payments LOOP
		SELECT COALESCE(pg_catalog.sum(u.amount), 0) INTO left_to_refund FROM crm.wallet_unrefunded(p.txn_id) u;
		IF left_to_refund > 0 AND NOT EXISTS (SELECT 1 FROM crm.wallet_txn x WHERE x.idempotency_key = 'order-refund:' || p.txn_id) THEN
			PERFORM crm.wallet_refund_txn(p, left_to_refund, 'order-refund:' || p.txn_id,
				(SELECT w.refund_to FROM crm.wallet_program w), pg_catalog.now());
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.wallet_on_refund() IS
	'Trigger: the wallet payments (pay, capture) of orders an UPDATE fully refunded are refunded, what is left of each, by wallet_program.refund_to, once (key order-refund:<txn id>)';
CREATE TRIGGER orders_wallet_refund AFTER UPDATE ON crm.orders
	REFERENCING OLD TABLE AS crm_old NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.wallet_on_refund();

-- ---------------------------------------------------------------------------
-- Time: holds lapse, bonus expires (crm.tick)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_expire(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Each lapsed hold is released and each pocket's expired bonus goes to
-- breakage in its own transaction row, locked as a payment would lock it;
-- a wallet a payment holds now is skipped (the next tick does it).
DECLARE
	r record;
	h record;
	t crm.wallet_txn;
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;
	END IF;
	FOR r IN SELECT x.idempotency_key FROM crm.wallet_txn x
	         WHERE x.kind = 'hold' AND x.expires_at <= wallet_expire.at
	           AND NOT EXISTS (SELECT 1 FROM crm.wallet_txn c WHERE c.ref_txn_id = x.txn_id AND c.kind IN ('capture', 'release'))
	         ORDER BY x.txn_id LOOP
		-- locked as a capture locks it; one captured meanwhile stays captured
		h := crm.wallet_lock_hold(r.idempotency_key, NULL);
		IF (h.closed).txn_id IS NULL THEN
			PERFORM crm.wallet_close_hold(h.hold, 'release', 0, 'release:' || (h.hold).idempotency_key, at);
			n := n + 1;
		END IF;
	END LOOP;
	FOR r IN SELECT l.customer_id, pg_catalog.array_agg(l.lot_id ORDER BY l.lot_id) AS lots
	         FROM crm.wallet_bonus_lot l WHERE l.remaining > 0 AND l.expires_at <= wallet_expire.at
	         GROUP BY 1 ORDER BY 1 LOOP
		PERFORM 1 FROM crm.wallet w WHERE w.customer_id = r.customer_id FOR UPDATE SKIP LOCKED;
		CONTINUE WHEN NOT FOUND;
		INSERT INTO crm.wallet_txn (kind, customer_id, amount, bonus, idempotency_key, at)
		SELECT 'expire', r.customer_id, pg_catalog.sum(l.remaining), pg_catalog.sum(l.remaining),
		       pg_catalog.format('expire:%s:%s', r.customer_id, pg_catalog.nextval('crm.wallet_txn_id_seq')), at
		FROM crm.wallet_bonus_lot l WHERE l.lot_id = ANY (r.lots) AND l.remaining > 0
		HAVING pg_catalog.sum(l.remaining) > 0
		RETURNING * INTO t;
		CONTINUE WHEN t.txn_id IS NULL;
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
		SELECT t.txn_id, 'wallet', l.customer_id, 'bonus', l.lot_id, -l.remaining
		FROM crm.wallet_bonus_lot l WHERE l.lot_id = ANY (r.lots) AND l.remaining > 0
		UNION ALL
		SELECT t.txn_id, 'breakage', NULL, NULL, NULL, t.amount;
		PERFORM crm.wallet_apply(t.txn_id);
		n := n + 1;
		t := NULL;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.wallet_expire(timestamptz) IS
	'crm.tick task: releases wallet holds whose ttl passed by "at" and moves bonus past its expiry to breakage (one transaction per wallet); returns how many; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('wallet_expire', 140, 'crm.wallet_expire(timestamptz)'::regprocedure, true);

-- ---------------------------------------------------------------------------
-- Reading
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_balance(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (cash numeric, bonus numeric, held numeric, spendable numeric)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint := crm.golden_customer(customer_id);
	pockets bigint[];
BEGIN
	IF g IS NULL THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	pockets := crm.records_under(g);
	SELECT COALESCE(pg_catalog.sum(w.cash), 0), COALESCE(pg_catalog.sum(w.held_cash + w.held_bonus), 0)
	INTO cash, held FROM crm.wallet w WHERE w.customer_id = ANY (pockets);
	SELECT COALESCE(pg_catalog.sum(l.remaining), 0) INTO bonus
	FROM crm.wallet_bonus_lot l WHERE l.customer_id = ANY (pockets) AND l.remaining > 0 AND l.expires_at > at;
	spendable := cash + bonus;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION crm.wallet_balance(bigint, timestamptz) IS
	'A customer''s stored value at "at" (a merged record''s id means its golden customer, over all its records'' wallets): cash, bonus still valid, held for open orders, and spendable = cash + bonus; 23503 for an unknown customer';

CREATE VIEW crm.v_wallet_accounts AS
SELECT j.account, pg_catalog.count(DISTINCT j.txn_id) AS transactions, pg_catalog.sum(j.amount) AS balance
FROM crm.wallet_journal j
GROUP BY j.account;
COMMENT ON VIEW crm.v_wallet_accounts IS
	'Trial balance of stored value: per account (wallet, cash_received, bonus_liability, sales, breakage, cash_refunded) the sum of its entries; the balances sum to zero';

CREATE VIEW crm.v_wallet_liability AS
SELECT pg_catalog.date_trunc('month', t.at) AS month,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'top_up'), 0) AS topped_up,
       COALESCE(pg_catalog.sum(t.bonus) FILTER (WHERE t.kind = 'top_up'), 0) AS bonus_given,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind IN ('pay', 'capture')), 0) AS spent,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'refund'), 0) AS refunded,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'expire'), 0) AS breakage,
       pg_catalog.sum(pg_catalog.sum(COALESCE(w.moved, 0))) OVER (ORDER BY pg_catalog.date_trunc('month', t.at)) AS liability_at_month_end
FROM crm.wallet_txn t
LEFT JOIN LATERAL (SELECT pg_catalog.sum(j.amount) AS moved FROM crm.wallet_journal j
                   WHERE j.txn_id = t.txn_id AND j.account = 'wallet') w ON true
GROUP BY 1;
COMMENT ON VIEW crm.v_wallet_liability IS
	'Stored value per month (UTC): cash topped up, bonus given, spent, refunded, bonus expired (breakage), and the liability (all wallets: cash, bonus and held) at the month''s end';

-- ---------------------------------------------------------------------------
-- Checking
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.verify_wallets()
RETURNS TABLE (invariant text, customer_id bigint, detail text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT 'wallet transaction balances', t.customer_id,
	       pg_catalog.format('%s %s (%s): entries sum to %s', t.kind, t.txn_id, t.idempotency_key, COALESCE(pg_catalog.sum(j.amount)::text, 'nothing'))
	FROM crm.wallet_txn t LEFT JOIN crm.wallet_journal j ON j.txn_id = t.txn_id
	-- (every column grouped: a function that leans on the primary key would
	-- depend on it, and crm.distribute() rebuilds that key on Citus)
	GROUP BY t.txn_id, t.customer_id, t.kind, t.idempotency_key
	HAVING COALESCE(pg_catalog.sum(j.amount), 1) <> 0
	UNION ALL
	SELECT 'wallet matches its journal', COALESCE(w.customer_id, e.customer_id),
	       pg_catalog.format('wallet cash %s bonus %s held %s/%s, journal %s %s %s/%s', w.cash, w.bonus, w.held_cash, w.held_bonus,
	                         e.cash, e.bonus, e.held_cash, e.held_bonus)
	FROM crm.wallet w
	FULL JOIN (SELECT j.customer_id,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'cash'), 0) AS cash,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'bonus'), 0) AS bonus,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_cash'), 0) AS held_cash,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_bonus'), 0) AS held_bonus
	           FROM crm.wallet_journal j WHERE j.account = 'wallet' GROUP BY j.customer_id) e ON e.customer_id = w.customer_id
	WHERE (w.cash, w.bonus, w.held_cash, w.held_bonus) IS DISTINCT FROM
	      (COALESCE(e.cash, 0), COALESCE(e.bonus, 0), COALESCE(e.held_cash, 0), COALESCE(e.held_bonus, 0))
	UNION ALL
	SELECT 'bonus lot matches its journal', l.customer_id,
	       pg_catalog.format('lot %s: %s remaining, journal %s', l.lot_id, l.remaining, COALESCE(e.s, 0))
	FROM crm.wallet_bonus_lot l
	LEFT JOIN (SELECT j.lot_id, pg_catalog.sum(j.amount) AS s FROM crm.wallet_journal j WHERE j.bucket = 'bonus' GROUP BY 1) e
	  ON e.lot_id = l.lot_id
	WHERE l.remaining <> COALESCE(e.s, 0)
	UNION ALL
	SELECT 'wallet bonus matches its lots', w.customer_id, pg_catalog.format('bonus %s, lots %s', w.bonus, COALESCE(l.s, 0))
	FROM crm.wallet w
	LEFT JOIN (SELECT x.customer_id, pg_catalog.sum(x.remaining) AS s FROM crm.wallet_bonus_lot x GROUP BY 1) l ON l.customer_id = w.customer_id
	WHERE w.bonus <> COALESCE(l.s, 0)
	UNION ALL
	SELECT 'wallet hold holds its amount', h.customer_id,
	       pg_catalog.format('hold %s (%s) of %s is %s and holds %s', h.txn_id, h.idempotency_key, h.amount,
	                         CASE WHEN c.txn_id IS NULL THEN 'open' ELSE 'closed' END, COALESCE(held.s, 0))
	FROM crm.wallet_txn h
	LEFT JOIN crm.wallet_txn c ON c.ref_txn_id = h.txn_id AND c.kind IN ('capture', 'release')
	LEFT JOIN LATERAL (SELECT pg_catalog.sum(j.amount) AS s FROM crm.wallet_journal j
	                   WHERE j.txn_id IN (h.txn_id, c.txn_id) AND j.bucket IN ('held_cash', 'held_bonus')) held ON true
	WHERE h.kind = 'hold' AND COALESCE(held.s, 0) <> CASE WHEN c.txn_id IS NULL THEN h.amount ELSE 0 END
	UNION ALL
	SELECT 'wallet refunds within the payment', p.customer_id,
	       pg_catalog.format('payment %s (%s) of %s: %s refunded', p.txn_id, p.idempotency_key, p.amount, pg_catalog.sum(r.amount))
	FROM crm.wallet_txn p JOIN crm.wallet_txn r ON r.ref_txn_id = p.txn_id AND r.kind = 'refund'
	GROUP BY p.txn_id, p.customer_id, p.idempotency_key, p.amount
	HAVING pg_catalog.sum(r.amount) > p.amount;
END;
COMMENT ON FUNCTION crm.verify_wallets() IS
	'Every violated stored-value invariant, one row each (invariant, customer, detail): each transaction''s entries sum to zero, each wallet and bonus lot equals its journal, each wallet''s bonus equals its lots, each hold holds its amount while open and nothing once closed, no payment refunded beyond its amount.  Empty when all is well';
-- (end of wallet/wallet.sql)


CREATE OR REPLACE FUNCTION crm.sample_wallet_member(seed integer, customer bigint, first_at timestamptz, at timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	u double precision := crm.sample_uniform(seed, 214, customer);
	top_up_at timestamptz := first_at - interval '1 day';
	o record;
	left_over numeric;
	pay numeric;
	key text;
BEGIN
	PERFORM crm.wallet_top_up(customer, CASE WHEN u < 0.5 THEN 100.00 WHEN u < 0.85 THEN 200.00 ELSE 500.00 END,
		'sample:wallet:top-up:' || customer, bonus => CASE WHEN u < 0.5 THEN 0 WHEN u < 0.85 THEN 10.00 ELSE 60.00 END,
		paid_with => CASE WHEN u < 0.3 THEN 'cash' ELSE 'card' END, at => top_up_at,
		bonus_expires_at => top_up_at + interval '90 days');
	FOR o IN SELECT x.order_id, x.net_amount, x.ordered_at, pg_catalog.row_number() OVER (ORDER BY x.ordered_at, x.order_id) AS n
	         FROM crm.orders x
	         WHERE x.customer_id = customer AND x.status = 'paid' AND x.ordered_at >= first_at AND x.ordered_at < at
	         ORDER BY x.ordered_at, x.order_id LIMIT 3 LOOP
		left_over := (SELECT b.spendable FROM crm.wallet_balance(customer, o.ordered_at) b);
		pay := LEAST(o.net_amount, left_over);
		EXIT WHEN pay <= 0;
		key := pg_catalog.format('sample:wallet:%s:%s', customer, o.order_id);
		IF o.n = 1 AND crm.sample_uniform(seed, 215, customer) < 0.2 THEN
			PERFORM crm.wallet_hold(customer, left_over, key || ':hold', 'pos:' || o.order_id, at => o.ordered_at - interval '5 minutes');
			PERFORM crm.wallet_capture(key || ':hold', pay, o.order_id, o.ordered_at);
		ELSE
			PERFORM crm.wallet_pay(customer, pay, key, o.order_id, at => o.ordered_at);
		END IF;
	END LOOP;
	left_over := (SELECT b.spendable FROM crm.wallet_balance(customer, at - interval '2 days') b);
	IF left_over >= 20.00 AND crm.sample_uniform(seed, 216, customer) < 0.1 THEN
		PERFORM crm.wallet_hold(customer, 20.00, 'sample:wallet:open:' || customer, 'pos:never-finished',
			ttl => interval '1 hour', at => at - interval '2 days');
	END IF;
END
$$;
COMMENT ON FUNCTION crm.sample_wallet_member(integer, bigint, timestamptz, timestamptz) IS
	'Internal (sample data): one member''s stored value for crm.generate_sample_activity: a top-up, payments and POS holds for orders, an unfinished hold';


CREATE OR REPLACE FUNCTION crm.generate_sample_activity(seed integer DEFAULT 1, at timestamptz DEFAULT crm.sample_as_of())
RETURNS TABLE (relation text, rows bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- The programme's clock (crm.loyalty_now) is moved to "at" below while the
-- activity runs, so that what a backdated redemption may spend does not
-- depend on the day it is made; this clause gives the caller's value back
-- when the function returns.  (A superuser setting: so is sample data.)
SET crm.loyalty_now = ''
-- Many small statements, some of them in triggers planned for bulk loads:
-- compiling them would cost more than running them.
SET jit = off
AS $$
DECLARE
	-- The activity's templates and rewards, by name: their presence means it ran.
	template_names constant text[] := ARRAY['win-back 15%', 'free delivery (gold, black)', '5 off 40',
		'member voucher 10 off 50', 'reward: tote bag', 'reward: in-store coffee', 'reward: cinema 20 off',
		'reward: limited-edition thermos'];
	reward_names constant text[] := ARRAY['tote bag', 'in-store coffee', 'cinema 20 off', 'limited-edition thermos'];
	-- When things happen, before "at" (normally the sample's end): days and
	-- months counted in UTC, not in the session's time zone, whose
	-- daylight-saving changes would move them by an hour.
	at_utc constant timestamp := at AT TIME ZONE 'UTC';
	voucher_at constant timestamptz := (at_utc - interval '75 days') AT TIME ZONE 'UTC';
	win_back_at constant timestamptz := (at_utc - interval '60 days') AT TIME ZONE 'UTC';
	lapsed_from constant timestamptz := (at_utc - interval '240 days') AT TIME ZONE 'UTC';
	lapsed_until constant timestamptz := (at_utc - interval '150 days') AT TIME ZONE 'UTC';
	benefit_at constant timestamptz := (at_utc - interval '1 month') AT TIME ZONE 'UTC';
	rewards_from constant timestamptz := (at_utc - interval '30 days') AT TIME ZONE 'UTC';
	five_off_at constant timestamptz := (at_utc - interval '8 days') AT TIME ZONE 'UTC';
	last_week constant timestamptz := (at_utc - interval '7 days') AT TIME ZONE 'UTC';
	thermos_stock integer;
	t_win_back integer;
	t_delivery integer;
	t_five_off integer;
	t_voucher integer;
	r_tote integer;
	r_coffee integer;
	r_cinema integer;
	r_thermos integer;
	journal_from bigint;
	n_refunded bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.generate_sample_activity()');
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM crm.loyalty_account a) THEN
		RAISE EXCEPTION 'crm.generate_sample_activity needs sample data with loyalty accounts'
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Run crm.generate_sample first.';
	END IF;
	IF EXISTS (SELECT 1 FROM crm.coupon_template t WHERE t.name = ANY (template_names))
	   OR EXISTS (SELECT 1 FROM crm.reward r WHERE r.name = ANY (reward_names)) THEN
		RAISE EXCEPTION 'crm.generate_sample_activity has run already: its coupon templates or rewards exist'
			USING ERRCODE = 'CR005',
			      DETAIL = 'The activity is made once per sample, so that the same seed gives the same activity.',
			      HINT = 'Generate a fresh sample (crm.generate_sample in a new database) to make it again.';
	END IF;
	PERFORM pg_catalog.set_config('crm.loyalty_now',
		pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00"'), true);
	journal_from := (SELECT COALESCE(pg_catalog.max(j.journal_id), 0) FROM crm.points_journal j);

	-- The catalogue ------------------------------------------------------------
	INSERT INTO crm.coupon_template (name, kind, percent_off, max_discount, min_spend, valid_days, per_customer_limit)
	VALUES ('win-back 15%', 'percent_off', 15.00, 20.00, 30.00, 30, 1)
	RETURNING template_id INTO t_win_back;
	INSERT INTO crm.coupon_template (name, kind, valid_days)
	VALUES ('free delivery (gold, black)', 'free_delivery', 31)
	RETURNING template_id INTO t_delivery;
	INSERT INTO crm.tier_benefit_coupon (benefit, template_id, every) VALUES ('free_delivery', t_delivery, 'month');
	INSERT INTO crm.coupon_template (name, kind, amount_off, min_spend, valid_days)
	VALUES ('5 off 40', 'amount_off', 5.00, 40.00, 14)
	RETURNING template_id INTO t_five_off;
	-- valid five years, as gift vouchers often must be; a refunded order
	-- gives it back
	INSERT INTO crm.coupon_template (name, kind, amount_off, min_spend, valid_days, per_customer_limit, restore_on_refund)
	VALUES ('member voucher 10 off 50', 'amount_off', 10.00, 50.00, 1825, 1, true)
	RETURNING template_id INTO t_voucher;
	-- Rewards, each handed over as a coupon of its own template; the
	-- catalogue opens 30 days before "at", the thermos with one piece for
	-- every 400 members (it runs out).
	thermos_stock := GREATEST(1, (SELECT pg_catalog.count(*) FROM crm.loyalty_account a) / 400);
	WITH t AS (
		INSERT INTO crm.coupon_template (name, kind, amount_off, gift_sku, valid_days)
		VALUES ('reward: tote bag', 'gift_item', NULL, 'REWARD-TOTE', 90),
		       ('reward: in-store coffee', 'gift_item', NULL, 'SERVICE-COFFEE', 30),
		       ('reward: cinema 20 off', 'amount_off', 20.00, NULL, 90),
		       ('reward: limited-edition thermos', 'gift_item', NULL, 'REWARD-THERMOS', 90)
		RETURNING template_id, name)
	INSERT INTO crm.reward (name, kind, points_price, template_id, stock, per_customer_limit, eligible_tiers, valid_from)
	SELECT r.name, r.kind, r.price, t.template_id, r.stock, r.lim, r.tiers, rewards_from
	FROM (VALUES ('tote bag', 'goods', 300, NULL::bigint, 2, NULL::text[]),
	             ('in-store coffee', 'service', 150, NULL, NULL, NULL),
	             ('cinema 20 off', 'partner', 800, NULL, 1, '{silver,gold,black}'),
	             ('limited-edition thermos', 'goods', 500, thermos_stock, 1, NULL)) AS r(name, kind, price, stock, lim, tiers)
	JOIN t ON t.name = 'reward: ' || r.name
	ORDER BY t.template_id;
	SELECT pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'tote bag'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'in-store coffee'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'cinema 20 off'),
	       pg_catalog.max(r.reward_id) FILTER (WHERE r.name = 'limited-edition thermos')
	INTO r_tote, r_coffee, r_cinema, r_thermos
	FROM crm.reward r;

	-- Members: golden customers with an account, their points at "at" and
	-- their last order before it -------------------------------------------------
	IF pg_catalog.to_regclass('pg_temp.crm_activity_member') IS NOT NULL THEN
		DROP TABLE pg_temp.crm_activity_member;
	END IF;
	CREATE TEMP TABLE crm_activity_member AS
	SELECT a.customer_id, a.tier, crm.ledger_balance(a.ledger, at) AS balance, o.last_order_at,
	       NULL::timestamptz AS spent_at
	FROM crm.loyalty_account a
	JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
	CROSS JOIN LATERAL (SELECT pg_catalog.max(x.ordered_at) AS last_order_at FROM crm.orders x
	                    WHERE x.customer_id = a.customer_id AND x.ordered_at < at) o
	WHERE o.last_order_at IS NOT NULL;
	ALTER TABLE pg_temp.crm_activity_member ADD PRIMARY KEY (customer_id);
	-- The statements below start from the members and reach the sample's
	-- orders through their customer index, whatever the statistics of
	-- tables loaded a moment ago say.
	ANALYZE pg_temp.crm_activity_member;

	-- Coupons: issued to audiences --------------------------------------------------
	-- Win-back: shoppers who lapsed lately (bought 90 to 180 days before the
	-- campaign, not since), 60 days before "at".
	PERFORM crm.issue_coupons(t_win_back, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m
		WHERE EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id AND o.status = 'paid'
		              AND o.ordered_at >= lapsed_from AND o.ordered_at < lapsed_until)
		  AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id
		                  AND o.ordered_at >= lapsed_until AND o.ordered_at < win_back_at)
		ORDER BY 1), win_back_at);
	-- Member vouchers: silver and up, 75 days before "at".
	PERFORM crm.issue_coupons(t_voucher, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m JOIN crm.tier t ON t.tier = m.tier
		WHERE t.rank >= 2 ORDER BY 1), voucher_at);
	-- "5 off 40": shoppers of the final week, issued the day before it.
	PERFORM crm.issue_coupons(t_five_off, ARRAY(
		SELECT m.customer_id FROM pg_temp.crm_activity_member m
		WHERE EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = m.customer_id AND o.status = 'paid'
		              AND o.ordered_at >= last_week AND o.ordered_at < at)
		ORDER BY 1), five_off_at);
	-- Free delivery, a monthly benefit of gold and black: the tick task
	-- tier_benefits, as it ran at the start of the last month.
	PERFORM crm.tier_benefits(benefit_at);

	-- Coupons: redeemed on orders ----------------------------------------------------
	-- Each coupon on the first paid order it fits (the last one for "5 off
	-- 40"), by some of its holders; one coupon per order (all are
	-- exclusive): the earlier campaign's coupon wins an order both fit.
	PERFORM crm.redeem_coupon(x.code, x.customer_id, x.order_id, x.ordered_at)
	FROM (
		SELECT y.code, y.customer_id, y.order_id, y.ordered_at, y.coupon_id
		FROM (
			SELECT k.code, k.customer_id, k.coupon_id, o.order_id, o.ordered_at,
			       pg_catalog.row_number() OVER (PARTITION BY o.order_id ORDER BY k.issued_at, k.coupon_id) AS nth
			FROM crm.coupon k
			JOIN crm.coupon_template t ON t.template_id = k.template_id
			CROSS JOIN LATERAL (
				SELECT p.order_id, p.ordered_at FROM crm.orders p
				WHERE p.customer_id = k.customer_id AND p.status = 'paid' AND p.net_amount >= t.min_spend AND p.net_amount > 0
				  AND p.ordered_at >= k.valid_from AND p.ordered_at < LEAST(k.valid_until, at)
				  AND (t.kind <> 'free_delivery' OR p.channel <> 'pos')
				ORDER BY CASE WHEN t.template_id = t_five_off THEN p.ordered_at END DESC, p.ordered_at, p.order_id
				LIMIT 1) o
			WHERE k.template_id IN (t_win_back, t_voucher, t_five_off, t_delivery)
			  AND crm.sample_uniform(seed, 200 + CASE k.template_id WHEN t_win_back THEN 0 WHEN t_voucher THEN 1
			                                              WHEN t_five_off THEN 2 ELSE 3 END, k.customer_id)
			      < CASE k.template_id WHEN t_win_back THEN 0.7 WHEN t_voucher THEN 0.6 WHEN t_five_off THEN 0.65 ELSE 0.8 END
		) y
		WHERE y.nth = 1
		ORDER BY y.ordered_at, y.coupon_id
	) x;

	-- Points redeemed ----------------------------------------------------------------
	-- 15% of members with points spend 40-100% of them, at a time between
	-- their last order (so the points exist) and "at".
	UPDATE pg_temp.crm_activity_member m
	SET spent_at = GREATEST(m.last_order_at, pg_catalog.date_trunc('second', m.last_order_at
	               + pg_catalog.date_part('epoch', at - m.last_order_at) * crm.sample_uniform(seed, 203, m.customer_id) * interval '1 second', 'UTC'))
	WHERE m.balance >= 20 AND crm.sample_uniform(seed, 201, m.customer_id) < 0.15;
	PERFORM crm.redeem_points(m.customer_id,
	                          GREATEST(1, pg_catalog.floor(m.balance * (0.4 + 0.6 * crm.sample_uniform(seed, 202, m.customer_id))))::bigint,
	                          'sample:redeem:' || m.customer_id, m.spent_at)
	FROM (SELECT * FROM pg_temp.crm_activity_member x WHERE x.spent_at IS NOT NULL ORDER BY x.customer_id) m;

	-- Rewards exchanged --------------------------------------------------------------
	-- A tenth of the members with 150 points or more left take one reward in
	-- the catalogue's month: the cinema coupon (800, silver and up), the
	-- thermos (500) while it lasts (first come, first served; later ones take
	-- a tote bag), tote bags (300), or coffees (150), as they can pay.
	UPDATE pg_temp.crm_activity_member m
	SET balance = crm.ledger_balance(a.ledger, at)
	FROM crm.loyalty_account a
	WHERE a.customer_id = m.customer_id AND m.spent_at IS NOT NULL;
	PERFORM crm.exchange_points(z.customer_id, z.reward_id, z.qty, 'sample:exchange:' || z.customer_id, z.ex_at)
	FROM (
		SELECT y.customer_id, y.ex_at,
		       CASE WHEN y.choice = 'thermos' AND y.nth > thermos_stock THEN r_tote
		            ELSE (ARRAY[r_thermos, r_cinema, r_tote, r_coffee])[pg_catalog.array_position(ARRAY['thermos', 'cinema', 'tote', 'coffee'], y.choice)] END AS reward_id,
		       CASE WHEN y.choice = 'thermos' AND y.nth > thermos_stock THEN 1
		            -- as many as they can pay for, up to the limit
		            WHEN y.choice = 'tote' THEN 1 + pg_catalog.floor(crm.sample_uniform(seed, 209, y.customer_id) * LEAST(2, y.balance / 300))::integer
		            WHEN y.choice = 'coffee' THEN 1 + pg_catalog.floor(crm.sample_uniform(seed, 209, y.customer_id) * LEAST(3, y.balance / 150))::integer
		            ELSE 1 END AS qty
		FROM (
			SELECT w.*, pg_catalog.row_number() OVER (PARTITION BY w.choice ORDER BY w.ex_at, w.customer_id) AS nth
			FROM (
				SELECT m.customer_id, m.balance,
				       GREATEST(s.from_at, pg_catalog.date_trunc('second', s.from_at + pg_catalog.date_part('epoch', at - s.from_at)
				                                              * crm.sample_uniform(seed, 210, m.customer_id) * interval '1 second', 'UTC')) AS ex_at,
				       CASE WHEN m.balance >= 800 AND m.tier = ANY ('{silver,gold,black}'::text[]) AND crm.sample_uniform(seed, 207, m.customer_id) < 0.5 THEN 'cinema'
				            WHEN m.balance >= 500 AND crm.sample_uniform(seed, 206, m.customer_id) < 0.8 THEN 'thermos'
				            WHEN m.balance >= 300 AND crm.sample_uniform(seed, 208, m.customer_id) < 0.7 THEN 'tote'
				            ELSE 'coffee' END AS choice
				FROM pg_temp.crm_activity_member m
				CROSS JOIN LATERAL (SELECT GREATEST(rewards_from, m.last_order_at, m.spent_at) AS from_at) s
				WHERE m.balance >= 150 AND crm.sample_uniform(seed, 205, m.customer_id) < 0.1
			) w
		) y
		ORDER BY y.ex_at, y.customer_id
	) z;

	-- Stored value -----------------------------------------------------------------
	-- One member in twenty who ordered in the half year before "at" tops up
	-- 100, 200 (10 bonus) or 500 (60 bonus; bonus valid 90 days, so some
	-- of it expires by "at") a day before that half year's first order,
	-- then pays for up to three of the orders after it with the wallet, as
	-- far as it reaches; a fifth of them pay the first at a POS that holds
	-- the wallet and captures the order's amount; one in ten leaves a hold
	-- of an order never finished two days before "at" (the tick releases
	-- it).  Keys sample:wallet:...
	PERFORM crm.sample_wallet_member(seed, m.customer_id, m.first_at, at)
	FROM (SELECT x.customer_id, pg_catalog.min(o.ordered_at) AS first_at
	      FROM pg_temp.crm_activity_member x
	      JOIN crm.orders o ON o.customer_id = x.customer_id AND o.status = 'paid'
	                       AND o.ordered_at >= at - interval '4380 hours' AND o.ordered_at < at
	      WHERE crm.sample_uniform(seed, 213, x.customer_id) < 0.05
	      GROUP BY 1 ORDER BY 1) m;

	-- Consent and journeys -------------------------------------------------------
	-- Six customers in ten opt in to SMS marketing when they register (on
	-- the app, at the till or on the web), three in ten to e-mail; one in
	-- ten of the SMS ones replies STOP later.  The journeys are the
	-- programme's: crm.tick (the demo runs it at the sample's end) enters
	-- customers and queues their messages.
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	SELECT c.customer_id, v.channel, 'marketing', true, COALESCE(c.channel, 'pos'), c.created_at
	FROM crm.customer c
	CROSS JOIN (VALUES ('sms', 218, 0.6), ('email', 219, 0.3)) v(channel, stream, share)
	WHERE crm.sample_uniform(seed, v.stream, c.customer_id) < v.share AND c.created_at < at
	ORDER BY c.customer_id, v.channel;
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	SELECT c.customer_id, 'sms', 'marketing', false, 'sms STOP',
	       c.created_at + (at - c.created_at) * crm.sample_uniform(seed, 221, c.customer_id)
	FROM crm.customer c
	WHERE crm.sample_uniform(seed, 218, c.customer_id) < 0.6 AND crm.sample_uniform(seed, 220, c.customer_id) < 0.1
	  AND c.created_at < at
	ORDER BY c.customer_id;
	WITH j AS (
		INSERT INTO crm.journey (name, entry, entry_days, entry_hours, exit_on_purchase, control_percent, reentry_after)
		VALUES ('win_back', 'dormant', 120, NULL, true, 10, '180 days'),
		       ('cart_reminder', 'cart_abandoned', NULL, 4, true, 0, '7 days'),
		       ('birthday', 'birthday', 14, NULL, false, 0, '300 days'),
		       ('points_expiring', 'points_expiring', 45, NULL, false, 0, '25 days')
		RETURNING journey_id, name)
	INSERT INTO crm.journey_step (journey_id, step_no, kind, channel, template, coupon_template, points)
	SELECT j.journey_id, s.step_no, s.kind, s.channel, s.template, CASE WHEN s.kind = 'coupon' THEN t_win_back END, s.points
	FROM j JOIN (VALUES ('win_back', 1, 'send', 'sms', 'we miss you: 15% off', NULL::bigint),
	                    ('win_back', 2, 'coupon', NULL, NULL, NULL),
	                    ('cart_reminder', 1, 'send', 'sms', 'your cart is waiting', NULL),
	                    ('birthday', 1, 'send', 'sms', 'happy birthday', NULL),
	                    ('birthday', 2, 'points', NULL, NULL, 200),
	                    ('points_expiring', 1, 'send', 'email', 'your points expire soon', NULL)) s(name, step_no, kind, channel, template, points)
	  ON s.name = j.name
	ORDER BY j.journey_id, s.step_no;

	-- A campaign a month before "at": a message to the customers tagged
	-- fresh_lover or frequent, a fifth of them held out, its effect measured
	-- over the 14 days after (the sample's orders were made without it, so
	-- its uplift is noise: the report shows how wide the interval is).
	INSERT INTO crm.campaign (name, audience, channel, template, send_at, control_percent, measure_for)
	VALUES ('fresh_week', 'fresh_lover or frequent', 'sms', 'fresh week: new arrivals', (at_utc - interval '30 days') AT TIME ZONE 'UTC', 20, '14 days');
	PERFORM crm.campaign_send(x.campaign_id, x.send_at) FROM crm.campaign x WHERE x.name = 'fresh_week';

	-- Refunds after all that -----------------------------------------------------------
	-- A tenth of the members who spent points (at the till or for a reward)
	-- return their biggest paid order of the year before they spent them:
	-- the order's points are clawed back, as debt where they are spent
	-- already.  Half the orders a member voucher was used on are
	-- returned too: the voucher comes back (restore_on_refund); so is one
	-- in ten orders paid with the wallet (its payment goes back to the
	-- wallet).  One statement, as a returns batch would be.
	UPDATE crm.orders o SET status = 'refunded'
	WHERE o.order_id IN (
		SELECT b.order_id
		FROM (SELECT m.customer_id, LEAST(m.spent_at, e.at) AS spent_at
		      FROM pg_temp.crm_activity_member m
		      LEFT JOIN crm.reward_exchange e ON e.idempotency_key = 'sample:exchange:' || m.customer_id
		      WHERE (m.spent_at IS NOT NULL OR e.exchange_id IS NOT NULL)
		        AND crm.sample_uniform(seed, 211, m.customer_id) < 0.1) s
		CROSS JOIN LATERAL (
			SELECT p.order_id FROM crm.orders p
			WHERE p.customer_id = s.customer_id AND p.status = 'paid'
			  AND p.ordered_at >= s.spent_at - interval '8760 hours' AND p.ordered_at < s.spent_at
			ORDER BY p.net_amount DESC, p.order_id LIMIT 1) b
		UNION
		SELECT k.order_id FROM crm.coupon k
		WHERE k.template_id = t_voucher AND k.status = 'redeemed'
		  AND crm.sample_uniform(seed, 212, k.order_id) < 0.5
		UNION
		SELECT w.order_id FROM crm.wallet_txn w
		WHERE w.kind IN ('pay', 'capture') AND w.idempotency_key LIKE 'sample:wallet:%'
		  AND crm.sample_uniform(seed, 217, w.order_id) < 0.1)
	  AND o.status = 'paid';
	GET DIAGNOSTICS n_refunded = ROW_COUNT;

	DROP TABLE pg_temp.crm_activity_member;
	RETURN QUERY
		SELECT 'crm.coupon_template', (SELECT pg_catalog.count(*) FROM crm.coupon_template t WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.tier_benefit_coupon', 1::bigint
		UNION ALL SELECT 'crm.reward', (SELECT pg_catalog.count(*) FROM crm.reward r WHERE r.name = ANY (reward_names))
		UNION ALL SELECT 'crm.coupon', (SELECT pg_catalog.count(*) FROM crm.coupon k JOIN crm.coupon_template t ON t.template_id = k.template_id
		                                WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.coupon_journal', (SELECT pg_catalog.count(*) FROM crm.coupon_journal j JOIN crm.coupon k ON k.coupon_id = j.coupon_id
		                                        JOIN crm.coupon_template t ON t.template_id = k.template_id
		                                        WHERE t.name = ANY (template_names))
		UNION ALL SELECT 'crm.reward_exchange', (SELECT pg_catalog.count(*) FROM crm.reward_exchange e JOIN crm.reward r ON r.reward_id = e.reward_id
		                                         WHERE r.name = ANY (reward_names))
		UNION ALL SELECT 'crm.points_journal', (SELECT pg_catalog.count(*) FROM crm.points_journal j WHERE j.journal_id > journal_from)
		UNION ALL SELECT 'crm.consent_event', (SELECT pg_catalog.count(*) FROM crm.consent_event)
		UNION ALL SELECT 'crm.journey', (SELECT pg_catalog.count(*) FROM crm.journey)
		UNION ALL SELECT 'crm.campaign_member', (SELECT pg_catalog.count(*) FROM crm.campaign_member)
		UNION ALL SELECT 'crm.wallet_txn', (SELECT pg_catalog.count(*) FROM crm.wallet_txn w WHERE w.idempotency_key LIKE 'sample:wallet:%'
		                                      OR w.idempotency_key LIKE 'order-refund:%')
		UNION ALL SELECT 'crm.orders refunded', n_refunded;
END
$$;
COMMENT ON FUNCTION crm.generate_sample_activity(integer, timestamptz) IS
	'Adds deterministic activity to sample data (after crm.generate_sample, once): coupon templates issued to audiences and redeemed on orders (win-back, member vouchers, "5 off 40", the free-delivery tier benefit), points redemptions, a rewards catalogue and exchanges (a limited reward sells out), wallet top-ups with bonus, payments and POS holds, marketing consents (some revoked), the programme''s journeys (win-back, cart reminder, birthday, points expiring: crm.tick runs them) and a campaign sent a month before "at" with a control group, then refunds of orders after those (points clawed back, debt, vouchers and wallet payments restored); returns rows added per relation (crm.orders: orders refunded). Moves crm.loyalty_now to "at" while it runs (superuser). CR005 when it ran already';


-- Stores get a time zone (engagement: quiet hours and daily caps).
ALTER TABLE crm.store ADD COLUMN time_zone text
	CONSTRAINT store_time_zone_valid CHECK (time_zone IS NULL OR pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL);
COMMENT ON COLUMN crm.store.time_zone IS 'The store''s time zone, in which its customers'' days and quiet hours are counted (NULL: the loyalty programme''s)';

-- ===========================================================================
-- engagement/consent.sql: consent per customer, channel and purpose
-- (issue 17).
--
-- Every answer a customer gives (opt in, opt out) is a row of
-- crm.consent_event, kept for good: the history is the record of consent a
-- regulator asks for.  The answer in force is derived, never stored, so it
-- cannot drift from the history and merges need no hook:
--   * on one record, its latest answer;
--   * on a golden customer, the latest answer over its records, where every
--     answer given before the golden's latest merge counts as given at that
--     merge and, between answers that tie, the stricter (no) wins: a merge
--     of a record that said no into one that said yes says no, an answer
--     given after the merge decides, and an unmerge gives each side back
--     its own answers (the merge no longer counts).
-- Without an answer, marketing and research are not allowed (an explicit
-- opt-in is needed: PIPL-style separate consent) and service is (until the
-- customer opts out).
-- ===========================================================================

CREATE SEQUENCE crm.consent_event_id_seq;
CREATE TABLE crm.consent_event (
	event_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.consent_event_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	channel			text NOT NULL CONSTRAINT consent_event_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL CONSTRAINT consent_event_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	granted			boolean NOT NULL,
	source			text NOT NULL CONSTRAINT consent_event_source_given CHECK (pg_catalog.btrim(source) <> ''),
	at				timestamptz NOT NULL CONSTRAINT consent_event_at_finite CHECK (pg_catalog.isfinite(at)),
	recorded_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	recorded_by		name NOT NULL DEFAULT CURRENT_USER
);
CREATE INDEX consent_event_latest_idx ON crm.consent_event (customer_id, channel, purpose, at DESC, event_id DESC);
COMMENT ON TABLE crm.consent_event IS
	'Append-only history of consent: every opt-in (granted) and opt-out of a customer record for a channel and purpose, with its source (app, pos, web, a form, an agent) and time; crm.consent_allows and crm.v_consent derive the answer in force';
SELECT pg_catalog.pg_extension_config_dump('crm.consent_event', '');
SELECT pg_catalog.pg_extension_config_dump('crm.consent_event_id_seq', '');

CREATE TRIGGER consent_event_append_only BEFORE UPDATE OR DELETE ON crm.consent_event
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER consent_event_no_truncate BEFORE TRUNCATE ON crm.consent_event
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();

-- Refuses a channel or purpose consent does not know (22023).
CREATE FUNCTION crm.consent_check_kind(channel text, purpose text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF channel IS NULL OR channel NOT IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call') THEN
		RAISE EXCEPTION 'unknown channel "%"', channel USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Channels: sms, email, push, app_inbox, wechat, phone_call.';
	END IF;
	IF purpose IS NULL OR purpose NOT IN ('marketing', 'service', 'research') THEN
		RAISE EXCEPTION 'unknown purpose "%"', purpose USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Purposes: marketing, service, research.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.consent_check_kind(text, text) IS 'Internal: 22023 for an unknown consent channel or purpose';

CREATE FUNCTION crm.set_consent(customer_id bigint, channel text, purpose text, granted boolean, source text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors.  Records the answer on the record named
-- (so that an unmerge gives it back to that record); returns its id.
DECLARE
	id bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.set_consent()');
	IF customer_id IS NULL OR granted IS NULL OR source IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'consent needs a customer, an answer (granted true or false), a source and a time'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	IF pg_catalog.btrim(source) = '' OR NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'consent needs a source (app, pos, web, ...) and a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the golden FOR SHARE, so that a merge or unmerge decides before or after
	PERFORM crm.lock_customer(customer_id);
	INSERT INTO crm.consent_event (customer_id, channel, purpose, granted, source, at)
	VALUES (customer_id, channel, purpose, granted, source, at)
	RETURNING event_id INTO id;
	RETURN id;
END
$$;
COMMENT ON FUNCTION crm.set_consent(bigint, text, text, boolean, text, timestamptz) IS
	'Records a customer''s answer (granted: opt in; false: opt out) for a channel (sms, email, push, app_inbox, wechat, phone_call) and purpose (marketing, service, research), with its source and time; it takes effect at once (crm.outbox_claim checks it again); returns the event id.  22023 unknown channel or purpose, 22004 a NULL, 23503 unknown customer';

-- The answer in force for golden customer g (and its records) at "at": the
-- row of crm.consent_event that decides, or none.
CREATE FUNCTION crm.consent_answer(g bigint, channel text, purpose text, at timestamptz)
RETURNS crm.consent_event
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
-- (the same two statements on every call: planning them each time cost
-- three times what running them does)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	records bigint[] := crm.records_under(g);
	joined timestamptz;
	e crm.consent_event;
BEGIN
	-- the golden's latest merge still in force
	SELECT pg_catalog.max(m.merged_at) INTO joined FROM crm.merge_log m
	WHERE m.merged = ANY (records) AND m.undone_at IS NULL AND m.merged_at <= at;
	SELECT x.* INTO e
	FROM pg_catalog.unnest(records) r(id)
	CROSS JOIN LATERAL (
		SELECT y.* FROM crm.consent_event y
		WHERE y.customer_id = r.id AND y.channel = consent_answer.channel AND y.purpose = consent_answer.purpose AND y.at <= consent_answer.at
		ORDER BY y.at DESC, y.event_id DESC LIMIT 1) x
	ORDER BY GREATEST(x.at, joined) DESC, x.granted, x.at DESC, x.event_id DESC
	LIMIT 1;
	RETURN e;
END
$$;
COMMENT ON FUNCTION crm.consent_answer(bigint, text, text, timestamptz) IS
	'Internal: the consent event in force for a golden customer, channel and purpose at a time (the latest over its records, answers before its latest merge counting as given then, the stricter winning a tie); NULL without an answer';

CREATE FUNCTION crm.consent_allows(customer_id bigint, channel text, purpose text, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint;
	e crm.consent_event;
BEGIN
	IF customer_id IS NULL OR at IS NULL THEN
		RAISE EXCEPTION 'consent_allows needs a customer and a time' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	g := crm.golden_customer(customer_id);
	IF g IS NULL THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	e := crm.consent_answer(g, channel, purpose, at);
	RETURN COALESCE(e.granted, purpose = 'service');
END
$$;
COMMENT ON FUNCTION crm.consent_allows(bigint, text, text, timestamptz) IS
	'May the customer (a merged record''s id means its golden customer) be sent messages of a purpose on a channel at "at": the answer in force, or without one, false for marketing and research (explicit opt-in needed) and true for service (until an opt-out); 22023 unknown channel or purpose, 23503 unknown customer';

CREATE VIEW crm.v_consent AS
SELECT c.customer_id, k.channel, k.purpose, COALESCE(e.granted, k.purpose = 'service') AS allowed,
       e.granted AS answer, e.source, e.at AS answered_at, e.customer_id AS answered_on
FROM crm.customer c
CROSS JOIN (SELECT ch, p FROM pg_catalog.unnest(ARRAY['sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call']) ch,
                              pg_catalog.unnest(ARRAY['marketing', 'service', 'research']) p) k(channel, purpose)
CROSS JOIN LATERAL crm.consent_answer(c.customer_id, k.channel, k.purpose, pg_catalog.now()) e
WHERE c.merged_into IS NULL AND c.forgotten_at IS NULL
  AND EXISTS (SELECT 1 FROM crm.consent_event x WHERE x.customer_id = ANY (crm.records_under(c.customer_id)));
COMMENT ON VIEW crm.v_consent IS
	'Consent in force now, per golden customer who ever answered, channel and purpose: allowed (the answer, or the default: service yes, marketing and research no), the deciding answer, its source, time and the record it was given on';
-- (end of engagement/consent.sql)


-- ===========================================================================
-- engagement/outbox.sql: the outbox (issue 17).
--
-- Every message crm_ext wants delivered (a journey's step, a campaign, an
-- escalation) is a row of crm.outbox, written in the transaction that
-- decides it: enqueued exactly once per dedupe key (UNIQUE), never lost
-- once committed.  Consumers (the SMS gateway, the mailer, the push
-- service; scripts/outbox-consumer is a reference one) poll
-- crm.outbox_claim(consumer, n, lease), deliver, and call crm.outbox_ack or
-- crm.outbox_fail; NOTIFY crm_outbox only wakes them.  Delivery is at least
-- once: a lease that runs out before the ack is claimed again.
--
-- A message is due when due_at has come: a pending one at its
-- available_at (or its retry time), a leased one when its lease runs out.
-- Consent is checked when the message is enqueued and again when it is
-- claimed (revoked in between: suppressed, counted).  crm.tick purges
-- finished messages after the retention period, in short batches.
-- ===========================================================================

CREATE TABLE crm.outbox_settings (
	settings		text PRIMARY KEY DEFAULT 'default' CONSTRAINT outbox_settings_single CHECK (settings = 'default'),
	max_attempts	integer NOT NULL DEFAULT 5 CONSTRAINT outbox_settings_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
	retry_after		interval NOT NULL DEFAULT '30 seconds' CONSTRAINT outbox_settings_retry_positive CHECK (retry_after > interval '0'),
	retry_max		interval NOT NULL DEFAULT '1 hour' CONSTRAINT outbox_settings_retry_max_positive CHECK (retry_max > interval '0'),
	retention		interval NOT NULL DEFAULT '7 days' CONSTRAINT outbox_settings_retention_positive CHECK (retention > interval '0'),
	purge_batch		integer NOT NULL DEFAULT 10000 CONSTRAINT outbox_settings_batch_range CHECK (purge_batch BETWEEN 100 AND 1000000),
	quiet_from		time,
	quiet_until		time,
	cap_day			integer CONSTRAINT outbox_settings_cap_day_positive CHECK (cap_day >= 1),
	cap_channel_day	integer CONSTRAINT outbox_settings_cap_channel_day_positive CHECK (cap_channel_day >= 1),
	cap_7_days		integer CONSTRAINT outbox_settings_cap_7_days_positive CHECK (cap_7_days >= 1),
	builtin			boolean NOT NULL DEFAULT false,
	CONSTRAINT outbox_settings_quiet_both CHECK ((quiet_from IS NULL) = (quiet_until IS NULL) AND (quiet_from IS NULL OR quiet_from <> quiet_until))
);
COMMENT ON TABLE crm.outbox_settings IS
	'Outbox settings (one row): attempts before a message is dead, the first retry delay (doubling up to retry_max), how long finished messages are kept, rows deleted per purge batch; guard rails for marketing and research messages (service ones are exempt): quiet hours [quiet_from, quiet_until) in the customer''s time zone, which defer a message to their end, and caps on messages claimed per customer per local day (cap_day), per channel and local day (cap_channel_day) and per rolling 7 days (cap_7_days), over which a message is suppressed (capped); NULL turns each off';
-- Guard rails are off until set (UPDATE crm.outbox_settings SET quiet_from
-- = '21:00', quiet_until = '09:00', cap_day = 2, ...): nothing is held back
-- that the operator did not ask for.
INSERT INTO crm.outbox_settings (settings, builtin) VALUES ('default', true);
SELECT pg_catalog.pg_extension_config_dump('crm.outbox_settings', 'WHERE NOT builtin');

CREATE SEQUENCE crm.outbox_id_seq;
CREATE TABLE crm.outbox (
	message_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.outbox_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	channel			text NOT NULL CONSTRAINT outbox_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL CONSTRAINT outbox_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	template		text NOT NULL CONSTRAINT outbox_template_given CHECK (pg_catalog.btrim(template) <> ''),
	payload			jsonb NOT NULL DEFAULT '{}'::jsonb,
	source			text NOT NULL DEFAULT 'api',
	dedupe_key		text NOT NULL CONSTRAINT outbox_dedupe_key_unique UNIQUE
					CONSTRAINT outbox_dedupe_key_format CHECK (pg_catalog.length(dedupe_key) BETWEEN 1 AND 200 AND pg_catalog.btrim(dedupe_key) <> ''),
	status			text NOT NULL DEFAULT 'pending' CONSTRAINT outbox_status_valid
					CHECK (status IN ('pending', 'leased', 'delivered', 'dead', 'suppressed')),
	available_at	timestamptz NOT NULL,
	unless_ordered_after timestamptz,
	due_at			timestamptz,
	consumer		text,
	attempts		integer NOT NULL DEFAULT 0,
	deferrals		integer NOT NULL DEFAULT 0,
	claimed_at		timestamptz,
	last_error		text,
	suppressed_reason text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at		timestamptz,
	CONSTRAINT outbox_due_while_open CHECK ((status IN ('pending', 'leased')) = (due_at IS NOT NULL)),
	CONSTRAINT outbox_finished_when_closed CHECK ((status IN ('pending', 'leased')) = (finished_at IS NULL)),
	CONSTRAINT outbox_suppressed_reason CHECK ((status = 'suppressed') = (suppressed_reason IS NOT NULL))
);
CREATE INDEX outbox_due_idx ON crm.outbox (due_at, message_id) WHERE status IN ('pending', 'leased');
CREATE INDEX outbox_finished_idx ON crm.outbox (finished_at) WHERE status IN ('delivered', 'dead', 'suppressed');
-- what the caps count: a customer's marketing and research messages claimed
CREATE INDEX outbox_capped_idx ON crm.outbox (customer_id, claimed_at) WHERE purpose <> 'service' AND claimed_at IS NOT NULL;
COMMENT ON TABLE crm.outbox IS
	'Messages to deliver, one per dedupe key: pending until due_at (available_at, or a retry time), leased to a consumer until due_at (the lease''s end), then delivered, dead (max_attempts failures) or suppressed (no consent: suppressed_reason); purged by crm.tick after the retention period';
COMMENT ON COLUMN crm.outbox.source IS 'What enqueued it: journey:<name>, campaign:<name>, api, ...; suppressions are counted per source (crm.v_outbox_stats)';
COMMENT ON COLUMN crm.outbox.unless_ordered_after IS 'When set, the message is suppressed at claim (goal reached) if the customer has a paid order after this time: a win-back message is not sent to a customer who bought meanwhile, also when the order was in flight as the message was decided';
COMMENT ON COLUMN crm.outbox.deferrals IS 'How often the message was deferred by quiet hours';
COMMENT ON COLUMN crm.outbox.claimed_at IS 'When a consumer first claimed it (what the frequency caps count)';
COMMENT ON COLUMN crm.outbox.due_at IS 'When a pending message may be claimed, or when a leased one''s lease runs out and it may be claimed again; NULL once finished';
SELECT pg_catalog.pg_extension_config_dump('crm.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('crm.outbox_id_seq', '');

-- A customer's time zone for quiet hours and daily caps: the home store's,
-- else the loyalty programme's.
CREATE FUNCTION crm.customer_time_zone(customer_id bigint) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN COALESCE((SELECT s.time_zone FROM crm.customer c JOIN crm.store s ON s.store_id = c.home_store_id
                 WHERE c.customer_id = customer_time_zone.customer_id),
                (SELECT p.time_zone FROM crm.loyalty_program p));
COMMENT ON FUNCTION crm.customer_time_zone(bigint) IS
	'The time zone a customer''s days and quiet hours are counted in: the home store''s (crm.store.time_zone), else the loyalty programme''s';

CREATE FUNCTION crm.outbox_enqueue(customer_id bigint, channel text, purpose text, template text, payload jsonb,
	dedupe_key text, available_at timestamptz DEFAULT pg_catalog.now(), source text DEFAULT 'api',
	unless_ordered_after timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULLs are errors (unless_ordered_after may be NULL).  The
-- golden customer gets the message; a dedupe key enqueued before returns
-- that message (exactly once per key, also against a concurrent enqueue,
-- which waits for the first to commit; CR002 when the key was used for
-- another customer, channel or template).
-- Without consent the message is written suppressed, so the occasion is
-- decided and counted.  Returns the message id.
DECLARE
	g bigint;
	id bigint;
	allowed boolean;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_enqueue()');
	IF customer_id IS NULL OR template IS NULL OR payload IS NULL OR dedupe_key IS NULL OR available_at IS NULL OR source IS NULL THEN
		RAISE EXCEPTION 'a message needs a customer, a template, a payload, a dedupe key and a time' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'The dedupe key names the occasion (journey:welcome:42:1): a second enqueue for it returns the first message.';
	END IF;
	PERFORM crm.consent_check_kind(channel, purpose);
	IF NOT pg_catalog.isfinite(available_at) THEN
		RAISE EXCEPTION 'available_at must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	g := crm.lock_customer(customer_id);
	-- (asked once: inside the INSERT the answer was folded into every column that uses it)
	allowed := crm.consent_allows(g, channel, purpose, pg_catalog.now());
	INSERT INTO crm.outbox AS o (customer_id, channel, purpose, template, payload, source, dedupe_key, status, available_at,
	                             unless_ordered_after, due_at, suppressed_reason, finished_at)
	SELECT g, channel, purpose, template, payload, source, dedupe_key, v.status, available_at, unless_ordered_after,
	       CASE WHEN v.status = 'pending' THEN available_at END,
	       CASE WHEN v.status = 'suppressed' THEN 'no consent' END,
	       CASE WHEN v.status = 'suppressed' THEN pg_catalog.now() END
	FROM (SELECT CASE WHEN allowed THEN 'pending' ELSE 'suppressed' END AS status) v
	ON CONFLICT ON CONSTRAINT outbox_dedupe_key_unique DO NOTHING
	RETURNING o.message_id INTO id;
	IF id IS NULL THEN
		-- the occasion's message exists: the same one again is answered with
		-- it, another (customer, channel, template) is a reused key
		SELECT x.message_id INTO id FROM crm.outbox x
		WHERE x.dedupe_key = outbox_enqueue.dedupe_key
		  AND crm.golden_customer(x.customer_id) = g AND x.channel = outbox_enqueue.channel AND x.template = outbox_enqueue.template;
		IF id IS NULL THEN
			RAISE EXCEPTION 'dedupe key "%" was used for another message', dedupe_key USING ERRCODE = 'CR002',
				HINT = 'Name the occasion in the key: source, customer and occasion (journey:welcome:42:1).';
		END IF;
	ELSE
		PERFORM pg_catalog.pg_notify('crm_outbox', channel);	-- a wake-up; one per channel and transaction
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION crm.outbox_enqueue(bigint, text, text, text, jsonb, text, timestamptz, text, timestamptz) IS
	'Enqueues a message for a customer (its golden customer) on a channel, for a purpose, once per dedupe key (unless_ordered_after: suppressed at claim, goal reached, if the customer has a paid order after it) (a second call returns the first message id; CR002 for another customer, channel or template); written suppressed (reason no consent) when the customer''s consent does not allow it; NOTIFY crm_outbox wakes consumers.  22023 unknown channel or purpose, 22004 a NULL, 23503 unknown customer';

CREATE FUNCTION crm.outbox_claim(consumer text, n integer DEFAULT 100, lease interval DEFAULT '1 minute',
	at timestamptz DEFAULT NULL)
RETURNS SETOF crm.outbox
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- The due messages, oldest first, skipping those another consumer is
-- claiming right now (SKIP LOCKED).  Each is, in this order of checks:
--   suppressed (consent revoked) when consent no longer allows it,
--   suppressed (goal reached) when its customer ordered after its
--     unless_ordered_after,
--   deferred to the end of the quiet hours when it is marketing or
--     research and it is quiet time where the customer lives (pending
--     again, deferrals counted),
--   suppressed (capped) when it is marketing or research and would go over
--     a frequency cap, counting what was claimed before and what this
--     claim leased ahead of it (per golden customer, in due order),
--   else leased to this consumer until the clock + lease.
-- A message whose lease ran out max_attempts times (a consumer that dies on
-- it each time) is dead instead.
-- Leases and retries run on the wall clock (clock_timestamp), not on the
-- time the caller's transaction started; "at" replaces the clock (tests,
-- replays).  Not STRICT: at may be NULL.
DECLARE
	t timestamptz := COALESCE(at, pg_catalog.clock_timestamp());
	s crm.outbox_settings;
	r record;
	taken jsonb := '{}';		-- leased in this claim: per golden, and per golden and channel
	k_all text;
	k_channel text;
	leased bigint[] := '{}';
	refused_ids bigint[] := '{}';
	refused_why text[] := '{}';
	deferred_ids bigint[] := '{}';
	deferred_to timestamptz[] := '{}';
	dead_ids bigint[] := '{}';
	caps boolean;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_claim()');
	IF consumer IS NULL OR n IS NULL OR lease IS NULL OR n < 1 OR n > 10000 OR lease <= interval '0' OR pg_catalog.btrim(consumer) = '' THEN
		RAISE EXCEPTION 'outbox_claim needs a consumer name, 1 to 10000 messages and a positive lease' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM crm.outbox_settings x;
	caps := s.cap_day IS NOT NULL OR s.cap_channel_day IS NOT NULL OR s.cap_7_days IS NOT NULL;
	FOR r IN
		WITH due AS (
			SELECT x.message_id FROM crm.outbox x
			WHERE x.status IN ('pending', 'leased') AND x.due_at <= t
			ORDER BY x.due_at, x.message_id
			LIMIT n
			FOR UPDATE SKIP LOCKED),
		checked AS (
			-- (a message claimed before, whose lease ran out, passed the guard
			-- rails then and is counted already: only consent and goal again)
			SELECT x.message_id, x.channel, x.due_at, g.golden, z.tz, x.purpose <> 'service' AND x.claimed_at IS NULL AS guarded,
			       x.status = 'leased' AND x.attempts >= s.max_attempts AS worn_out,
			       CASE WHEN NOT crm.consent_allows(x.customer_id, x.channel, x.purpose, t) THEN 'consent revoked'
			            WHEN x.unless_ordered_after IS NOT NULL AND EXISTS (
			                 SELECT 1 FROM crm.orders o WHERE o.customer_id = g.golden
			                 AND o.status = 'paid' AND o.ordered_at > x.unless_ordered_after) THEN 'goal reached' END AS refused
			FROM crm.outbox x
			JOIN due d ON d.message_id = x.message_id
			CROSS JOIN LATERAL (SELECT crm.golden_customer(x.customer_id) AS golden) g
			CROSS JOIN LATERAL (SELECT CASE WHEN x.purpose <> 'service' THEN crm.customer_time_zone(g.golden) END AS tz) z)
		SELECT c.*,
		       -- the end of the quiet hours, when it is quiet time where the customer lives
		       CASE WHEN c.refused IS NULL AND c.guarded AND s.quiet_from IS NOT NULL
		                 AND CASE WHEN s.quiet_from < s.quiet_until THEN l.local_time >= s.quiet_from AND l.local_time < s.quiet_until
		                          ELSE l.local_time >= s.quiet_from OR l.local_time < s.quiet_until END
		            THEN ((l.local_day + CASE WHEN l.local_time >= s.quiet_until THEN 1 ELSE 0 END) + s.quiet_until) AT TIME ZONE c.tz END AS defer_to,
		       b.day, b.channel_day, b.week
		FROM checked c
		CROSS JOIN LATERAL (SELECT (t AT TIME ZONE c.tz)::time AS local_time, (t AT TIME ZONE c.tz)::date AS local_day) l
		-- what the caps count from before: this customer's marketing and
		-- research messages claimed in its local day and in 7 days
		LEFT JOIN LATERAL (
			SELECT pg_catalog.count(*) FILTER (WHERE y.claimed_at >= (l.local_day::timestamp AT TIME ZONE c.tz)) AS day,
			       pg_catalog.count(*) FILTER (WHERE y.claimed_at >= (l.local_day::timestamp AT TIME ZONE c.tz) AND y.channel = c.channel) AS channel_day,
			       pg_catalog.count(*) AS week
			FROM crm.outbox y
			WHERE caps AND c.guarded AND y.customer_id = c.golden AND y.purpose <> 'service' AND y.claimed_at IS NOT NULL
			  AND y.claimed_at > t - interval '7 days' AND y.message_id <> c.message_id) b ON true
		ORDER BY c.due_at, c.message_id
	LOOP
		IF r.worn_out THEN
			-- its lease ran out max_attempts times (a consumer that dies on it)
			dead_ids := dead_ids || r.message_id;
		ELSIF r.refused IS NOT NULL THEN
			refused_ids := refused_ids || r.message_id;
			refused_why := refused_why || r.refused;
		ELSIF r.defer_to IS NOT NULL THEN
			deferred_ids := deferred_ids || r.message_id;
			deferred_to := deferred_to || r.defer_to;
		ELSIF r.guarded AND caps THEN
			k_all := r.golden::text;
			k_channel := r.golden::text || ':' || r.channel;
			IF r.day + COALESCE((taken ->> k_all)::integer, 0) >= COALESCE(s.cap_day, 2147483647)
			   OR r.channel_day + COALESCE((taken ->> k_channel)::integer, 0) >= COALESCE(s.cap_channel_day, 2147483647)
			   OR r.week + COALESCE((taken ->> k_all)::integer, 0) >= COALESCE(s.cap_7_days, 2147483647) THEN
				refused_ids := refused_ids || r.message_id;
				refused_why := refused_why || 'capped'::text;
			ELSE
				leased := leased || r.message_id;
				taken := taken || pg_catalog.jsonb_build_object(k_all, COALESCE((taken ->> k_all)::integer, 0) + 1,
				                                                k_channel, COALESCE((taken ->> k_channel)::integer, 0) + 1);
			END IF;
		ELSE
			leased := leased || r.message_id;
		END IF;
	END LOOP;
	UPDATE crm.outbox o SET status = 'suppressed', suppressed_reason = u.why, due_at = NULL, finished_at = t
	FROM ROWS FROM (pg_catalog.unnest(refused_ids), pg_catalog.unnest(refused_why)) u(id, why)
	WHERE o.message_id = u.id;
	UPDATE crm.outbox o SET status = 'dead', due_at = NULL, finished_at = t,
	                        last_error = pg_catalog.format('its lease ran out %s times', o.attempts)
	WHERE o.message_id = ANY (dead_ids);
	UPDATE crm.outbox o SET status = 'pending', due_at = u.until, deferrals = o.deferrals + 1
	FROM ROWS FROM (pg_catalog.unnest(deferred_ids), pg_catalog.unnest(deferred_to)) u(id, until)
	WHERE o.message_id = u.id;
	RETURN QUERY
	WITH claimed AS (
		UPDATE crm.outbox o SET status = 'leased', consumer = outbox_claim.consumer, attempts = o.attempts + 1,
		                        claimed_at = COALESCE(o.claimed_at, t), due_at = t + lease
		WHERE o.message_id = ANY (leased)
		RETURNING o.*)
	SELECT c.* FROM claimed c ORDER BY c.message_id;
END
$$;
COMMENT ON FUNCTION crm.outbox_claim(text, integer, interval, timestamptz) IS
	'Claims up to n due messages for a consumer (FOR UPDATE SKIP LOCKED: consumers never get the same message at once) and leases them until clock_timestamp() (or "at") + lease; a message whose customer''s consent no longer allows it (consent revoked), whose customer ordered after its unless_ordered_after (goal reached) or that would go over a frequency cap (capped) is suppressed instead, and a marketing or research message in the customer''s quiet hours is deferred to their end; neither is returned; returns the leased messages.  A lease that runs out before crm.outbox_ack makes the message due again (at-least-once delivery)';

CREATE FUNCTION crm.outbox_ack(message_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_ack()');
	UPDATE crm.outbox o SET status = 'delivered', due_at = NULL, finished_at = pg_catalog.clock_timestamp(), last_error = NULL
	WHERE o.message_id = ANY (message_ids) AND o.status = 'leased';
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.outbox_ack(bigint[]) IS
	'Marks leased messages delivered (also after their lease ran out, as long as nobody acked or failed them since); returns how many changed (an ack of a delivered message changes nothing)';

CREATE FUNCTION crm.outbox_ack(message_id bigint) RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
RETURN crm.outbox_ack(ARRAY[message_id]);
COMMENT ON FUNCTION crm.outbox_ack(bigint) IS 'crm.outbox_ack for one message';

CREATE FUNCTION crm.outbox_fail(message_id bigint, error text, consumer text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: error and consumer may be NULL.  Returns the message's status
-- after it.  With consumer, only that consumer's lease fails: a slow
-- consumer whose lease ran out and went to another cannot undo it.
DECLARE
	s crm.outbox_settings;
	status text;
	t timestamptz := pg_catalog.clock_timestamp();
BEGIN
	PERFORM crm.refuse_on_citus('crm.outbox_fail()');
	SELECT * INTO s FROM crm.outbox_settings x;
	UPDATE crm.outbox o
	SET status = CASE WHEN o.attempts >= s.max_attempts THEN 'dead' ELSE 'pending' END,
	    due_at = CASE WHEN o.attempts >= s.max_attempts THEN NULL
	                  ELSE t + LEAST(s.retry_after * pg_catalog.power(2, LEAST(o.attempts - 1, 20))::integer, s.retry_max) END,
	    finished_at = CASE WHEN o.attempts >= s.max_attempts THEN t END,
	    last_error = pg_catalog.left(error, 1000)
	WHERE o.message_id = outbox_fail.message_id AND o.status = 'leased'
	  AND (outbox_fail.consumer IS NULL OR o.consumer = outbox_fail.consumer)
	RETURNING o.status INTO status;
	IF status IS NULL THEN
		SELECT x.status INTO status FROM crm.outbox x WHERE x.message_id = outbox_fail.message_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'no message %', message_id USING ERRCODE = 'foreign_key_violation';
		END IF;
	END IF;
	RETURN status;
END
$$;
COMMENT ON FUNCTION crm.outbox_fail(bigint, text, text) IS
	'A consumer could not deliver a leased message: it is retried after retry_after, doubling per attempt up to retry_max, or dead after max_attempts attempts; returns its status (a message not leased, or, when consumer is given, leased to another consumer, is left as it is); 23503 unknown message';

-- crm.tick task: finished messages past the retention period go, in
-- batches of purge_batch rows (row locks only, on rows nobody uses), at
-- most ten batches per tick.
CREATE FUNCTION crm.outbox_purge(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s crm.outbox_settings;
	n bigint := 0;
	batch bigint;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	SELECT * INTO s FROM crm.outbox_settings x;
	LOOP
		DELETE FROM crm.outbox o
		WHERE o.message_id IN (
			SELECT x.message_id FROM crm.outbox x
			WHERE x.status IN ('delivered', 'dead', 'suppressed') AND x.finished_at < at - s.retention
			LIMIT s.purge_batch
			FOR UPDATE SKIP LOCKED);
		GET DIAGNOSTICS batch = ROW_COUNT;
		n := n + batch;
		-- at most ten batches a tick: the tick's transaction stays short and
		-- a large backlog goes over the next ticks
		EXIT WHEN batch < s.purge_batch OR n >= 10 * s.purge_batch;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.outbox_purge(timestamptz) IS
	'crm.tick task: deletes delivered, dead and suppressed messages finished more than outbox_settings.retention before "at", purge_batch rows at a time and at most ten batches per tick (a backlog goes over the next ticks); returns how many';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('outbox_purge', 170, 'crm.outbox_purge(timestamptz)'::regprocedure, true);

CREATE VIEW crm.v_outbox_stats AS
SELECT o.source, o.channel, o.status, o.suppressed_reason, pg_catalog.count(*) AS messages,
       pg_catalog.sum(o.deferrals) AS quiet_hours_deferrals,
       pg_catalog.min(o.created_at) AS first_at, pg_catalog.max(o.created_at) AS last_at
FROM crm.outbox o
GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW crm.v_outbox_stats IS
	'Messages per source (journey, campaign, ...), channel, status and suppression reason (no consent at enqueue; consent revoked, goal reached or capped at the claim), with the quiet-hours deferrals, until purged';
-- (end of engagement/outbox.sql)


-- ===========================================================================
-- engagement/journey.sql: journeys (issue 17).
--
-- A journey is an entry trigger, an optional audience (a tag expression),
-- and numbered steps: send a message (to the outbox), issue a coupon, award
-- points, wait, branch on "purchased since entry".  A customer enters once
-- per occasion (crm.journey_enrollment is UNIQUE on journey, customer and
-- occasion), so a journey cannot enter or send twice: every step's effect
-- carries a key made of the enrollment and the step.
--
-- Entries:
--   first_purchase   in the order's transaction (trigger on crm.orders)
--   birthday         entry_days before the birthday (occasion: the year)
--   points_expiring  points expire within entry_days (occasion: the month)
--   dormant          no order for entry_days (occasion: the last order's time)
--   cart_abandoned   a cart event without a checkout event or an order
--                    within entry_hours (occasion: the cart event)
--   member_day       on day entry_days of the month, every member with a
--                    loyalty account (occasion: the month)
--   tier_up, tier_down  a tier raised or lowered within the last
--                    entry_days (occasion: the change)
--   replenishment_due  a staple due within entry_days (crm.replenishment_due;
--                    occasion: the sku and its expected day)
--   post_purchase    entry_days after a paid order, within a week (a survey;
--                    occasion: the order)
-- the time-driven ones in crm.tick (task journeys), idempotently.  A
-- purchase ends the active enrollments of journeys with exit_on_purchase
-- in the purchase's own transaction.  The audience is checked when the
-- enrollment's first step is due (time-driven entrants must be in it to
-- enter at all); control_percent of the entrants, chosen by
-- a hash of journey and golden customer, are held out (recorded, no step
-- runs) so the journey's effect can be measured.
-- ===========================================================================

CREATE TABLE crm.journey (
	journey_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE CONSTRAINT journey_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
	entry			text NOT NULL CONSTRAINT journey_entry_valid
					CHECK (entry IN ('first_purchase', 'birthday', 'points_expiring', 'dormant', 'cart_abandoned',
					                 'member_day', 'tier_up', 'tier_down', 'replenishment_due', 'post_purchase')),
	entry_days		integer CONSTRAINT journey_entry_days_range CHECK (entry_days BETWEEN 0 AND 3650),
	entry_hours		integer CONSTRAINT journey_entry_hours_range CHECK (entry_hours BETWEEN 1 AND 720),
	audience		text,
	reentry_after	interval CONSTRAINT journey_reentry_positive CHECK (reentry_after > interval '0'),
	exit_on_purchase boolean NOT NULL DEFAULT false,
	control_percent	integer NOT NULL DEFAULT 0 CONSTRAINT journey_control_range CHECK (control_percent BETWEEN 0 AND 50),
	enabled			boolean NOT NULL DEFAULT true,
	CONSTRAINT journey_entry_params CHECK (
		CASE entry WHEN 'first_purchase' THEN entry_days IS NULL AND entry_hours IS NULL
		           WHEN 'cart_abandoned' THEN entry_hours IS NOT NULL AND entry_days IS NULL
		           ELSE entry_days IS NOT NULL AND entry_hours IS NULL END),
	CONSTRAINT journey_member_day_valid CHECK (entry <> 'member_day' OR entry_days BETWEEN 1 AND 31)
);
COMMENT ON TABLE crm.journey IS
	'Journeys: an entry trigger (first_purchase; birthday, points_expiring, dormant, replenishment_due with entry_days; member_day on day entry_days of the month; tier_up, tier_down within entry_days of the change; post_purchase entry_days after a paid order; cart_abandoned with entry_hours), an audience (tag expression, NULL: everyone), re-entry (reentry_after; NULL: never again), exit_on_purchase, a control group (control_percent of entrants held out), and the steps in crm.journey_step';
SELECT pg_catalog.pg_extension_config_dump('crm.journey', '');
SELECT pg_catalog.pg_extension_config_dump('crm.journey_journey_id_seq', '');

CREATE TABLE crm.journey_step (
	journey_id		integer NOT NULL REFERENCES crm.journey (journey_id) ON DELETE CASCADE,
	step_no			integer NOT NULL CONSTRAINT journey_step_no_positive CHECK (step_no >= 1),
	kind			text NOT NULL CONSTRAINT journey_step_kind_valid CHECK (kind IN ('send', 'coupon', 'points', 'wait', 'branch_purchased')),
	channel			text CONSTRAINT journey_step_channel_valid CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL DEFAULT 'marketing' CONSTRAINT journey_step_purpose_valid CHECK (purpose IN ('marketing', 'service', 'research')),
	template		text,
	coupon_template	integer REFERENCES crm.coupon_template (template_id),
	points			bigint CONSTRAINT journey_step_points_positive CHECK (points > 0),
	wait			interval CONSTRAINT journey_step_wait_positive CHECK (wait > interval '0'),
	if_purchased_goto integer,
	PRIMARY KEY (journey_id, step_no),
	CONSTRAINT journey_step_fields CHECK (
		CASE kind WHEN 'send' THEN channel IS NOT NULL AND template IS NOT NULL
		          WHEN 'coupon' THEN coupon_template IS NOT NULL
		          WHEN 'points' THEN points IS NOT NULL
		          WHEN 'wait' THEN wait IS NOT NULL
		          ELSE true END)
);
COMMENT ON TABLE crm.journey_step IS
	'The steps of a journey in step_no order: send (channel, purpose, template: a message to the outbox), coupon (coupon_template), points (points awarded), wait (wait), branch_purchased (to if_purchased_goto when the customer bought since entering, NULL: the journey ends; else on to the next step)';
SELECT pg_catalog.pg_extension_config_dump('crm.journey_step', '');

CREATE SEQUENCE crm.journey_enrollment_id_seq;
CREATE TABLE crm.journey_enrollment (
	enrollment_id	bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.journey_enrollment_id_seq'),
	journey_id		integer NOT NULL REFERENCES crm.journey (journey_id),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	occasion		text NOT NULL,
	entered_at		timestamptz NOT NULL,
	status			text NOT NULL CONSTRAINT journey_enrollment_status_valid CHECK (status IN ('active', 'done', 'exited', 'control')),
	next_step		integer,
	next_at			timestamptz,
	ended_at		timestamptz,
	end_reason		text,
	CONSTRAINT journey_enrollment_once UNIQUE (journey_id, customer_id, occasion),
	CONSTRAINT journey_enrollment_next CHECK ((status = 'active') = (next_step IS NOT NULL AND next_at IS NOT NULL))
);
CREATE INDEX journey_enrollment_due_idx ON crm.journey_enrollment (next_at) WHERE status = 'active';
CREATE INDEX journey_enrollment_customer_idx ON crm.journey_enrollment (customer_id) WHERE status = 'active';
COMMENT ON TABLE crm.journey_enrollment IS
	'One row per journey, golden customer and occasion (the unique key: a journey cannot enter or send twice for one occasion): active with its next step and when it is due, done, exited (end_reason: purchase, not in audience, merged) or control (held out)';
SELECT pg_catalog.pg_extension_config_dump('crm.journey_enrollment', '');
SELECT pg_catalog.pg_extension_config_dump('crm.journey_enrollment_id_seq', '');

-- Is golden customer g held out of a campaign or journey: a stable hash of
-- the kind, the name and the customer, below percent of 100 (the same
-- customer is not always held out of everything; names, not ids, so that
-- the same set-up holds out the same customers).
CREATE FUNCTION crm.held_out(kind text, name text, g bigint, percent integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN percent > 0
   AND pg_catalog.abs(pg_catalog.hashtextextended(kind || ':' || name || ':' || g::text, 17)) % 100 < percent;
COMMENT ON FUNCTION crm.held_out(text, text, bigint, integer) IS
	'Whether a golden customer is in the control group of a campaign or journey (kind, name): a stable hash below percent of 100';

-- Enters golden customers (with their occasions) into journey j, each at
-- its time: one row per occasion, and only if re-entry allows it (never
-- again without reentry_after; else after that long since the last entry).
-- Returns how many entered.
CREATE FUNCTION crm.journey_enter(j crm.journey, customers bigint[], occasions text[], times timestamptz[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	INSERT INTO crm.journey_enrollment (journey_id, customer_id, occasion, entered_at, status, next_step, next_at, ended_at)
	SELECT j.journey_id, u.c, u.o, u.t,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN 'control' ELSE 'active' END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN NULL ELSE 1 END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN NULL ELSE u.t END,
	       CASE WHEN crm.held_out('journey', j.name, u.c, j.control_percent) THEN u.t END
	FROM ROWS FROM (pg_catalog.unnest(customers), pg_catalog.unnest(occasions), pg_catalog.unnest(times)) u(c, o, t)
	WHERE NOT EXISTS (
		SELECT 1 FROM crm.journey_enrollment e
		WHERE e.journey_id = j.journey_id AND e.customer_id = u.c
		  AND (j.reentry_after IS NULL OR e.entered_at > u.t - j.reentry_after))
	ORDER BY u.c
	ON CONFLICT ON CONSTRAINT journey_enrollment_once DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.journey_enter(crm.journey, bigint[], text[], timestamptz[]) IS
	'Internal: enrolls golden customers in a journey for their occasions, once per occasion and as re-entry allows; control-group members are recorded as control; returns how many entered';

-- The golden customers a time-driven journey's entry finds at "at", with
-- their occasions.
CREATE FUNCTION crm.journey_candidates(j crm.journey, at timestamptz)
RETURNS TABLE (customer_id bigint, occasion text)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tz text := (SELECT p.time_zone FROM crm.loyalty_program p);
	today date := (at AT TIME ZONE tz)::date;
BEGIN
	IF j.entry = 'birthday' THEN
		-- this year's birthday (Feb 29 on Feb 28 in other years), or next
		-- year's when this year's has passed, within entry_days
		RETURN QUERY
		SELECT c.customer_id, pg_catalog.to_char(b.next_birthday, 'YYYY')
		FROM crm.customer c
		CROSS JOIN LATERAL (
			SELECT CASE WHEN t.this_year >= today THEN t.this_year ELSE t.next_year END AS next_birthday
			FROM (SELECT (c.birthday + pg_catalog.make_interval(years => pg_catalog.date_part('year', today)::integer
			                                                     - pg_catalog.date_part('year', c.birthday)::integer))::date AS this_year,
			             (c.birthday + pg_catalog.make_interval(years => pg_catalog.date_part('year', today)::integer + 1
			                                                     - pg_catalog.date_part('year', c.birthday)::integer))::date AS next_year) t) b
		WHERE c.birthday IS NOT NULL AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		  AND b.next_birthday - today BETWEEN 0 AND j.entry_days;
	ELSIF j.entry = 'points_expiring' THEN
		RETURN QUERY
		SELECT a.customer_id, pg_catalog.to_char(at AT TIME ZONE tz, 'YYYY-MM')
		FROM crm.loyalty_account a
		JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE crm.points_expiring(a.customer_id, pg_catalog.make_interval(days => j.entry_days), at) > 0;
	ELSIF j.entry = 'dormant' THEN
		RETURN QUERY
		SELECT s.customer_id, pg_catalog.to_char(s.last_order_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
		FROM crm.customer_stats s
		JOIN crm.customer c ON c.customer_id = s.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE s.last_order_at <= at - pg_catalog.make_interval(days => j.entry_days);
	ELSIF j.entry = 'member_day' THEN
		IF pg_catalog.date_part('day', today) = j.entry_days THEN
			RETURN QUERY
			SELECT a.customer_id, pg_catalog.to_char(today, 'YYYY-MM')
			FROM crm.loyalty_account a
			JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL;
		END IF;
	ELSIF j.entry IN ('tier_up', 'tier_down') THEN
		RETURN QUERY
		SELECT DISTINCT ON (h.customer_id) crm.golden_customer(h.customer_id), h.tier_history_id::text
		FROM crm.tier_history h
		WHERE h.reason = CASE j.entry WHEN 'tier_up' THEN 'upgrade' ELSE 'downgrade' END
		  AND h.changed_at <= journey_candidates.at AND h.changed_at > journey_candidates.at - pg_catalog.make_interval(days => j.entry_days)
		ORDER BY h.customer_id, h.changed_at DESC, h.tier_history_id DESC;
	ELSIF j.entry = 'replenishment_due' THEN
		RETURN QUERY
		SELECT DISTINCT ON (r.customer_id) r.customer_id, COALESCE(r.sku, r.category) || ':' || pg_catalog.to_char(r.next_expected, 'YYYY-MM-DD')
		FROM crm.replenishment_due(at, pg_catalog.make_interval(days => j.entry_days)) r
		ORDER BY r.customer_id, r.next_expected, r.sku;
	ELSIF j.entry = 'post_purchase' THEN
		RETURN QUERY
		SELECT DISTINCT ON (o.customer_id) o.customer_id, o.order_id::text
		FROM crm.orders o
		JOIN crm.customer c ON c.customer_id = o.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE o.status = 'paid'
		  AND o.ordered_at <= journey_candidates.at - pg_catalog.make_interval(days => j.entry_days)
		  AND o.ordered_at > journey_candidates.at - pg_catalog.make_interval(days => j.entry_days) - interval '7 days'
		ORDER BY o.customer_id, o.ordered_at DESC, o.order_id DESC;
	ELSIF j.entry = 'cart_abandoned' THEN
		-- carts of the last 7 days older than entry_hours with neither a
		-- checkout event nor an order of the customer after them
		RETURN QUERY
		SELECT DISTINCT ON (e.customer_id) e.customer_id, e.event_id::text
		FROM crm.event e
		JOIN crm.customer c ON c.customer_id = e.customer_id AND c.merged_into IS NULL AND c.forgotten_at IS NULL
		WHERE e.kind = 'cart' AND e.at <= journey_candidates.at - pg_catalog.make_interval(hours => j.entry_hours)
		  AND e.at > journey_candidates.at - pg_catalog.make_interval(hours => j.entry_hours) - interval '7 days'
		  AND NOT EXISTS (SELECT 1 FROM crm.event k WHERE k.customer_id = e.customer_id AND k.kind = 'checkout'
		                  AND k.at > e.at AND k.at <= journey_candidates.at)
		  AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = e.customer_id
		                  AND o.ordered_at > e.at AND o.ordered_at <= journey_candidates.at)
		ORDER BY e.customer_id, e.at DESC, e.event_id DESC;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.journey_candidates(crm.journey, timestamptz) IS
	'Internal: the golden customers a time-driven journey entry finds at a time, with their occasions (birthday: the year; points_expiring, member_day: the month; dormant: the last order''s time, UTC; cart_abandoned: the cart event; tier_up, tier_down: the tier change; replenishment_due: the sku and its expected day; post_purchase: the order)';

-- Runs enrollment e's steps that are due at "at", up to the next wait or
-- the end.  Returns how many steps ran.
CREATE FUNCTION crm.journey_run(e crm.journey_enrollment, j crm.journey, at timestamptz,
	OUT ran integer, OUT coupon_templates integer[], OUT coupon_keys text[])
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s crm.journey_step;
	step integer := e.next_step;
	due timestamptz := e.next_at;
	key text;
	ended text;
	goal_after timestamptz;
BEGIN
	ran := 0;
	coupon_templates := '{}';
	coupon_keys := '{}';
	-- The goal: a purchase since entering (one the order's trigger did not
	-- see, being in flight when the enrollment was made), or for a win-back
	-- any purchase after the last order that made the customer dormant (its
	-- occasion).
	IF j.exit_on_purchase THEN
		IF j.entry = 'dormant' THEN
			goal_after := LEAST(e.occasion::timestamptz, e.entered_at);
		ELSE
			goal_after := e.entered_at;
		END IF;
		IF EXISTS (SELECT 1 FROM crm.orders o
		           WHERE o.customer_id = crm.golden_customer(e.customer_id) AND o.status = 'paid' AND o.ordered_at > goal_after) THEN
			ended := 'purchase';
		END IF;
	END IF;
	WHILE ended IS NULL AND due <= at LOOP
		SELECT * INTO s FROM crm.journey_step x WHERE x.journey_id = j.journey_id AND x.step_no = step;
		IF NOT FOUND THEN
			ended := 'done';
			EXIT;
		END IF;
		key := pg_catalog.format('journey:%s:%s:%s', j.name, e.enrollment_id, step);
		step := step + 1;
		CASE s.kind
		WHEN 'send' THEN
			-- a journey with a purchase goal sends nothing to who bought by the
			-- time the message is claimed (the outbox checks it)
			PERFORM crm.outbox_enqueue(e.customer_id, s.channel, s.purpose, s.template,
				pg_catalog.jsonb_build_object('journey', j.name, 'occasion', e.occasion, 'step', s.step_no),
				key, GREATEST(due, at), 'journey:' || j.name, goal_after);
		WHEN 'coupon' THEN
			-- returned to crm.journeys_tick, which issues all of a template at
			-- once (one issue at a time updates the template's counter row
			-- once per coupon in one transaction: quadratic)
			coupon_templates := coupon_templates || s.coupon_template;
			coupon_keys := coupon_keys || key;
		WHEN 'points' THEN
			PERFORM crm.adjust_points(e.customer_id, s.points, 'journey ' || j.name, key, at);
		WHEN 'wait' THEN
			due := due + s.wait;
		WHEN 'branch_purchased' THEN
			IF EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(e.customer_id)
			           AND o.status = 'paid' AND o.ordered_at > e.entered_at AND o.ordered_at <= at) THEN
				step := s.if_purchased_goto;
				IF step IS NULL THEN
					ended := 'done';
				END IF;
			END IF;
		END CASE;
		ran := ran + 1;
	END LOOP;
	IF ended IS NOT NULL THEN
		UPDATE crm.journey_enrollment x
		SET status = CASE ended WHEN 'done' THEN 'done' ELSE 'exited' END, next_step = NULL, next_at = NULL,
		    ended_at = at, end_reason = CASE WHEN ended <> 'done' THEN ended END
		WHERE x.enrollment_id = e.enrollment_id;
	ELSE
		UPDATE crm.journey_enrollment x SET next_step = step, next_at = due WHERE x.enrollment_id = e.enrollment_id;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.journey_run(crm.journey_enrollment, crm.journey, timestamptz) IS
	'Internal: runs an enrollment''s due steps up to the next wait or the end (each step''s effect keyed by journey, enrollment and step, so it happens once); checks the purchase goal before every run; returns how many steps ran and the coupons to issue (template and issue key each), which crm.journeys_tick issues together';

CREATE FUNCTION crm.journeys_tick(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Time-driven entries of every enabled journey, then every active
-- enrollment whose next step is due, oldest first.  Idempotent: entries are
-- unique per occasion, steps keyed.  Returns entries plus steps run.
DECLARE
	j crm.journey;
	e crm.journey_enrollment;
	customers bigint[];
	occasions text[];
	keys text[];
	tpl integer;
	r record;
	n bigint := 0;
	-- the coupon steps of this run (template, customer, issue key), issued together at the end
	c_templates integer[] := '{}';
	c_customers bigint[] := '{}';
	c_keys text[] := '{}';
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	FOR j IN SELECT * FROM crm.journey x WHERE x.enabled ORDER BY x.journey_id LOOP
		-- The audience, evaluated once per journey and tick: entrants of a
		-- time-driven entry must be in it; an enrollment about to take its
		-- first step (an order's first purchase) that is not ends here.
		IF j.entry <> 'first_purchase' THEN
			SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id), pg_catalog.array_agg(c.occasion ORDER BY c.customer_id)
			INTO customers, occasions
			FROM crm.journey_candidates(j, at) c
			WHERE j.audience IS NULL OR c.customer_id IN (SELECT m.customer_id FROM crm.audience_members(j.audience) m);
			IF customers IS NOT NULL THEN
				n := n + crm.journey_enter(j, customers, occasions, pg_catalog.array_fill(at, ARRAY[pg_catalog.cardinality(customers)]));
			END IF;
		END IF;
		IF j.audience IS NOT NULL THEN
			UPDATE crm.journey_enrollment x
			SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = at, end_reason = 'not in audience'
			WHERE x.journey_id = j.journey_id AND x.status = 'active' AND x.next_step = 1 AND x.next_at <= at
			  AND crm.golden_customer(x.customer_id) NOT IN (SELECT m.customer_id FROM crm.audience_members(j.audience) m);
		END IF;
	END LOOP;
	FOR e IN SELECT x.* FROM crm.journey_enrollment x
	         WHERE x.status = 'active' AND x.next_at <= at
	         ORDER BY x.next_at, x.enrollment_id
	         FOR UPDATE SKIP LOCKED LOOP
		SELECT * INTO j FROM crm.journey x WHERE x.journey_id = e.journey_id;
		CONTINUE WHEN NOT j.enabled;
		r := crm.journey_run(e, j, at);
		n := n + r.ran;
		c_templates := c_templates || r.coupon_templates;
		c_customers := c_customers || pg_catalog.array_fill(e.customer_id, ARRAY[pg_catalog.cardinality(r.coupon_templates)]);
		c_keys := c_keys || r.coupon_keys;
	END LOOP;
	FOR tpl IN SELECT DISTINCT u.t FROM pg_catalog.unnest(c_templates) u(t) ORDER BY 1 LOOP
		SELECT pg_catalog.array_agg(crm.golden_customer(u.c) ORDER BY u.k), pg_catalog.array_agg(u.k ORDER BY u.k)
		INTO customers, keys
		FROM ROWS FROM (pg_catalog.unnest(c_templates), pg_catalog.unnest(c_customers), pg_catalog.unnest(c_keys)) u(t, c, k)
		WHERE u.t = tpl;
		PERFORM crm.lock_rows('crm.customer', ARRAY(SELECT DISTINCT u FROM pg_catalog.unnest(customers) u ORDER BY 1), 'SHARE');
		PERFORM crm.coupon_insert(crm.coupon_take_stock(tpl, pg_catalog.cardinality(customers), at), customers, keys, at);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.journeys_tick(timestamptz) IS
	'crm.tick task: time-driven journey entries (birthday, points_expiring, dormant, cart_abandoned) and every due step of active enrollments; idempotent; returns entries plus steps run';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('journeys', 150, 'crm.journeys_tick(timestamptz)'::regprocedure, true);

-- AFTER INSERT statement trigger on crm.orders: a paid order ends its
-- customer's active enrollments in journeys with exit_on_purchase, and a
-- customer's first order enters first_purchase journeys, in the order's
-- own transaction (their first step runs at the next tick).  Touches only
-- the enrollments of the customers of the inserted orders.
CREATE FUNCTION crm.journeys_on_order() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	j crm.journey;
	firsts bigint[];
	times timestamptz[];
	any_exit boolean;
	any_first boolean;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;
	END IF;
	-- one look at the journeys decides what this statement has to do
	SELECT pg_catalog.bool_or(x.exit_on_purchase), pg_catalog.bool_or(x.entry = 'first_purchase')
	INTO any_exit, any_first
	FROM crm.journey x WHERE x.enabled;
	IF any_exit THEN
		UPDATE crm.journey_enrollment e
		SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = n.ordered_at, end_reason = 'purchase'
		FROM (SELECT x.customer_id, pg_catalog.min(x.ordered_at) AS ordered_at FROM crm_new x WHERE x.status = 'paid' GROUP BY 1) n,
		     crm.journey j2
		WHERE e.customer_id = n.customer_id AND e.status = 'active' AND e.entered_at < n.ordered_at
		  AND j2.journey_id = e.journey_id AND j2.exit_on_purchase;
	END IF;
	IF any_first THEN
		-- each customer enters at its first order's time
		SELECT pg_catalog.array_agg(f.customer_id ORDER BY f.customer_id), pg_catalog.array_agg(f.first_at ORDER BY f.customer_id)
		INTO firsts, times
		FROM (SELECT n.customer_id, pg_catalog.min(n.ordered_at) AS first_at FROM crm_new n
		      WHERE n.status = 'paid'
		        AND NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = n.customer_id
		                        AND o.order_id NOT IN (SELECT y.order_id FROM crm_new y))
		      GROUP BY 1) f;
		IF firsts IS NOT NULL THEN
			FOR j IN SELECT * FROM crm.journey x WHERE x.enabled AND x.entry = 'first_purchase' ORDER BY x.journey_id LOOP
				PERFORM crm.journey_enter(j, firsts, pg_catalog.array_fill('first'::text, ARRAY[pg_catalog.cardinality(firsts)]), times);
			END LOOP;
		END IF;
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.journeys_on_order() IS
	'Trigger: a paid order ends its customer''s active enrollments in journeys with exit_on_purchase (end_reason purchase) and a customer''s first paid order enters first_purchase journeys, in the order''s transaction';
CREATE TRIGGER orders_journeys AFTER INSERT ON crm.orders
	REFERENCING NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.journeys_on_order();

-- Merges: the merged customer's active enrollments go to the survivor,
-- except where the survivor is already active in the same journey (then
-- they end: merged), so one person is not sent a journey twice.
CREATE FUNCTION crm.journeys_on_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF crm.on_citus() THEN
		RETURN;						-- engagement does not run on a cluster yet
	END IF;
	UPDATE crm.journey_enrollment e
	SET status = 'exited', next_step = NULL, next_at = NULL, ended_at = pg_catalog.now(), end_reason = 'merged'
	WHERE e.customer_id = merged AND e.status = 'active'
	  AND EXISTS (SELECT 1 FROM crm.journey_enrollment s WHERE s.customer_id = survivor AND s.journey_id = e.journey_id AND s.status = 'active');
	UPDATE crm.journey_enrollment e SET customer_id = survivor
	WHERE e.customer_id = merged AND e.status = 'active'
	  AND NOT EXISTS (SELECT 1 FROM crm.journey_enrollment s
	                  WHERE s.journey_id = e.journey_id AND s.customer_id = survivor AND s.occasion = e.occasion);
END
$$;
COMMENT ON FUNCTION crm.journeys_on_merge(bigint, bigint) IS
	'Customer hook (merge): the merged customer''s active journey enrollments go on with the survivor, or end (merged) where the survivor is active in the same journey';
INSERT INTO crm.customer_hook (event, hook, run_order, fn, builtin) VALUES
	('merge', 'journeys', 210, 'crm.journeys_on_merge(bigint, bigint)'::regprocedure, true);

CREATE VIEW crm.v_journey_funnel AS
SELECT j.journey_id, j.name, j.entry,
       pg_catalog.count(e.enrollment_id) AS entered,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'control') AS control,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'active') AS active,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'done') AS done,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'exited' AND e.end_reason = 'purchase') AS exited_on_purchase,
       pg_catalog.count(e.enrollment_id) FILTER (WHERE e.status = 'exited' AND e.end_reason <> 'purchase') AS exited_otherwise,
       (SELECT pg_catalog.count(*) FROM crm.outbox o WHERE o.source = 'journey:' || j.name AND o.status <> 'suppressed') AS messages,
       (SELECT pg_catalog.count(*) FROM crm.outbox o WHERE o.source = 'journey:' || j.name AND o.status = 'suppressed') AS suppressed
FROM crm.journey j
LEFT JOIN crm.journey_enrollment e ON e.journey_id = j.journey_id
GROUP BY j.journey_id;
COMMENT ON VIEW crm.v_journey_funnel IS
	'Per journey: entered, held out (control), active, done, ended by a purchase, ended otherwise, messages queued and suppressed (until the outbox purges them)';
-- (end of engagement/journey.sql)


-- ===========================================================================
-- engagement/campaign.sql: campaigns and their measured effect (issue 17).
--
-- A campaign sends one message (and optionally a coupon) to an audience (a
-- tag expression) once, at send_at: crm.tick sends it, or
-- crm.campaign_send(campaign) at once.  control_percent of the audience,
-- chosen by a stable hash of campaign and golden customer, is held out and
-- recorded, so the effect can be measured: for treated against control,
-- the share who bought within the window after the send, revenue per
-- customer, the uplift with a 95% confidence interval and the incremental
-- revenue (crm.v_campaign_effect; crm.v_journey_effect does the same for
-- journeys with a control group).
-- ===========================================================================

CREATE TABLE crm.campaign (
	campaign_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE CONSTRAINT campaign_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
	audience		text NOT NULL,
	channel			text NOT NULL CONSTRAINT campaign_channel_valid
					CHECK (channel IN ('sms', 'email', 'push', 'app_inbox', 'wechat', 'phone_call')),
	purpose			text NOT NULL DEFAULT 'marketing' CONSTRAINT campaign_purpose_valid CHECK (purpose IN ('marketing', 'research')),
	template		text NOT NULL,
	coupon_template	integer REFERENCES crm.coupon_template (template_id),
	send_at			timestamptz NOT NULL,
	control_percent	integer NOT NULL DEFAULT 10 CONSTRAINT campaign_control_range CHECK (control_percent BETWEEN 0 AND 50),
	measure_for		interval NOT NULL DEFAULT '14 days' CONSTRAINT campaign_window_positive CHECK (measure_for > interval '0'),
	sent_at			timestamptz
);
COMMENT ON TABLE crm.campaign IS
	'Campaigns: one message (template on channel, for purpose) and optionally a coupon of coupon_template, to the golden customers of audience (a tag expression) at send_at (crm.tick, or crm.campaign_send); control_percent held out; the effect measured over measure_for after the send';
SELECT pg_catalog.pg_extension_config_dump('crm.campaign', '');
SELECT pg_catalog.pg_extension_config_dump('crm.campaign_campaign_id_seq', '');

CREATE TABLE crm.campaign_member (
	campaign_id		integer NOT NULL REFERENCES crm.campaign (campaign_id),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	control			boolean NOT NULL,
	PRIMARY KEY (campaign_id, customer_id)
);
COMMENT ON TABLE crm.campaign_member IS 'Who a campaign was for (golden customers at the send) and whether they were held out (control): the assignment its effect is measured on';
SELECT pg_catalog.pg_extension_config_dump('crm.campaign_member', '');

CREATE FUNCTION crm.campaign_send(campaign integer, at timestamptz DEFAULT pg_catalog.now()) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Once per campaign: the row is locked and sent_at set in the same
-- transaction, so a second call (or a concurrent tick) sends nothing.
-- Messages and coupons are keyed by campaign and customer.  Returns the
-- members recorded (treated and control).
DECLARE
	c crm.campaign;
	n bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.campaign_send()');
	SELECT * INTO c FROM crm.campaign x WHERE x.campaign_id = campaign FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'campaign % does not exist', campaign USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF c.sent_at IS NOT NULL THEN
		RETURN 0;
	END IF;
	INSERT INTO crm.campaign_member (campaign_id, customer_id, control)
	SELECT c.campaign_id, m.customer_id, crm.held_out('campaign', c.name, m.customer_id, c.control_percent)
	FROM crm.audience_members(c.audience) m
	ORDER BY m.customer_id;
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM crm.outbox_enqueue(m.customer_id, c.channel, c.purpose, c.template,
		pg_catalog.jsonb_build_object('campaign', c.name), pg_catalog.format('campaign:%s:%s', c.name, m.customer_id), at,
		'campaign:' || c.name)
	FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id AND NOT m.control ORDER BY m.customer_id;
	IF c.coupon_template IS NOT NULL THEN
		PERFORM crm.issue_coupon(c.coupon_template, m.customer_id, pg_catalog.format('campaign:%s:%s', c.name, m.customer_id), at)
		FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id AND NOT m.control ORDER BY m.customer_id;
	END IF;
	UPDATE crm.campaign x SET sent_at = at WHERE x.campaign_id = c.campaign_id;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.campaign_send(integer, timestamptz) IS
	'Sends a campaign once: records its audience''s golden customers (control_percent held out by a stable hash), queues a message for each of the others (outbox, dedupe key campaign:<name>:<customer>) and issues its coupon; returns the members recorded, 0 when it was sent already; 23503 unknown campaign';

CREATE FUNCTION crm.campaigns_tick(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c integer;
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;					-- engagement does not run on a cluster yet
	END IF;
	FOR c IN SELECT x.campaign_id FROM crm.campaign x WHERE x.sent_at IS NULL AND x.send_at <= at ORDER BY x.send_at, x.campaign_id LOOP
		n := n + crm.campaign_send(c, at);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.campaigns_tick(timestamptz) IS
	'crm.tick task: sends the campaigns due by "at" (crm.campaign_send); returns the members recorded';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('campaigns', 160, 'crm.campaigns_tick(timestamptz)'::regprocedure, true);

-- The effect of a treatment on groups of golden customers (treated and
-- control), each with its window [from, until): customers, buyers, revenue
-- of paid orders (net of refunds), and the comparison.
CREATE FUNCTION crm.treatment_effect(members bigint[], held_out boolean[], from_at timestamptz, until_at timestamptz)
RETURNS TABLE (treated bigint, control bigint, treated_buyers bigint, control_buyers bigint,
	treated_rate numeric, control_rate numeric, uplift numeric, uplift_low numeric, uplift_high numeric,
	treated_revenue_per_customer numeric, control_revenue_per_customer numeric, incremental_revenue numeric)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH g AS (
		SELECT u.m AS customer_id, u.h AS control,
		       EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(u.m) AND o.status = 'paid'
		               AND o.ordered_at >= from_at AND o.ordered_at < until_at) AS bought,
		       (SELECT COALESCE(pg_catalog.sum(o.net_amount), 0) FROM crm.orders o WHERE o.customer_id = crm.golden_customer(u.m)
		        AND o.status = 'paid' AND o.ordered_at >= from_at AND o.ordered_at < until_at) AS revenue
		FROM ROWS FROM (pg_catalog.unnest(members), pg_catalog.unnest(held_out)) u(m, h)),
	s AS (
		SELECT pg_catalog.count(*) FILTER (WHERE NOT g.control) AS nt, pg_catalog.count(*) FILTER (WHERE g.control) AS nc,
		       pg_catalog.count(*) FILTER (WHERE NOT g.control AND g.bought) AS bt, pg_catalog.count(*) FILTER (WHERE g.control AND g.bought) AS bc,
		       COALESCE(pg_catalog.sum(g.revenue) FILTER (WHERE NOT g.control), 0) AS rt, COALESCE(pg_catalog.sum(g.revenue) FILTER (WHERE g.control), 0) AS rc
		FROM g),
	r AS (
		SELECT s.*, s.bt::numeric / NULLIF(s.nt, 0) AS pt, s.bc::numeric / NULLIF(s.nc, 0) AS pc FROM s)
	SELECT r.nt, r.nc, r.bt, r.bc, pg_catalog.round(r.pt, 4), pg_catalog.round(r.pc, 4), pg_catalog.round(r.pt - r.pc, 4),
	       -- normal approximation of the difference of two proportions, 95%
	       pg_catalog.round(r.pt - r.pc - 1.96 * pg_catalog.sqrt(r.pt * (1 - r.pt) / r.nt + r.pc * (1 - r.pc) / r.nc), 4),
	       pg_catalog.round(r.pt - r.pc + 1.96 * pg_catalog.sqrt(r.pt * (1 - r.pt) / r.nt + r.pc * (1 - r.pc) / r.nc), 4),
	       pg_catalog.round(r.rt / NULLIF(r.nt, 0), 2), pg_catalog.round(r.rc / NULLIF(r.nc, 0), 2),
	       pg_catalog.round((r.rt / NULLIF(r.nt, 0) - r.rc / NULLIF(r.nc, 0)) * r.nt, 2)
	FROM r;
END;
COMMENT ON FUNCTION crm.treatment_effect(bigint[], boolean[], timestamptz, timestamptz) IS
	'Treated against control (held_out) golden customers over [from_at, until_at): sizes, buyers, conversion rates, the uplift (treated rate - control rate) with a 95% confidence interval (normal approximation), revenue per customer (paid orders, net of refunds) and the incremental revenue ((treated - control revenue per customer) x treated); NULL where a group is empty';

CREATE VIEW crm.v_campaign_effect AS
SELECT c.campaign_id, c.name, c.sent_at, c.measure_for, e.*
FROM crm.campaign c
CROSS JOIN LATERAL crm.treatment_effect(
	ARRAY(SELECT m.customer_id FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id ORDER BY m.customer_id),
	ARRAY(SELECT m.control FROM crm.campaign_member m WHERE m.campaign_id = c.campaign_id ORDER BY m.customer_id),
	c.sent_at, c.sent_at + c.measure_for) e
WHERE c.sent_at IS NOT NULL;
COMMENT ON VIEW crm.v_campaign_effect IS
	'Per sent campaign, treated against control over measure_for after the send: conversion rates, uplift with a 95% confidence interval, revenue per customer, incremental revenue (crm.treatment_effect)';

CREATE VIEW crm.v_journey_effect AS
SELECT j.journey_id, j.name, e.*
FROM crm.journey j
CROSS JOIN LATERAL (
	-- each enrollment measured over the 30 days after its entry
	SELECT pg_catalog.count(*) FILTER (WHERE x.status <> 'control') AS treated,
	       pg_catalog.count(*) FILTER (WHERE x.status = 'control') AS control,
	       pg_catalog.round(pg_catalog.avg(x.bought::integer) FILTER (WHERE x.status <> 'control'), 4) AS treated_rate,
	       pg_catalog.round(pg_catalog.avg(x.bought::integer) FILTER (WHERE x.status = 'control'), 4) AS control_rate,
	       pg_catalog.round(pg_catalog.avg(x.revenue) FILTER (WHERE x.status <> 'control'), 2) AS treated_revenue_per_customer,
	       pg_catalog.round(pg_catalog.avg(x.revenue) FILTER (WHERE x.status = 'control'), 2) AS control_revenue_per_customer
	FROM (SELECT en.status,
	             EXISTS (SELECT 1 FROM crm.orders o WHERE o.customer_id = crm.golden_customer(en.customer_id) AND o.status = 'paid'
	                     AND o.ordered_at >= en.entered_at AND o.ordered_at < en.entered_at + interval '30 days') AS bought,
	             (SELECT COALESCE(pg_catalog.sum(o.net_amount), 0) FROM crm.orders o WHERE o.customer_id = crm.golden_customer(en.customer_id)
	              AND o.status = 'paid' AND o.ordered_at >= en.entered_at AND o.ordered_at < en.entered_at + interval '30 days') AS revenue
	      FROM crm.journey_enrollment en WHERE en.journey_id = j.journey_id) x) e
WHERE j.control_percent > 0;
COMMENT ON VIEW crm.v_journey_effect IS
	'Per journey with a control group: entrants treated and held out, the share who bought and revenue per customer in the 30 days after entering';
-- (end of engagement/campaign.sql)


-- ===========================================================================
-- scale/distribute.sql: crm_ext on a Citus cluster (issue 15).
--
-- crm.distribute() turns an installed crm_ext on a Citus coordinator into a
-- distributed one, by one rule: a crm table with a customer_id column is
-- distributed by it, all in one co-location group (a customer's orders,
-- lines, journal, stats, tags ... sit on one shard, where crm's triggers
-- work on them: src/common/shard.c); every other crm table is a reference
-- table (a copy on every node: configuration, logs).  New tables follow the
-- rule by having, or not having, customer_id.
-- ===========================================================================

CREATE FUNCTION crm.distribute(shard_count integer DEFAULT 32)
RETURNS TABLE (table_name regclass, placement text, note text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;
BEGIN
	IF shard_count IS NULL OR shard_count NOT BETWEEN 1 AND 64000 THEN
		RAISE EXCEPTION 'shard_count must be between 1 and 64000, not %', shard_count
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus') THEN
		RAISE EXCEPTION 'crm.distribute() needs Citus in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'On every node: shared_preload_libraries = ''citus'' and CREATE EXTENSION citus; on the coordinator: SELECT citus_add_node(...) for each worker, then CREATE EXTENSION crm_ext and SELECT crm.distribute().';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO done;
	IF NOT done THEN
		RAISE EXCEPTION 'crm.distribute() runs on the Citus coordinator'
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) ''crm.customer''::pg_catalog.regclass)'
		INTO done;
	IF NOT done THEN
		EXECUTE 'SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 0 FROM pg_catalog.citus_get_active_worker_nodes()' INTO done;
		IF done THEN
			RAISE EXCEPTION 'crm.distribute() needs at least one active worker'
				USING ERRCODE = 'object_not_in_prerequisite_state',
				HINT = 'SELECT citus_add_node(host, port) for each worker first.';
		END IF;
		PERFORM crm.distribute_tables(shard_count);
		PERFORM crm.distribute_functions();
	ELSE
		RAISE NOTICE 'crm_ext is distributed already: only the workers'' id ranges are checked';
	END IF;
	PERFORM crm.distribute_id_ranges();
	RETURN QUERY EXECUTE
		'SELECT p.table_name, '
		'CASE d.partmethod WHEN ''h'' THEN ''distributed by customer_id'' WHEN ''n'' THEN ''reference'' ELSE ''coordinator'' END, '
		'CASE WHEN d.partmethod OPERATOR(pg_catalog.=) ''h'' THEN pg_catalog.format(''%s shards, co-located with crm.customer'', '
		'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid OPERATOR(pg_catalog.=) p.table_name)) END '
		'FROM crm.distribution_plan() p '
		'LEFT JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid OPERATOR(pg_catalog.=) p.table_name '
		'ORDER BY 2, 1::pg_catalog.text';
END $$;
COMMENT ON FUNCTION crm.distribute(integer) IS
	'On a Citus coordinator: distributes every crm table with a customer_id column by it (shard_count shards, co-located with crm.customer), keeps the tables that name functions on the coordinator and makes every other crm table a reference table (crm.distribution_plan()); lists each table''s placement. Run again after adding a worker (it then only gives the new worker its id ranges). 55000 without Citus, off the coordinator or without workers; 22023 for a bad shard_count';

-- Where crm.distribute() puts each table of crm_ext: a table with a
-- customer_id column is distributed by it; one that names functions
-- (regprocedure columns: tick tasks, customer hooks) stays on the
-- coordinator, where crm.tick and merges run, since such a value is an
-- object id that means another function, or none, on another node; every
-- other table is a reference table.
CREATE FUNCTION crm.distribution_plan()
RETURNS TABLE (table_name regclass, placement text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT c.oid::regclass,
	       CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                         WHERE a.attrelid = c.oid AND a.attname = 'customer_id' AND NOT a.attisdropped)
	            THEN 'distributed'
	            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	                           AND a.atttypid IN ('pg_catalog.regprocedure'::regtype, 'pg_catalog.regproc'::regtype,
	                                              'pg_catalog.regclass'::regtype, 'pg_catalog.regtype'::regtype,
	                                              'pg_catalog.oid'::regtype))
	            THEN 'coordinator'
	            ELSE 'reference' END
	FROM pg_catalog.pg_class c
	JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
	JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'crm_ext'
	WHERE c.relkind = 'r'
	ORDER BY 2 DESC, c.oid::regclass::text;
END;
COMMENT ON FUNCTION crm.distribution_plan() IS
	'Where crm.distribute() puts each table of crm_ext: distributed (it has customer_id), coordinator (it names functions by object id) or reference';

-- The work of crm.distribute(): keys, foreign keys, tables.
CREATE FUNCTION crm.distribute_tables(shard_count integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	fk record;
	keep boolean;
BEGIN
	-- Triggers on distributed tables run on the shards (src/common/shard.c
	-- makes crm's triggers safe there); Citus asks for this to create them.
	PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
	-- (not a notice per table that its rows were copied)
	PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
	PERFORM pg_catalog.set_config('citus.shard_count', shard_count::text, true);
	PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

	-- What crm.distribute() writes in crm's tables (order lines' customer,
	-- the rows copied into the shards) is held back from crm's triggers, on
	-- the workers too (Citus passes SET LOCAL on): it is the triggers' work
	-- done already, and would be done twice.
	SET LOCAL citus.propagate_set_commands = 'local';
	SET LOCAL session_replication_role = replica;

	-- Lines of a single node's orders get their order's customer (it places them).
	UPDATE crm.order_line l SET customer_id = o.customer_id
	FROM crm.orders o WHERE o.order_id = l.order_id AND l.customer_id IS NULL;

	-- Foreign keys go first, so that tables can change placement in any
	-- order; the ones Citus can keep come back at the end.  Citus copies
	-- an extension's tables to no worker (CREATE EXTENSION made them
	-- there), so what changes in them before they are distributed changes
	-- on every node.
	CREATE TEMP TABLE crm_distribute_fk ON COMMIT DROP AS
	SELECT c.conrelid::regclass AS child, c.confrelid::regclass AS parent, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def,
	       c.conkey, c.confkey
	FROM pg_catalog.pg_constraint c
	WHERE c.contype = 'f' AND c.connamespace = 'crm'::regnamespace;
	PERFORM crm.distribute_ddl(pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', f.child, f.conname))
	FROM crm_distribute_fk f;
	PERFORM crm.distribute_ddl('ALTER TABLE crm.order_line ALTER COLUMN customer_id SET NOT NULL');
	-- An order never changes customer on Citus (its distribution column
	-- cannot change), so its lines have nothing to follow.
	PERFORM crm.distribute_ddl('DROP TRIGGER orders_lines_follow ON crm.orders');

	-- Citus keeps a key or unique constraint only with the distribution
	-- column in it: per-customer uniqueness.
	PERFORM crm.distribute_ddl(k.ddl)
	FROM crm.distribution_plan() p, crm.distribute_keys(p.table_name) k
	WHERE p.placement = 'distributed';

	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p WHERE p.placement = 'reference' LOOP
		PERFORM pg_catalog.create_reference_table(t.table_name);
	END LOOP;
	PERFORM pg_catalog.create_distributed_table('crm.customer', 'customer_id', colocate_with => 'none');
	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p
	         WHERE p.placement = 'distributed' AND p.table_name <> 'crm.customer'::regclass LOOP
		PERFORM pg_catalog.create_distributed_table(t.table_name, 'customer_id', colocate_with => 'crm.customer');
	END LOOP;
	-- The rows copied into the shards stay on disk in the coordinator's
	-- tables unless removed; crm's TRUNCATE guards (the journal is
	-- append-only, references) are about the data, which the shards hold.
	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p WHERE p.placement <> 'coordinator' LOOP
		PERFORM pg_catalog.truncate_local_data_after_distributing_table(t.table_name);
	END LOOP;
	SET LOCAL session_replication_role = origin;

	-- Foreign keys Citus keeps: to a reference table, or between
	-- distributed tables on customer_id.  The others (a reference table's
	-- to a customer, a merge chain's, a row's origin record) are checked
	-- by crm.verify() instead.
	FOR fk IN SELECT f.*, pc.placement AS child_at, pp.placement AS parent_at
	          FROM crm_distribute_fk f
	          JOIN crm.distribution_plan() pc ON pc.table_name = f.child
	          JOIN crm.distribution_plan() pp ON pp.table_name = f.parent LOOP
		keep := (fk.parent_at = 'reference' AND fk.child_at <> 'coordinator')
		     OR (fk.parent_at = 'coordinator' AND fk.child_at = 'coordinator')
		     OR (fk.child_at = 'distributed' AND fk.parent_at = 'distributed' AND fk.conkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a WHERE a.attrelid = fk.child AND a.attname = 'customer_id')]
		         AND fk.confkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a WHERE a.attrelid = fk.parent AND a.attname = 'customer_id')]);
		IF keep THEN
			EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.child, fk.conname, fk.def);
		END IF;
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_tables(integer) IS
	'The work of crm.distribute(): per-customer keys, reference and distributed tables, the foreign keys Citus keeps';

-- The statements that give a per-customer table's primary key and unique
-- constraints and indexes without customer_id that column as their last.
CREATE FUNCTION crm.distribute_keys(tbl regclass)
RETURNS TABLE (ddl text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE con.contype
	         WHEN 'p' THEN pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY (%s, customer_id)',
	                                         tbl, con.conname, con.conname, k.cols)
	         WHEN 'u' THEN pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I UNIQUE (%s, customer_id)',
	                                         tbl, con.conname, con.conname, k.cols)
	         ELSE pg_catalog.format('DROP INDEX %s; CREATE UNIQUE INDEX %I ON %s (%s, customer_id)%s', x.indexrelid::regclass, c.relname, tbl, k.cols,
	                                COALESCE(' WHERE ' || pg_catalog.pg_get_expr(x.indpred, x.indrelid), ''))
	       END
	FROM pg_catalog.pg_index x
	JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
	LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid
	CROSS JOIN LATERAL (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY u.n) AS cols
	                    FROM pg_catalog.unnest(x.indkey::smallint[]) WITH ORDINALITY u(att, n)
	                    JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.att) k
	WHERE x.indrelid = tbl AND x.indisunique
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                  WHERE a.attrelid = tbl AND a.attname = 'customer_id' AND a.attnum = ANY (x.indkey::smallint[]))
	ORDER BY c.relname;
END;
COMMENT ON FUNCTION crm.distribute_keys(regclass) IS
	'crm.distribute(): the statements that give the primary key and unique constraints and indexes of per-customer table tbl customer_id as their last column';

-- A DDL statement on the coordinator and on every worker (crm.distribute()).
CREATE FUNCTION crm.distribute_ddl(ddl text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	EXECUTE ddl;
	FOR r IN SELECT * FROM pg_catalog.run_command_on_workers(ddl) w WHERE NOT w.success LOOP
		RAISE EXCEPTION 'worker %:% could not run: %', r.nodename, r.nodeport, ddl
			USING ERRCODE = 'connection_failure', DETAIL = r.result,
			HINT = 'crm_ext''s tables must be as CREATE EXTENSION made them on every worker; fix the worker, then run SELECT crm.distribute() again.';
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_ddl(text) IS
	'crm.distribute(): runs a DDL statement on the coordinator and then on every worker (extension tables are not propagated)';

-- Rows crm's triggers write on a worker take their ids from that worker's
-- copy of the sequence; each node gets its own range (node group g: from
-- g * 2^48, as Citus does for its own sequences) so ids stay unique.
CREATE FUNCTION crm.distribute_id_ranges()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_catalog.run_command_on_workers(
		'SELECT pg_catalog.count(pg_catalog.setval(pg_catalog.format(''%I.%I'', s.schemaname, s.sequencename)::pg_catalog.regclass, '
		'GREATEST(COALESCE(s.last_value, 1), (SELECT l.groupid::pg_catalog.int8 FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.<<) 48))) '
		'FROM pg_catalog.pg_sequences s WHERE s.schemaname OPERATOR(pg_catalog.=) ''crm'' '
		'AND s.data_type OPERATOR(pg_catalog.=) ''bigint''::pg_catalog.regtype') r WHERE NOT r.success) THEN
		RAISE EXCEPTION 'a worker''s id ranges could not be set'
			USING ERRCODE = 'connection_failure',
			HINT = 'Check that every worker is up, then run SELECT crm.distribute() again.';
	END IF;
END $$;
COMMENT ON FUNCTION crm.distribute_id_ranges() IS
	'crm.distribute(): each worker''s copies of crm''s bigint sequences start at its node group * 2^48, so ids its triggers give stay unique';
