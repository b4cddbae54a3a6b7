# Bulk load: INSERT ... SELECT of every sample order into crm.orders three
# ways, on the same rows in the same run:
#   all triggers  - crm.orders with every feature's triggers (points, stats,
#                   tags, origin) and its foreign keys
#   bare          - crm.orders with its foreign keys and constraints but the
#                   extension's triggers disabled (DESIGN's cost budget: all
#                   triggers together at most as much again as this)
#   plain table   - a table of the same shape with no triggers and no
#                   foreign keys
# Each load runs in a transaction that rolls back, so the data every later
# scenario sees stays as generated.
bench_sql "CREATE TABLE bench_orders_src AS SELECT * FROM crm.orders; ALTER TABLE bench_orders_src DROP COLUMN net_amount"
bench_sql "CREATE TABLE bench_plain_orders (LIKE crm.orders INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
n=$(psql -X -At -c "SELECT count(*) FROM bench_orders_src")
cols="customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount"
bench_sql "CHECKPOINT"
plain=$(bench_time "BEGIN; INSERT INTO bench_plain_orders (order_id, $cols) SELECT order_id, $cols FROM bench_orders_src; ROLLBACK")
bench_sql "CHECKPOINT"
bare=$(bench_time "BEGIN; ALTER TABLE crm.orders DISABLE TRIGGER USER; INSERT INTO crm.orders ($cols) SELECT $cols FROM bench_orders_src; ROLLBACK")
bench_sql "CHECKPOINT"
all=$(bench_time "BEGIN; INSERT INTO crm.orders ($cols) SELECT $cols FROM bench_orders_src; ROLLBACK")
bench_row "bulk load $n orders: all triggers vs bare crm.orders" "$all" "$bare" "budget: all triggers at most 2x bare"
bench_row "bulk load $n orders: all triggers vs plain table (no FKs)" "$all" "$plain" "plain has no foreign keys"
bench_sql "DROP TABLE bench_plain_orders, bench_orders_src"
