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
BEGIN
	IF customers < 1 OR customers > 20000000 THEN
		RAISE EXCEPTION 'crm.generate_sample needs between 1 and 20,000,000 customers, not %', customers
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT 1 FROM crm.customer) OR EXISTS (SELECT 1 FROM crm.store)
	   OR EXISTS (SELECT 1 FROM crm.orders) OR EXISTS (SELECT 1 FROM crm.event) THEN
		RAISE EXCEPTION 'crm.generate_sample needs empty customer, store, order and event tables'
			USING ERRCODE = 'CR005',
			      DETAIL = 'Sample data uses fixed ids, so that the same seed gives the same data.',
			      HINT = 'Run it in a fresh database, or TRUNCATE crm.customer, crm.store CASCADE first.';
	END IF;

	-- Stores ---------------------------------------------------------------
	INSERT INTO crm.store (store_id, name, city, region, opened_on)
	SELECT s, pg_catalog.format('%s #%s', (ARRAY['Shanghai', 'Beijing', 'Shenzhen', 'Hangzhou', 'Chengdu',
	                                                 'Nanjing', 'Wuhan', 'Suzhou', 'Xi''an', 'Qingdao'])[1 + s % 10], s),
	       (ARRAY['Shanghai', 'Beijing', 'Shenzhen', 'Hangzhou', 'Chengdu',
	              'Nanjing', 'Wuhan', 'Suzhou', 'Xi''an', 'Qingdao'])[1 + s % 10],
	       (ARRAY['east', 'north', 'south', 'east', 'west', 'east', 'central', 'east', 'west', 'north'])[1 + s % 10],
	       date '2010-01-01' + crm.sample_int(seed, 100, s, 4000)
	FROM pg_catalog.generate_series(1, 50) AS s;

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
	INSERT INTO crm.identity (identity_id, kind, value, customer_id, origin_customer_id, created_at)
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

	-- Orders ---------------------------------------------------------------------
	-- Days are counted from window_start (a Monday).  Wednesday-organic
	-- shoppers mostly shop on Wednesdays, weekend shoppers on Saturdays.
	INSERT INTO crm.orders (order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status)
	SELECT o.order_id, o.customer_id, o.customer_id,
	       CASE WHEN o.channel = 'pos' THEN
	            CASE WHEN crm.sample_uniform(seed, 62, o.order_id) < 0.85 THEN o.home_store
	                 ELSE 1 + crm.sample_int(seed, 63, o.order_id, 50) END END,
	       o.channel,
	       window_start + o.day * interval '1 day'
	           + (8 * 3600 + crm.sample_int(seed, 64, o.order_id, 48600)) * interval '1 second',
	       GREATEST(1.00, round((o.basket * exp(0.45 * crm.sample_normal(seed, 65, o.order_id) - 0.1))::numeric, 2)),
	       CASE WHEN crm.sample_uniform(seed, 66, o.order_id) < 0.03 THEN 'refunded' ELSE 'paid' END
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

	-- Order lines ----------------------------------------------------------------
	-- 1-5 lines splitting the order amount exactly.  Line 1 follows the
	-- shopper's habits (organic on Wednesdays, a staple they replenish, a
	-- favourite category); later lines are often line 1's companion sku, which
	-- makes frequently-bought-together pairs.
	INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
	SELECT o.order_id, l.line_no, c.prefix || '-' || pg_catalog.lpad(l.sku_idx::text, 4, '0'), c.category,
	       1 + pg_catalog.floor(3 * crm.sample_uniform(seed, 75, o.order_id * 8 + l.line_no) ^ 3)::integer,
	       ((pg_catalog.round(o.cents * (l.line_no::double precision / o.n_lines) ^ o.skew)
	         - pg_catalog.round(o.cents * ((l.line_no - 1)::double precision / o.n_lines) ^ o.skew)) / 100)::numeric(14,2)
	FROM (
		SELECT ord.order_id, (ord.amount * 100)::double precision AS cents, r.favourite, r.staple_cat, r.staple_idx,
		       1 + pg_catalog.floor(5 * crm.sample_uniform(seed, 70, ord.order_id) ^ 1.7)::integer AS n_lines,
		       0.6 + 0.8 * crm.sample_uniform(seed, 71, ord.order_id) AS skew,
		       r.wednesday_organic AND EXTRACT(isodow FROM ord.ordered_at AT TIME ZONE 'UTC') = 3 AS organic_day
		FROM crm.orders ord
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

	-- Events ---------------------------------------------------------------------
	INSERT INTO crm.event (event_id, customer_id, origin_customer_id, kind, at, channel, store_id, props)
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
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE up(id, depth) AS (
		SELECT record, 0
		UNION ALL
		SELECT c.merged_into, u.depth OPERATOR(pg_catalog.+) 1
		FROM up u JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) u.id
		WHERE c.merged_into IS NOT NULL AND u.depth OPERATOR(pg_catalog.<) 1000)
	SELECT EXISTS (SELECT 1 FROM up u WHERE u.id OPERATOR(pg_catalog.=) target)
$$;
COMMENT ON FUNCTION crm.loyalty_merged_along(bigint, bigint) IS
	'Internal: is target the record itself or a record it is merged into now (directly or through others)';

