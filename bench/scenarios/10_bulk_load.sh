# Bulk load: INSERT ... SELECT of every sample order (with its triggers and
# constraints) into crm.orders, against the same rows into a plain table of
# the same shape with no triggers.  Later features add their triggers to
# crm.orders, so this row shows what they cost together.
bench_sql "CREATE TABLE bench_orders_src AS SELECT * FROM crm.orders; ALTER TABLE bench_orders_src DROP COLUMN net_amount"
bench_sql "CREATE TABLE bench_plain_orders (LIKE crm.orders INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
n=$(psql -X -At -c "SELECT count(*) FROM bench_orders_src")
# Re-insert under fresh ids so both sides do the same work.
cols="customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount"
plain=$(bench_time "INSERT INTO bench_plain_orders (order_id, $cols) SELECT order_id, $cols FROM bench_orders_src")
crm=$(bench_time "INSERT INTO crm.orders ($cols) SELECT $cols FROM bench_orders_src")
bench_row "bulk load of $n orders: crm.orders vs plain table" "$crm" "$plain" "crm.orders has FKs and the origin trigger"
bench_sql "DELETE FROM crm.orders WHERE order_id > (SELECT max(order_id) FROM bench_orders_src); DROP TABLE bench_plain_orders, bench_orders_src"
