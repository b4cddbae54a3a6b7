# The order path against the physical floor (issue 14): the sample's orders
# and lines, in one run, into four sides, in a database of their own
# (crm_path: crm_ext, the sample's customers and stores, the orders and lines
# in staging tables), so crm_bench stays as generated:
#   floor    plain tables with crm.orders' and crm.order_line's columns, a
#            primary key and an orders (customer_id, ordered_at) index,
#            nothing else
#   bare     crm.orders and crm.order_line with the extension's triggers
#            disabled (DISABLE TRIGGER USER: the foreign keys that remain
#            still check, and the note lists them; reference checks crm's
#            triggers make are off)
#   all      crm.orders and crm.order_line with every trigger
#   plpgsql  the plain-SQL CRM: floor's tables plus crm's CHECKs, foreign keys
#            to crm.customer, crm.store and the orders, and PL/pgSQL statement
#            triggers doing points lots (bench/sql/loyalty_plpgsql.sql) and
#            stats and tags (bench/sql/segmentation_plpgsql.sql)
# Two workloads, the sides alternating (floor, bare, all, plpgsql, floor, ...)
# for BENCH_ROUNDS rounds (default 2), a CHECKPOINT before each timed run:
#   bulk     INSERT ... SELECT of every sample order, then every line, into
#            empty tables (customers and stores present), order ids kept;
#            crm.verify() must be empty after each all-trigger load.  The
#            PL/pgSQL side is slow (about 270 us an order), so it runs in
#            round 1 only, or never with BENCH_SKIP_PLPGSQL_BULK=1.  Then once
#            more, floor and all, after an ANALYZE of the full crm tables
#            followed by a TRUNCATE (the statistics state of issue 14 item 4).
#   pgbench  pgbench -n -c 2 -j 2 -T BENCH_PGBENCH_SECONDS (default 30) on the
#            full tables: one transaction inserts a pos order (a store, a
#            random amount) for a random customer and its 2 lines.  The
#            rows the bare side inserted are deleted after its run, so the
#            crm tables stay consistent; crm.verify() must be empty at the end.
# Each figure is a row of the floor table (bench_floor_row): the side's
# seconds or TPS and the floor's from the same round.  Autovacuum is off on
# crm_path's tables, so every bulk round starts from the same statistics
# (never analyzed); the pgbench runs start from a VACUUM ANALYZE, each run
# from a VACUUM.
op_rounds=${BENCH_ROUNDS:-2}
op_secs=${BENCH_PGBENCH_SECONDS:-30}
case "$op_rounds$op_secs" in *[!0-9]*) echo "15_order_path: BENCH_ROUNDS and BENCH_PGBENCH_SECONDS are whole numbers" >&2; exit 2 ;; esac
op_db=crm_path
op_sql() { PGDATABASE=$op_db bench_sql "$1"; }
op_time() { PGDATABASE=$op_db bench_time "$1"; }
op_val() { psql -X -At -v ON_ERROR_STOP=1 -d "$op_db" -c "$1"; }
op_add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
op_ocols="order_id, customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount, external_ref"
op_lcols="order_id, line_no, sku, category, qty, amount"

