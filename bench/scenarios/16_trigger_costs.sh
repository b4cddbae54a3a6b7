# Where the time of a single-row order goes (issue 14, item 3): pgbench, 2
# clients, one transaction = a pos order and its 2 lines (as in
# 15_order_path), on a copy of the sample database (crm_costs, dropped
# afterwards), with every trigger, then with each of the order path's
# triggers disabled alone, then with all of them disabled, and on plain
# tables (the floor).  A trigger's cost is the latency it adds to a
# transaction: 2 clients / TPS with it minus without it, in microseconds.
# BENCH_TRIGGER_SECONDS (default 20) per run; rows go to the floor table.
tc_secs=${BENCH_TRIGGER_SECONDS:-20}
case "$tc_secs" in *[!0-9]*|'') echo "16_trigger_costs: BENCH_TRIGGER_SECONDS is a whole number" >&2; exit 2 ;; esac
tc_db=crm_costs
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $tc_db TEMPLATE $PGDATABASE" >/dev/null
tc_sql() { PGDATABASE=$tc_db bench_sql "$1"; }
tc_val() { psql -X -At -v ON_ERROR_STOP=1 -d "$tc_db" -c "$1"; }
tc_sql "CREATE TABLE tc_floor_orders (LIKE crm.orders INCLUDING DEFAULTS);
ALTER TABLE tc_floor_orders ALTER order_id SET DEFAULT pg_catalog.nextval('crm.order_id_seq');
ALTER TABLE tc_floor_orders ADD PRIMARY KEY (order_id);
CREATE INDEX ON tc_floor_orders (customer_id, ordered_at);
CREATE TABLE tc_floor_lines (LIKE crm.order_line);
ALTER TABLE tc_floor_lines ADD PRIMARY KEY (order_id, line_no)"
tc_sql "VACUUM ANALYZE"
tc_maxc=$(tc_val "SELECT max(customer_id) FROM crm.customer")
tc_stores=$(tc_val "SELECT max(store_id) FROM crm.store")
tc_script() { # file orders-table lines-table (bench/sql/order_path.pgbench)
	bench_sql_text "$CRM_ROOT/bench/sql/order_path.pgbench" CUSTOMERS="$tc_maxc" STORES="$tc_stores" \
		ORDERS="$2" LINES="$3" >"$BENCH_OUT/trigger_costs_$1.pgbench"
}
tc_script floor tc_floor_orders tc_floor_lines
tc_script crm crm.orders crm.order_line
# tc_tps SCRIPT: TPS of one run (bench_tps: after a VACUUM and a CHECKPOINT)
tc_tps() { bench_tps "$tc_db" "$BENCH_OUT/trigger_costs_$1.pgbench" "$tc_secs"; }
tc_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", 2e6 / a - 2e6 / b }'; }
tc_floor=$(tc_tps floor)
tc_all=$(tc_tps crm)
bench_floor_row "pgbench order + 2 lines: every trigger" tps "$tc_all" "$tc_floor" \
	"$(tc_us "$tc_all" "$tc_floor") us a transaction more than the floor"
# The trigger disabled alone leaves the run's rows without what it would
# have written, so a delete with the triggers on could not undo them; they
# are deleted with the triggers off (rows the other triggers wrote stay:
# the copy is dropped at the end, later runs only need tables of the same
# size).
for tc_trigger in orders.orders_fill_origin orders.orders_loyalty_insert orders.orders_stats_insert \
	order_line.order_line_lock_orders order_line.order_line_loyalty_insert order_line.order_line_stats_insert; do
	tc_table=${tc_trigger%%.*} tc_name=${tc_trigger#*.}
	tc_max=$(tc_val "SELECT max(order_id) FROM crm.orders")
	tc_sql "ALTER TABLE crm.$tc_table DISABLE TRIGGER $tc_name"
	tc_without=$(tc_tps crm)
	tc_sql "ALTER TABLE crm.$tc_table ENABLE TRIGGER $tc_name"
	tc_sql "SET session_replication_role = replica;
		DELETE FROM crm.order_line WHERE order_id > $tc_max; DELETE FROM crm.orders WHERE order_id > $tc_max"
	bench_floor_row "pgbench order + 2 lines: without $tc_name" tps "$tc_without" "$tc_floor" \
		"$tc_name costs $(tc_us "$tc_all" "$tc_without") us a transaction"
done
tc_sql "ALTER TABLE crm.orders DISABLE TRIGGER USER; ALTER TABLE crm.order_line DISABLE TRIGGER USER"
tc_bare=$(tc_tps crm)
bench_floor_row "pgbench order + 2 lines: no trigger (crm tables bare)" tps "$tc_bare" "$tc_floor" \
	"the triggers together cost $(tc_us "$tc_all" "$tc_bare") us a transaction"
rm -f "$BENCH_OUT"/trigger_costs_*.pgbench
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE $tc_db" >/dev/null
