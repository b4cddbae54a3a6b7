# Segmentation (issue 5).
#  1. crm.refresh_rfm vs the NTILE window-function SQL writing the same
#     table: a full build into empty tables, and the next day's refresh (the
#     last day of orders is new); crm.rfm() vs a plain GROUP BY customer_id
#     aggregate over the same orders (what any RFM needs at least).
#  2. The stats+tags triggers on a bulk INSERT..SELECT of orders and their
#     lines, and on single-order pgbench transactions: crm_ext's C triggers
#     vs no stats trigger vs a PL/pgSQL trigger doing the same work.
#  3. crm.audience_count of a three-tag expression vs the EXISTS SQL.
asof="crm.sample_as_of()"
bench_sql "SELECT crm.tick($asof)"
bench_sql "VACUUM ANALYZE"
# The machine is shared: time each side twice (warm cache) and keep the better run.
best2() {
	local a b
	a=$(bench_time "$1")
	b=$(bench_time "$1")
	echo "if ($a < $b) $a else $b" | bc
}

# --- 1. RFM ---------------------------------------------------------------
bench_sql "CREATE TABLE bench_rfm_ntile (customer_id bigint PRIMARY KEY, recency_days integer, frequency bigint, monetary numeric, r integer, f integer, m integer)"
ntile_sql="INSERT INTO bench_rfm_ntile
WITH a AS (
	SELECT o.customer_id, floor(extract(epoch FROM $asof - max(o.ordered_at)) / 86400)::integer AS recency_days,
	       count(*) AS frequency, sum(o.net_amount) AS monetary
	FROM crm.orders o JOIN crm.customer c ON c.customer_id = o.customer_id
	WHERE o.status = 'paid' AND o.ordered_at < $asof AND c.merged_into IS NULL
	GROUP BY o.customer_id)
SELECT customer_id, recency_days, frequency, monetary,
       ntile(5) OVER (ORDER BY recency_days DESC), ntile(5) OVER (ORDER BY frequency), ntile(5) OVER (ORDER BY monetary)
FROM a"
# Full build: an empty snapshot against an empty table, both writing every row.
bench_sql "SELECT crm.refresh_rfm($asof)"
crm=$(best2 "TRUNCATE crm.rfm_snapshot; SELECT crm.refresh_rfm($asof)")
plain=$(best2 "TRUNCATE bench_rfm_ntile; $ntile_sql")
bench_row "crm.refresh_rfm full build vs NTILE window SQL into an empty table" "$crm" "$plain" "$(psql -X -At -c "SELECT count(*) FROM crm.customer_rfm") customers scored"
# Next day: the snapshot holds the scores as of the day before, so the
# sample's last day of orders is new; the plain way replaces its table.
day_before="SELECT crm.refresh_rfm($asof - interval '1 day')"
bench_sql "$day_before"
crm=$(bench_time "SELECT crm.refresh_rfm($asof)")
bench_sql "$day_before"
crm2=$(bench_time "SELECT crm.refresh_rfm($asof)")
crm=$(echo "if ($crm < $crm2) $crm else $crm2" | bc)
plain=$(best2 "DELETE FROM bench_rfm_ntile; $ntile_sql")
bench_row "crm.refresh_rfm next day vs NTILE window SQL replacing its table" "$crm" "$plain" "$(psql -X -At -c "SELECT format('%s of %s snapshot rows rewritten', rows_written, scored) FROM crm.rfm_refresh")"
crm=$(best2 "SELECT count(*) FROM crm.rfm($asof)")
plain=$(best2 "SELECT count(*) FROM (SELECT o.customer_id, max(o.ordered_at), count(*), sum(o.net_amount) FROM crm.orders o WHERE o.status = 'paid' AND o.ordered_at < $asof GROUP BY o.customer_id) x")
bench_row "crm.rfm() scores vs plain GROUP BY aggregate (no scores)" "$crm" "$plain" "plain/crm_ext >= 0.67 means within 1.5x"
bench_sql "DROP TABLE bench_rfm_ntile"

# --- 2. Trigger cost --------------------------------------------------------
bench_sql "$(bench_sql_text "$CRM_ROOT/bench/sql/segmentation_plpgsql.sql" ORDERS=crm.orders LINES=crm.order_line)"
# A tenth of the sample's orders (and their lines), re-inserted under new ids.
bench_sql "CREATE TABLE bench_seg_orders AS SELECT * FROM crm.orders WHERE order_id % 10 = 0;
           CREATE TABLE bench_seg_lines AS SELECT l.* FROM crm.order_line l JOIN bench_seg_orders USING (order_id)"
