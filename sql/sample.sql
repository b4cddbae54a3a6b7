-- crm.generate_sample: deterministic (same seed, same data, byte for byte),
-- different for another seed, realistic shape, clear errors.
\i sql/include/expect_error.sql
-- A checksum over every generated row, independent of TimeZone, DateStyle
-- and collation.
CREATE FUNCTION pg_temp.sample_checksum() RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.md5(pg_catalog.string_agg(t, E'\n' ORDER BY t COLLATE "C")) FROM (
		SELECT pg_catalog.format('s|%s|%s|%s|%s|%s', store_id, name, city, region, opened_on - date '2000-01-01') FROM crm.store
		UNION ALL
		SELECT pg_catalog.format('c|%s|%s|%s|%s|%s|%s|%s|%s|%s', customer_id, name, phone, email, birthday - date '2000-01-01',
		                         gender, home_store_id, channel, EXTRACT(epoch FROM created_at)) FROM crm.customer
		UNION ALL
		SELECT pg_catalog.format('p|%s|%s', customer_id, person_id) FROM crm.sample_person
		UNION ALL
		SELECT pg_catalog.format('i|%s|%s|%s|%s|%s', identity_id, kind, value, customer_id, EXTRACT(epoch FROM created_at)) FROM crm.identity
		UNION ALL
		SELECT pg_catalog.format('o|%s|%s|%s|%s|%s|%s|%s', order_id, customer_id, store_id, channel, EXTRACT(epoch FROM ordered_at), amount, status) FROM crm.orders
		UNION ALL
		SELECT pg_catalog.format('l|%s|%s|%s|%s|%s|%s', order_id, line_no, sku, category, qty, amount) FROM crm.order_line
		UNION ALL
		SELECT pg_catalog.format('e|%s|%s|%s|%s|%s|%s|%s', event_id, customer_id, kind, EXTRACT(epoch FROM at), channel, store_id, props) FROM crm.event
	) AS rows(t)
$$;

BEGIN;
SELECT * FROM crm.generate_sample(1000, 1) ORDER BY relation;
SELECT pg_temp.sample_checksum() AS seed_1;
-- fresh statistics, so the checks below join by hash, not by nested loops
-- over tables the planner still thinks are empty (minutes under valgrind)
ANALYZE crm.customer, crm.orders, crm.order_line, crm.identity, crm.event, crm.sample_person;
-- the shape a demo relies on
SELECT count(*) AS customers, count(DISTINCT person_id) AS persons,
       count(*) FILTER (WHERE person_id IN (SELECT person_id FROM crm.sample_person GROUP BY 1 HAVING count(*) > 1)) AS records_of_split_persons
FROM crm.sample_person;
SELECT count(*) FILTER (WHERE EXTRACT(month FROM birthday) = 2 AND EXTRACT(day FROM birthday) = 29) AS born_feb_29,
       min(birthday) >= date '1950-01-01' AS birthdays_from_1950,
       count(*) FILTER (WHERE home_store_id IS NULL) AS without_home_store
FROM crm.customer;
SELECT round(100.0 * count(*) FILTER (WHERE status = 'refunded') / count(*), 1) AS refunded_pct,
       min(ordered_at) >= crm.sample_as_of() - interval '730 days' AND max(ordered_at) < crm.sample_as_of() AS orders_in_window,
       count(*) FILTER (WHERE channel = 'pos' AND store_id IS NULL) AS pos_without_store
FROM crm.orders;
-- dropout: a good share of buyers lapsed more than 180 days before the end
SELECT round(100.0 * count(*) FILTER (WHERE last_order < crm.sample_as_of() - interval '180 days') / count(*)) BETWEEN 15 AND 45
       AS lapsed_share_plausible
FROM (SELECT customer_id, max(ordered_at) AS last_order FROM crm.orders GROUP BY 1) AS buyers;
-- lines split each order's amount exactly
SELECT count(*) AS orders_whose_lines_do_not_add_up
FROM crm.orders o JOIN (SELECT order_id, sum(amount) AS total FROM crm.order_line GROUP BY 1) l USING (order_id)
WHERE l.total <> o.amount;
SELECT count(*) AS orders_without_lines FROM crm.orders o WHERE NOT EXISTS (SELECT 1 FROM crm.order_line l WHERE l.order_id = o.order_id);
SELECT count(DISTINCT category) AS categories FROM crm.order_line;
-- Wednesday organic shoppers: organic lines lean to Wednesday (ISO day 3)
SELECT EXTRACT(isodow FROM o.ordered_at AT TIME ZONE 'UTC') = 3 AS wednesday,
       round(100.0 * count(*) FILTER (WHERE l.category = 'organic') / count(*), 0) > 10 AS organic_share_above_10pct