CREATE OR REPLACE FUNCTION crm.points_journal_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- Merges and unmerges re-point rows along the merges of the customer
	-- records as they stand: a row may move only to the record its points
	-- were earned or spent on, or to a record that one is merged into.
	-- Nothing else about a row ever changes.  (A rule on the data, not a
	-- switch a session could turn on.)
	IF TG_OP = 'UPDATE'
	   AND (pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) 'customer_id'::text)
	       OPERATOR(pg_catalog.=) (pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.-) 'customer_id'::text)
	   AND crm.loyalty_merged_along(NEW.origin_customer_id, NEW.customer_id) THEN
		RETURN NEW;
	END IF;
	RAISE EXCEPTION 'crm.points_journal is append-only: % is not allowed', TG_OP
		USING ERRCODE = 'object_not_in_prerequisite_state',
		      HINT = 'Corrections are new entries: use crm.adjust_points.';
END
$$;

COMMENT ON FUNCTION crm.points_journal_guard() IS
	'Rejects UPDATE, DELETE and TRUNCATE on crm.points_journal; only customer_id may change, to the row''s origin or a record the origin is merged into';

CREATE OR REPLACE FUNCTION crm.loyalty_merge(survivor bigint, merged bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s crm.loyalty_account;
	m crm.loyalty_account;
	moved bigint;
BEGIN
	IF survivor OPERATOR(pg_catalog.=) merged THEN
		RAISE EXCEPTION 'cannot merge customer % into itself', survivor USING ERRCODE = 'CR004';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) merged) THEN
		RETURN;		-- nothing to move
	END IF;
	PERFORM crm.loyalty_ensure_account(survivor, pg_catalog.now());
	-- Lock both accounts in customer-id order.
	PERFORM 1 FROM crm.loyalty_account a WHERE a.customer_id IN (survivor, merged) ORDER BY a.customer_id FOR UPDATE;
	SELECT * INTO s FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) survivor;
	SELECT * INTO m FROM crm.loyalty_account a WHERE a.customer_id OPERATOR(pg_catalog.=) merged;
	moved := crm.ledger_total(m.ledger);
	UPDATE crm.points_journal p SET customer_id = survivor WHERE p.customer_id OPERATOR(pg_catalog.=) merged;
	INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, reason, at)
	VALUES (survivor, merged, 'merge', 0,
	        pg_catalog.format('merged customer %s into %s: %s points, %s debt moved', merged, survivor, moved, m.debt), pg_catalog.now());
	UPDATE crm.loyalty_account a SET ledger = s.ledger OPERATOR(crm.+) m.ledger, debt = s.debt OPERATOR(pg_catalog.+) m.debt,
		updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) survivor;
	UPDATE crm.loyalty_account a SET ledger = '{}', debt = 0, updated_at = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) merged;
	PERFORM crm.loyalty_recompute_spend(survivor);
	PERFORM crm.loyalty_recompute_spend(merged);
	-- The survivor keeps the higher of the two tiers.
	IF (SELECT t.rank FROM crm.tier t WHERE t.tier OPERATOR(pg_catalog.=) m.tier)
	   OPERATOR(pg_catalog.>) (SELECT t.rank FROM crm.tier t WHERE t.tier OPERATOR(pg_catalog.=) s.tier) THEN
		UPDATE crm.loyalty_account a SET tier = m.tier, tier_since = m.tier_since
		WHERE a.customer_id OPERATOR(pg_catalog.=) survivor;
		INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason)
		VALUES (survivor, s.tier, m.tier, pg_catalog.now(), 'merge');
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION crm.loyalty_unmerge(survivor bigint, restored bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	side bigint;
	other bigint;
BEGIN
	PERFORM crm.loyalty_ensure_account(survivor, pg_catalog.now());
	PERFORM crm.loyalty_ensure_account(restored, pg_catalog.now());
	PERFORM 1 FROM crm.loyalty_account a WHERE a.customer_id IN (survivor, restored) ORDER BY a.customer_id FOR UPDATE;
	-- 1. Every journal row goes back to the golden record of the customer it
	--    was earned or spent on.
	UPDATE crm.points_journal p SET customer_id = restored
	WHERE p.customer_id OPERATOR(pg_catalog.=) survivor AND p.origin_customer_id OPERATOR(pg_catalog.<>) survivor
	  AND crm.loyalty_golden(p.origin_customer_id) OPERATOR(pg_catalog.=) restored;
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
	-- The restored record gets the tier its own rolling spend reaches.
	UPDATE crm.loyalty_account a
	SET tier = (SELECT t.tier FROM crm.tier t WHERE t.threshold OPERATOR(pg_catalog.<=) a.qualifying_spend ORDER BY t.rank DESC LIMIT 1),
	    tier_since = pg_catalog.now()
	WHERE a.customer_id OPERATOR(pg_catalog.=) restored;
	INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason)
	SELECT a.customer_id, NULL, a.tier, pg_catalog.now(), 'unmerge' FROM crm.loyalty_account a
	WHERE a.customer_id OPERATOR(pg_catalog.=) restored;
END
$$;


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