# --- crm_path: customers, stores, staging, the floor and PL/pgSQL tables ------
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $op_db" >/dev/null
op_sql "CREATE EXTENSION crm_ext;
CREATE TABLE op_src_orders AS SELECT $op_ocols FROM crm.orders;
CREATE TABLE op_src_lines AS SELECT $op_lcols FROM crm.order_line"
op_copy() { # query in crm_bench, table in crm_path
	psql -X -q -v ON_ERROR_STOP=1 -c "\\copy ($1) TO STDOUT (FORMAT binary)" |
		psql -X -q -v ON_ERROR_STOP=1 -d "$op_db" -c "\\copy $2 FROM STDIN (FORMAT binary)"
}
op_copy "SELECT * FROM crm.store ORDER BY store_id" crm.store
op_copy "SELECT * FROM crm.customer ORDER BY customer_id" crm.customer
op_copy "SELECT $op_ocols FROM crm.orders ORDER BY order_id" op_src_orders
op_copy "SELECT $op_lcols FROM crm.order_line ORDER BY order_id, line_no" op_src_lines
op_sql "
CREATE TABLE op_floor_orders (LIKE crm.orders INCLUDING DEFAULTS INCLUDING GENERATED, PRIMARY KEY (order_id));
CREATE INDEX ON op_floor_orders (customer_id, ordered_at);
CREATE TABLE op_floor_lines (LIKE crm.order_line INCLUDING DEFAULTS, PRIMARY KEY (order_id, line_no));
CREATE TABLE op_pl_orders (LIKE crm.orders INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS,
	PRIMARY KEY (order_id), FOREIGN KEY (customer_id) REFERENCES crm.customer,
	FOREIGN KEY (origin_customer_id) REFERENCES crm.customer, FOREIGN KEY (store_id) REFERENCES crm.store);
CREATE INDEX ON op_pl_orders (customer_id, ordered_at);
CREATE TABLE op_pl_lines (LIKE crm.order_line INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
	PRIMARY KEY (order_id, line_no), FOREIGN KEY (order_id) REFERENCES op_pl_orders ON DELETE CASCADE);
CREATE SEQUENCE op_floor_orders_seq OWNED BY op_floor_orders.order_id;
CREATE SEQUENCE op_pl_orders_seq OWNED BY op_pl_orders.order_id;
ALTER TABLE op_floor_orders ALTER order_id SET DEFAULT nextval('op_floor_orders_seq');
ALTER TABLE op_pl_orders ALTER order_id SET DEFAULT nextval('op_pl_orders_seq');
$(cat "$CRM_ROOT/bench/sql/loyalty_plpgsql.sql")
$(bench_sql_text "$CRM_ROOT/bench/sql/segmentation_plpgsql.sql" ORDERS=op_pl_orders LINES=op_pl_lines)
CREATE TRIGGER op_pl_points AFTER INSERT ON op_pl_orders REFERENCING NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION bench_plpgsql_earn();
CREATE TRIGGER op_pl_stats AFTER INSERT ON op_pl_orders REFERENCING NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION bench_pl_orders_trigger();
CREATE TRIGGER op_pl_stats AFTER INSERT ON op_pl_lines REFERENCING NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION bench_pl_lines_trigger();
DO \$\$
DECLARE t regclass;
BEGIN
	FOR t IN SELECT c.oid FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace IN ('crm'::regnamespace, 'public'::regnamespace) LOOP
		EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', t);
	END LOOP;
END
\$\$"
op_sql "VACUUM ANALYZE crm.customer, crm.store, op_src_orders, op_src_lines"
op_orders=$(op_val "SELECT count(*) FROM op_src_orders")
op_lines=$(op_val "SELECT count(*) FROM op_src_lines")
# crm's data tables but customers and stores: what the order path writes
# (orders, lines, journal, accounts, stats, tags, histories) and what is
# empty here anyway.  The journal refuses TRUNCATE (its guard trigger), which
# replication-role replica skips.
op_crm_tables=$(op_val "SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.relname)
	FROM pg_extension e CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) u(t, cond) JOIN pg_class c ON c.oid = u.t
	WHERE e.extname = 'crm_ext' AND c.relkind = 'r' AND u.cond = '' AND c.oid NOT IN ('crm.customer'::regclass, 'crm.store'::regclass)")