FROM crm.orders o JOIN crm.order_line l USING (order_id) GROUP BY 1 ORDER BY 1;
-- identifiers: junk phones and family tablets exist, as traps for stitching
SELECT count(*) FILTER (WHERE value = '00000000000') > 0 AS has_junk_phones,
       (SELECT count(*) FROM (SELECT value FROM crm.identity WHERE value LIKE 'tablet-%' GROUP BY 1 HAVING count(*) = 4) t) > 0 AS has_family_tablets,
       (SELECT max(n) FROM (SELECT customer_id, count(*) AS n FROM crm.identity GROUP BY 1) t) <= 4 AS at_most_4_per_record,
       (SELECT min(n) FROM (SELECT c.customer_id, count(i.kind) AS n FROM crm.customer c LEFT JOIN crm.identity i USING (customer_id) GROUP BY 1) t) >= 1 AS at_least_1_per_record
FROM crm.identity;
SELECT kind, count(*) FROM crm.event GROUP BY 1 ORDER BY 1;
-- sequences continue after the sample
SELECT nextval('crm.customer_id_seq') = 1001 AS customer_seq_continues,
       nextval('crm.order_id_seq') = (SELECT max(order_id) + 1 FROM crm.orders) AS order_seq_continues;
-- tables must be empty
SELECT pg_temp.expect_error($$SELECT crm.generate_sample(10, 1)$$);
SELECT * FROM crm.verify();
ROLLBACK;

BEGIN;
SELECT count(*) FROM crm.generate_sample(1000, 1);
SELECT pg_temp.sample_checksum() AS seed_1_again;
-- fresh statistics again: an autovacuum after the first ROLLBACK leaves
-- reltuples 0 over non-empty pages, and crm.verify()'s stats rebuild then
-- scans every order once per customer (minutes)
ANALYZE crm.customer, crm.orders, crm.order_line, crm.identity, crm.event, crm.sample_person;
SELECT * FROM crm.verify();
ROLLBACK;

BEGIN;
SELECT count(*) FROM crm.generate_sample(1000, 2);
SELECT pg_temp.sample_checksum() AS seed_2;
SELECT count(*) AS customers FROM crm.customer;
ANALYZE crm.customer, crm.orders, crm.order_line, crm.identity, crm.event, crm.sample_person;
SELECT * FROM crm.verify();
ROLLBACK;

-- bad arguments
SELECT pg_temp.expect_error($$SELECT crm.generate_sample(0)$$);
SELECT pg_temp.expect_error($$SELECT crm.generate_sample(-5, 1)$$);
SELECT pg_temp.expect_error($$SELECT crm.generate_sample(20000001, 1)$$);
SELECT count(*) AS rows_for_null_customers FROM crm.generate_sample(NULL, 1);
SELECT count(*) AS customers_after_all FROM crm.customer;

-- the random draws
SELECT crm.sample_uniform(1, 2, 3) = crm.sample_uniform(1, 2, 3) AS uniform_is_pure,
       crm.sample_uniform(1, 2, 3) <> crm.sample_uniform(1, 2, 4) AS uniform_depends_on_key,
       crm.sample_uniform(1, 2, 3) <> crm.sample_uniform(2, 2, 3) AS uniform_depends_on_seed;
SELECT min(u) >= 0 AND max(u) < 1 AS in_unit_interval, abs(avg(u) - 0.5) < 0.01 AS mean_near_half
FROM (SELECT crm.sample_uniform(7, 1, k) AS u FROM generate_series(1, 100000) k) t;
SELECT abs(avg(z)) < 0.02 AS normal_mean_0, abs(stddev(z) - 1) < 0.02 AS normal_sd_1
FROM (SELECT crm.sample_normal(7, 1, k) AS z FROM generate_series(1, 100000) k) t;
SELECT min(i) = 0 AND max(i) = 9 AS int_covers_0_to_9, count(DISTINCT i) AS distinct_values
FROM (SELECT crm.sample_int(7, 1, k, 10) AS i FROM generate_series(1, 10000) k) t;
SELECT pg_temp.expect_error($$SELECT crm.sample_int(1, 1, 1, 0)$$);
SELECT crm.sample_category(0) AS first, crm.sample_category(0.999999) AS last;
SELECT pg_temp.expect_error($$SELECT crm.sample_category(1.0)$$);
SELECT pg_temp.expect_error($$SELECT crm.sample_category('NaN')$$);
SELECT category_no, category, prefix FROM crm.sample_categories() ORDER BY category_no LIMIT 3;
-- day 10 is a Thursday (day 0 a Monday); snapping to Saturday (5)
SELECT crm.sample_snap_weekday(10, 5, 0, 730) AS saturday_same_week,
       crm.sample_snap_weekday(729, 5, 0, 730) AS saturday_a_week_earlier,
       crm.sample_snap_weekday(8, 0, 8, 730) AS monday_next_week_if_before_first_day;
SELECT pg_temp.expect_error($$SELECT crm.sample_snap_weekday(3, 7, 0, 730)$$);