n=$(psql -X -At -c "SELECT count(*) FROM bench_seg_orders")
nl=$(psql -X -At -c "SELECT count(*) FROM bench_seg_lines")
off=$(psql -X -At -c "SELECT max(order_id) FROM crm.orders")
load="INSERT INTO crm.orders (order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount)
      SELECT order_id + $off, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount FROM bench_seg_orders;
      INSERT INTO crm.order_line SELECT order_id + $off, line_no, sku, category, qty, amount FROM bench_seg_lines;"
stats_off="ALTER TABLE crm.orders DISABLE TRIGGER orders_stats_insert; ALTER TABLE crm.order_line DISABLE TRIGGER order_line_stats_insert;"
pl_on="CREATE TRIGGER bench_pl_orders AFTER INSERT ON crm.orders REFERENCING NEW TABLE AS crm_new FOR EACH STATEMENT EXECUTE FUNCTION bench_pl_orders_trigger();
       CREATE TRIGGER bench_pl_lines AFTER INSERT ON crm.order_line REFERENCING NEW TABLE AS crm_new FOR EACH STATEMENT EXECUTE FUNCTION bench_pl_lines_trigger();"
bench_sql "CHECKPOINT"
none=$(bench_time "BEGIN; $stats_off $load ROLLBACK;")
bench_sql "CHECKPOINT"
crm=$(bench_time "BEGIN; $load ROLLBACK;")
bench_sql "CHECKPOINT"
pl=$(bench_time "BEGIN; $stats_off $pl_on $load ROLLBACK;")
bench_row "bulk $n orders + $nl lines: C stats+tags trigger vs no stats trigger" "$crm" "$none" "plain/crm_ext = share of the load left without the trigger"
bench_row "bulk $n orders + $nl lines: C stats+tags trigger vs PL/pgSQL trigger" "$crm" "$pl"

# pgbench: one order with two lines per transaction, for random customers.
maxc=$(psql -X -At -c "SELECT max(customer_id) FROM crm.customer WHERE merged_into IS NULL")
cat >"$BENCH_OUT/seg_order.pgbench" <<PGB
\\set c random(1, $maxc)
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT c.customer_id, 'app', now(), 42.50 FROM crm.customer c
WHERE c.customer_id >= :c AND c.merged_into IS NULL ORDER BY c.customer_id LIMIT 1
RETURNING order_id AS oid \\gset
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
VALUES (:oid, 1, 'FRE-0001', 'fresh', 1, 21.25), (:oid, 2, 'ORG-0001', 'organic', 1, 21.25);
PGB
pgb() { pgbench -n -c 2 -j 2 -T "${BENCH_PGBENCH_SECONDS:-10}" -f "$BENCH_OUT/seg_order.pgbench" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
# crm_ext first, then without the stats triggers, then with the PL/pgSQL ones
tps_crm=$(pgb)
bench_sql "$stats_off"
tps_none=$(pgb)
bench_sql "$pl_on"
tps_pl=$(pgb)
bench_sql "DROP TRIGGER bench_pl_orders ON crm.orders; DROP TRIGGER bench_pl_lines ON crm.order_line;
           ALTER TABLE crm.orders ENABLE TRIGGER orders_stats_insert; ALTER TABLE crm.order_line ENABLE TRIGGER order_line_stats_insert"
ms() { echo "scale=6; 1 / $1" | bc; }
bench_row "pgbench order+2 lines, s/txn: C trigger vs no stats trigger" "$(ms "$tps_crm")" "$(ms "$tps_none")" "tps $tps_crm vs $tps_none (2 clients)"
bench_row "pgbench order+2 lines, s/txn: C trigger vs PL/pgSQL trigger" "$(ms "$tps_crm")" "$(ms "$tps_pl")" "tps $tps_crm vs $tps_pl (2 clients)"
bench_sql "DROP TABLE bench_seg_orders, bench_seg_lines, bench_pl_tag, bench_pl_stats;
           DROP FUNCTION bench_pl_orders_trigger(), bench_pl_lines_trigger(), bench_pl_refresh(bigint[])"

# --- 3. Audience count ---------------------------------------------------------
expr="frequent and fresh_lover and not dormant"
crm=$(best2 "SELECT crm.audience_count('$expr')")
plain=$(best2 "SELECT count(*) FROM crm.customer c WHERE c.merged_into IS NULL
	AND EXISTS (SELECT 1 FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = c.customer_id AND t.name = 'frequent')
	AND EXISTS (SELECT 1 FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = c.customer_id AND t.name = 'fresh_lover')
	AND NOT EXISTS (SELECT 1 FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = c.customer_id AND t.name = 'dormant')")
bench_row "audience_count('$expr') vs EXISTS SQL" "$crm" "$plain" "$(psql -X -At -c "SELECT crm.audience_count('$expr')") customers"