op_reset_crm="SET session_replication_role = replica; TRUNCATE $op_crm_tables"
op_triggers="ALTER TABLE crm.orders DISABLE TRIGGER USER; ALTER TABLE crm.order_line DISABLE TRIGGER USER"
op_fks=$(op_val "SELECT coalesce(string_agg(replace(format('%s->%s', c.conrelid::regclass, c.confrelid::regclass), 'crm.', ''), ', ' ORDER BY c.conrelid::regclass::text, c.conname), 'none')
	FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid IN ('crm.orders'::regclass, 'crm.order_line'::regclass)")

op_verify() { # what just ran
	local bad
	bad=$(op_val "SELECT count(*) FROM crm.verify()")
	if [ "$bad" != 0 ]; then
		echo "15_order_path: crm.verify() returned $bad rows $1; the first 20:" >&2
		psql -X -d "$op_db" -c "SELECT * FROM crm.verify() LIMIT 20" >&2
		exit 1
	fi
}

# op_load SIDE: empties SIDE's tables and loads every staged order, then
# every line (each timed after a CHECKPOINT); sets op_o and op_l (seconds).
op_load() {
	local orders=crm.orders lines=crm.order_line
	case $1 in
	floor) orders=op_floor_orders lines=op_floor_lines
	       op_sql "TRUNCATE op_floor_orders, op_floor_lines" ;;
	bare) op_sql "$op_reset_crm; $op_triggers" ;;
	all) op_sql "$op_reset_crm" ;;
	plpgsql) orders=op_pl_orders lines=op_pl_lines
	         op_sql "TRUNCATE op_pl_orders, op_pl_lines, bench_lot, bench_pjournal, bench_paccount, bench_pl_stats, bench_pl_tag" ;;
	esac
	op_sql "CHECKPOINT"
	op_o=$(op_time "INSERT INTO $orders ($op_ocols) SELECT $op_ocols FROM op_src_orders")
	op_sql "CHECKPOINT"
	op_l=$(op_time "INSERT INTO $lines ($op_lcols) SELECT $op_lcols FROM op_src_lines")
	case $1 in
	bare) op_sql "${op_triggers//DISABLE/ENABLE}" ;;
	all) op_verify "after the all-trigger bulk load" ;;
	esac
}
# op_bulk_rows LABEL NOTE: rows for what op_load just measured, against the
# floor's op_fo/op_fl of the same round.
op_bulk_rows() {
	bench_floor_row "bulk $op_orders orders, $op_round: $1" s "$op_o" "$op_fo" "$2"
	bench_floor_row "bulk $op_lines lines, $op_round: $1" s "$op_l" "$op_fl" "$2"
	bench_floor_row "bulk orders + lines, $op_round: $1" s "$(op_add "$op_o" "$op_l")" "$(op_add "$op_fo" "$op_fl")" "$2"
}
op_label_bare="crm_ext, triggers disabled"
op_note_bare="foreign keys left: $op_fks; checks crm makes in its triggers are off too"
op_label_all="crm_ext, all triggers"
op_label_pl="PL/pgSQL CRM"

# --- bulk ---------------------------------------------------------------------
op_pl_loaded=
for ((r = 1; r <= op_rounds; r++)); do
	op_round="round $r"
	op_load floor
	op_fo=$op_o op_fl=$op_l
	op_load bare
	op_bulk_rows "$op_label_bare" "$op_note_bare"
	op_load all
	op_bulk_rows "$op_label_all" "crm.verify() empty"
	if [ "$r" = 1 ] && [ "${BENCH_SKIP_PLPGSQL_BULK:-0}" != 1 ]; then
		op_load plpgsql
		op_bulk_rows "$op_label_pl" "FKs, points lots, stats, tags; round 1 only"
		op_pl_loaded=1
	fi
done
# The last load left the crm tables full: analyze them so, then empty them.
op_sql "ANALYZE $op_crm_tables"
op_round="ANALYZEd full then TRUNCATEd"
op_load floor
op_fo=$op_o op_fl=$op_l
op_load all
op_bulk_rows "$op_label_all" "crm.verify() empty"

