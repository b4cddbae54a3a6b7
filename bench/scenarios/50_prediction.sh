# Prediction: CLV summaries, BG/NBD and Gamma-Gamma fits, scoring,
# frequently-bought-together rules and replenishment cycles on the sample
# data, each against the plain SQL way where there is one.
asof="crm.sample_as_of()"

# Summary: crm.clv_summary against the same GROUP BY written inline.
crm=$(bench_time "CREATE TABLE bench_summary AS SELECT * FROM crm.clv_summary($asof)")
plain=$(bench_time "CREATE TABLE bench_summary_plain AS
	WITH d AS (SELECT o.customer_id, o.ordered_at::date AS day, sum(o.net_amount) AS amt
	           FROM crm.orders o JOIN crm.customer c USING (customer_id)
	           WHERE c.merged_into IS NULL AND o.status = 'paid' AND o.ordered_at <= $asof GROUP BY 1, 2),
	     r AS (SELECT d.*, min(day) OVER (PARTITION BY customer_id) AS first_day FROM d)
	SELECT customer_id, count(*) - 1 AS frequency, (max(day) - min(day)) / 7.0 AS recency,
	       ($asof::date - min(day)) / 7.0 AS t,
	       coalesce(sum(amt) FILTER (WHERE day > first_day) / nullif(count(*) - 1, 0), 0) AS monetary
	FROM r GROUP BY customer_id")
n=$(psql -X -At -c "SELECT count(*) FROM bench_summary")
bench_row "CLV summary of $n customers (clv_summary vs plain GROUP BY)" "$crm" "$plain" "C one-pass fold per customer"

# Fits on the stored summary (no plain SQL way to fit a likelihood).
bg=$(bench_time "SELECT crm.clv_estimate('bgnbd', frequency, recency, t, 1) FROM bench_summary WHERE t > 0")
bench_row "BG/NBD fit on $n customers' summaries" "$bg" "-" \
	"$(psql -X -At -c "SELECT format('%s distinct rows, %s evaluations', summary_rows, evaluations) FROM (SELECT (crm.clv_estimate('bgnbd', frequency, recency, t, 1)).* FROM bench_summary WHERE t > 0) e")"
gg=$(bench_time "SELECT crm.clv_estimate_spend(frequency, monetary::float8, 1) FROM bench_summary WHERE frequency > 0 AND monetary > 0")
bench_row "Gamma-Gamma fit on the repeat customers of $n" "$gg" "-"
fit=$(bench_time "SELECT crm.clv_fit('bgnbd', $asof, name => 'bench_bg')")
bench_row "crm.clv_fit('bgnbd'): summary + fit + store" "$fit" "-"
bench_sql "SELECT crm.clv_fit('gammagamma', $asof, name => 'bench_gg')"

# Scoring: P(alive) in C against its closed form in SQL.
crm=$(bench_time "SELECT count(*) FROM bench_summary WHERE crm.p_alive('bench_bg', frequency, recency, t) < 0.5")
plain=$(bench_time "SELECT count(*) FROM bench_summary s, crm.clv_model m
	WHERE m.name = 'bench_bg' AND 1.0 / (1.0 + CASE WHEN s.frequency > 0 THEN m.params[3] / (m.params[4] + s.frequency - 1)
	      * power((m.params[2] + s.t) / (m.params[2] + s.recency), m.params[1] + s.frequency) ELSE 0 END) < 0.5")
bench_row "P(alive) of $n customers in WHERE (C vs SQL formula)" "$crm" "$plain"
crm=$(bench_time "SELECT count(*) FROM crm.v_clv")
bench_row "crm.v_clv: P(alive), 52-period purchases and CLV of everyone" "$crm" "-"

# Frequently bought together: C pair counting against a SQL self-join.
lines=$(psql -X -At -c "SELECT count(*) FROM crm.order_line")
crm=$(bench_time "SELECT crm.refresh_associations(0.001, 0.05)")
plain=$(bench_time "CREATE TABLE bench_rules_plain AS
	WITH b AS (SELECT DISTINCT l.order_id, l.sku FROM crm.order_line l JOIN crm.orders o USING (order_id) WHERE o.status = 'paid'),
	     n AS (SELECT count(DISTINCT order_id) AS baskets FROM b),
	     s AS (SELECT sku, count(*) AS c FROM b GROUP BY sku),
	     p AS (SELECT x.sku AS a, y.sku AS c, count(*) AS k FROM b x JOIN b y ON x.order_id = y.order_id AND x.sku <> y.sku GROUP BY 1, 2)
	SELECT p.a, p.c, p.k, p.k::float8 / sa.c AS confidence, p.k::float8 * n.baskets / (sa.c * sc.c) AS lift
	FROM p JOIN s sa ON sa.sku = p.a JOIN s sc ON sc.sku = p.c, n
	WHERE p.k >= ceil(0.001 * n.baskets) AND p.k::float8 / sa.c >= 0.05")
same=$(psql -X -At -c "SELECT (SELECT count(*) FROM crm.association_rule) = (SELECT count(*) FROM bench_rules_plain)")
bench_row "association rules over $lines order lines (C vs self-join)" "$crm" "$plain" "same rule count: $same"

# Replenishment: the C median aggregate against percentile_cont over window gaps.
crm=$(bench_time "SELECT count(*) FROM crm.replenishment($asof)")
plain=$(bench_time "WITH d AS (SELECT DISTINCT o.customer_id, l.category, o.ordered_at::date AS day
	           FROM crm.orders o JOIN crm.order_line l USING (order_id) JOIN crm.customer c USING (customer_id)
	           WHERE c.merged_into IS NULL AND o.status = 'paid' AND o.ordered_at <= $asof),
	     g AS (SELECT customer_id, category, day, day - lag(day) OVER (PARTITION BY customer_id, category ORDER BY day) AS gap FROM d)
	SELECT count(*) FROM (SELECT customer_id, category, count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) AS med
	                      FROM g GROUP BY 1, 2 HAVING count(*) >= 3) x")
bench_row "replenishment cycles per customer and category (C median vs SQL)" "$crm" "$plain" "crm side also computes sku cycles"
bench_sql "DROP TABLE bench_summary, bench_summary_plain, bench_rules_plain; DELETE FROM crm.clv_model WHERE name IN ('bench_bg', 'bench_gg')"
