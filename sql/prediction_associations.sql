-- Frequently bought together: pair rules from paid order lines, checked by
-- hand on a small example and against a plain SQL self-join on a larger one,
-- also when work_mem forces several passes.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
SET extra_float_digits = 0;
BEGIN;
INSERT INTO crm.customer (customer_id) VALUES (1), (2), (3);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, status) VALUES
	(1, 1, 'web', '2026-06-01', 10, 'paid'),
	(2, 1, 'web', '2026-06-10', 10, 'paid'),
	(3, 2, 'web', '2026-06-11', 10, 'paid'),
	(4, 2, 'web', '2026-06-12', 10, 'paid'),
	(5, 3, 'web', '2026-06-13', 10, 'refunded'),
	(6, 3, 'web', '2026-06-14', 10, 'paid'),
	(7, 3, 'web', '2026-06-15', 10, 'paid');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(1, 1, 'A', 'x', 1, 1), (1, 2, 'B', 'x', 1, 1), (1, 3, 'C', 'x', 1, 1), (1, 4, 'A', 'x', 2, 2),
	(2, 1, 'A', 'x', 1, 1), (2, 2, 'B', 'x', 1, 1),
	(3, 1, 'A', 'x', 1, 1), (3, 2, 'C', 'x', 1, 1),
	(4, 1, 'B', 'x', 1, 1), (4, 2, 'D', 'x', 1, 1),
	(5, 1, 'A', 'x', 1, 1), (5, 2, 'B', 'x', 1, 1),
	(6, 1, 'A', 'x', 1, 1);
-- Order 7 has no lines; order 5 is refunded: 5 baskets.  A is in 4, B in 3,
-- C in 2, D in 1; A+B in 2, A+C in 2, B+C in 1, B+D in 1.
SELECT crm.refresh_associations(0.3, 0);
SELECT antecedent, consequent, baskets, support, round(confidence::numeric, 4) AS confidence, round(lift::numeric, 4) AS lift
FROM crm.association_rule ORDER BY antecedent, consequent;
SELECT crm.refresh_associations(0.3, 0.6);
SELECT antecedent, consequent, round(confidence::numeric, 4) AS confidence FROM crm.association_rule ORDER BY 1, 2;
SELECT crm.refresh_associations(0.2, 0);
SELECT count(*) AS rules, count(*) FILTER (WHERE antecedent = 'D' OR consequent = 'D') AS with_d FROM crm.association_rule;

SELECT * FROM crm.frequently_bought_together('C', 5);
SELECT * FROM crm.frequently_bought_together('A', 5);
SELECT * FROM crm.frequently_bought_together('A', 0);
SELECT * FROM crm.frequently_bought_together('nothing', 5);
-- Customer 2 bought A, C and B, D: suggestions leave out what was bought in the last 30 days.
SELECT * FROM crm.recommend(2, 5, '2026-06-20');
SELECT * FROM crm.recommend(2, 5, '2026-06-16', '5 days');
SELECT * FROM crm.recommend(2, 5, '2026-07-20');
SELECT * FROM crm.recommend(2, 5, '2027-06-20');
-- an unknown customer is an error, not an empty list
SELECT pg_temp.expect_error($$SELECT count(*) FROM crm.recommend(999, 5, '2026-06-20')$$);

-- Bad input
SELECT pg_temp.expect_error($$SELECT crm.refresh_associations(0, 0.1)$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_associations(1.5, 0.1)$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_associations('NaN', 0.1)$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_associations(0.1, -0.1)$$);
SELECT pg_temp.expect_error($$SELECT crm.refresh_associations(0.1, 'NaN')$$);
SELECT crm.refresh_associations(NULL, 0.1) IS NULL AS strict;

-- A larger basket set: 3000 orders over 200 skus, deterministic.
INSERT INTO crm.customer (customer_id) SELECT 100 + g FROM generate_series(1, 50) g;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount)
SELECT 1000 + g, 101 + g % 50, 'app', '2026-01-01'::timestamptz + g * interval '1 hour', 10 FROM generate_series(1, 3000) g;
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
SELECT 1000 + g, k, 'S' || lpad((floor(200 * power(crm.sample_uniform(7, k, g), 2)))::int::text, 3, '0'), 'x', 1, 1
FROM generate_series(1, 3000) g, generate_series(1, 1 + (g % 6)) k;
CREATE TEMP TABLE plain_rules AS
WITH b AS (SELECT DISTINCT l.order_id, l.sku FROM crm.order_line l JOIN crm.orders o USING (order_id) WHERE o.status = 'paid'),
     n AS (SELECT count(DISTINCT order_id) AS baskets FROM b),
     s AS (SELECT sku, count(*) AS c FROM b GROUP BY sku),
     p AS (SELECT x.sku AS a, y.sku AS c, count(*) AS pair_n FROM b x JOIN b y ON x.order_id = y.order_id AND x.sku <> y.sku GROUP BY 1, 2)
SELECT p.a, p.c, p.pair_n, p.pair_n::float8 / sa.c AS confidence, p.pair_n::float8 * n.baskets / (sa.c * sc.c) AS lift
FROM p JOIN s sa ON sa.sku = p.a JOIN s sc ON sc.sku = p.c, n
WHERE p.pair_n >= ceil(0.002 * n.baskets) AND p.pair_n::float8 / sa.c >= 0.05;
SELECT crm.refresh_associations(0.002, 0.05) = (SELECT count(*) FROM plain_rules) AS same_count;
SELECT count(*) AS differences FROM (
	(SELECT antecedent, consequent, baskets FROM crm.association_rule EXCEPT SELECT a, c, pair_n FROM plain_rules)
	UNION ALL
	(SELECT a, c, pair_n FROM plain_rules EXCEPT SELECT antecedent, consequent, baskets FROM crm.association_rule)) d;
SELECT bool_and(abs(r.lift - p.lift) < 1e-9 AND abs(r.confidence - p.confidence) < 1e-12) AS same_measures
FROM crm.association_rule r JOIN plain_rules p ON p.a = r.antecedent AND p.c = r.consequent;
-- With 64kB of work_mem the pair counts take several passes: same rules.
CREATE TEMP TABLE one_pass AS SELECT * FROM crm.association_rule;
SET LOCAL work_mem = '64kB';
SELECT crm.refresh_associations(0.002, 0.05) = (SELECT count(*) FROM one_pass) AS same_count_in_passes;
SELECT count(*) AS differences FROM (
	(SELECT antecedent, consequent, baskets FROM crm.association_rule EXCEPT SELECT antecedent, consequent, baskets FROM one_pass)
	UNION ALL
	(SELECT antecedent, consequent, baskets FROM one_pass EXCEPT SELECT antecedent, consequent, baskets FROM crm.association_rule)) d;
RESET work_mem;
SELECT count(*) > 100 AS many_rules FROM crm.association_rule;
SELECT * FROM crm.verify();
ROLLBACK;