# --- pgbench ------------------------------------------------------------------
# Every side full: the floor loaded again, crm from the load above, the
# PL/pgSQL CRM from its bulk load (else loaded without its triggers, its
# stats and tags rebuilt set-based and its accounts copied from crm_ext's:
# its lots and journal then start empty).
op_sql "TRUNCATE op_floor_orders, op_floor_lines;
INSERT INTO op_floor_orders ($op_ocols) SELECT $op_ocols FROM op_src_orders;
INSERT INTO op_floor_lines ($op_lcols) SELECT $op_lcols FROM op_src_lines"
op_note_pl="FKs, points lots, stats, tags; after its bulk load"
if [ -z "$op_pl_loaded" ]; then
	op_note_pl="FKs, points lots, stats, tags; loaded without triggers: lots and journal empty"
	op_sql "TRUNCATE op_pl_orders, op_pl_lines, bench_lot, bench_pjournal, bench_paccount, bench_pl_stats, bench_pl_tag;
ALTER TABLE op_pl_orders DISABLE TRIGGER USER; ALTER TABLE op_pl_lines DISABLE TRIGGER USER;
INSERT INTO op_pl_orders ($op_ocols) SELECT $op_ocols FROM op_src_orders;
INSERT INTO op_pl_lines ($op_lcols) SELECT $op_lcols FROM op_src_lines;
ALTER TABLE op_pl_orders ENABLE TRIGGER USER; ALTER TABLE op_pl_lines ENABLE TRIGGER USER;
SELECT bench_pl_refresh(ARRAY(SELECT customer_id FROM crm.customer));
INSERT INTO bench_paccount SELECT customer_id, tier, qualifying_spend FROM crm.loyalty_account"
fi
op_sql "SELECT setval('op_floor_orders_seq', (SELECT max(order_id) FROM op_floor_orders));
SELECT setval('op_pl_orders_seq', (SELECT max(order_id) FROM op_pl_orders));
SELECT setval('crm.order_id_seq', (SELECT max(order_id) FROM crm.orders))"
op_sql "VACUUM ANALYZE"
op_maxc=$(op_val "SELECT max(customer_id) FROM crm.customer")
op_stores=$(op_val "SELECT max(store_id) FROM crm.store")
# the transaction (bench/sql/order_path.pgbench, shared with 16_trigger_costs)
op_script() { # side orders-table lines-table
	bench_sql_text "$CRM_ROOT/bench/sql/order_path.pgbench" CUSTOMERS="$op_maxc" STORES="$op_stores" \
		ORDERS="$2" LINES="$3" >"$BENCH_OUT/order_path_$1.pgbench"
}
op_script floor op_floor_orders op_floor_lines
op_script bare crm.orders crm.order_line
op_script all crm.orders crm.order_line
op_script plpgsql op_pl_orders op_pl_lines
# op_tps SIDE: TPS of one pgbench run after a VACUUM (of what earlier runs
# left: updated stats, accounts and tags) and a CHECKPOINT.  The bare side's
# rows (no points, stats or tags) are deleted afterwards.
op_tps() {
	local max
	if [ "$1" = bare ]; then
		op_sql "$op_triggers"
		max=$(op_val "SELECT max(order_id) FROM crm.orders")
	fi
	op_t=$(bench_tps "$op_db" "$BENCH_OUT/order_path_$1.pgbench" "$op_secs")
	if [ "$1" = bare ]; then
		op_sql "DELETE FROM crm.order_line WHERE order_id > $max; DELETE FROM crm.orders WHERE order_id > $max;
			${op_triggers//DISABLE/ENABLE}"
	fi
}
for ((r = 1; r <= op_rounds; r++)); do
	op_tps floor
	op_ft=$op_t
	op_name="pgbench order + 2 lines, -c 2 -T $op_secs, round $r"
	op_tps bare
	bench_floor_row "$op_name: $op_label_bare" tps "$op_t" "$op_ft" "$op_note_bare"
	op_tps all
	bench_floor_row "$op_name: $op_label_all" tps "$op_t" "$op_ft"
	op_tps plpgsql
	bench_floor_row "$op_name: $op_label_pl" tps "$op_t" "$op_ft" "$op_note_pl"
done
op_verify "after the pgbench runs"

rm -f "$BENCH_OUT"/order_path_*.pgbench
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE $op_db" >/dev/null
