# Loyalty: the cost of the C points trigger on crm.orders, against no loyalty
# trigger (bare) and against a PL/pgSQL trigger doing the same work on a
# plain lots table; single-row inserts with pgbench; and the redemption
# stress (16 clients x BENCH_STRESS_TX redemptions over 100 accounts, 10% of
# them retries that reuse their key) followed by the invariant checks.
#
#   BENCH_LOYALTY_ORDERS  orders in the bulk load (default 1000000, at most
#                         what the sample holds)
#   BENCH_PGBENCH_TX      single-row inserts per client and round (default 5000,
#                         2 clients, 3 rounds per side)
#   BENCH_STRESS_TX       redemptions per client (default 10000, 16 clients)
# Every bulk load runs in a transaction that rolls back, so each side starts
# from the same data.
loyalty_orders=${BENCH_LOYALTY_ORDERS:-1000000}
pgbench_tx=${BENCH_PGBENCH_TX:-5000}
stress_tx=${BENCH_STRESS_TX:-10000}
cols="customer_id, origin_customer_id, store_id, channel, ordered_at, amount, status, refunded_amount"

bench_sql "CREATE TABLE bench_loyalty_src AS SELECT $cols FROM crm.orders ORDER BY order_id LIMIT $loyalty_orders"
n=$(psql -X -At -c "SELECT count(*) FROM bench_loyalty_src")

# The PL/pgSQL way (bench/sql/loyalty_plpgsql.sql): the same rules with a
# row per lot in a plain table, as a statement trigger over its transition
# table and as the row trigger most code bases have; accounts start as
# crm_ext's.
bench_sql "$(cat "$CRM_ROOT/bench/sql/loyalty_plpgsql.sql")
INSERT INTO bench_paccount SELECT customer_id, tier, qualifying_spend FROM crm.loyalty_account;
CREATE TRIGGER bench_plpgsql_earn AFTER INSERT ON crm.orders REFERENCING NEW TABLE AS loyalty_new
	FOR EACH STATEMENT EXECUTE FUNCTION bench_plpgsql_earn();
ALTER TABLE crm.orders DISABLE TRIGGER bench_plpgsql_earn;
CREATE TRIGGER bench_plpgsql_earn_row AFTER INSERT ON crm.orders FOR EACH ROW EXECUTE FUNCTION bench_plpgsql_earn_row();
ALTER TABLE crm.orders DISABLE TRIGGER bench_plpgsql_earn_row"
bench_sql "VACUUM ANALYZE bench_loyalty_src, bench_paccount"

ins="INSERT INTO crm.orders ($cols) SELECT $cols FROM bench_loyalty_src"
bare=$(bench_time "BEGIN; ALTER TABLE crm.orders DISABLE TRIGGER orders_loyalty_insert; $ins; ROLLBACK")
c_trig=$(bench_time "BEGIN; $ins; ROLLBACK")
plpgsql=$(bench_time "BEGIN; ALTER TABLE crm.orders DISABLE TRIGGER orders_loyalty_insert; ALTER TABLE crm.orders ENABLE TRIGGER bench_plpgsql_earn; $ins; ROLLBACK")
bench_row "loyalty: bulk INSERT..SELECT $n orders, C trigger vs no trigger" "$c_trig" "$bare" \
	"target: C at most 2x bare; $(echo "scale=2; $c_trig / $bare" | bc)x"
bench_row "loyalty: bulk INSERT..SELECT $n orders, C vs PL/pgSQL trigger" "$c_trig" "$plpgsql" \
	"target: PL/pgSQL at least 10x slower; $(echo "scale=1; $plpgsql / $c_trig" | bc)x"
plpgsql_row=$(bench_time "BEGIN; ALTER TABLE crm.orders DISABLE TRIGGER orders_loyalty_insert; ALTER TABLE crm.orders ENABLE TRIGGER bench_plpgsql_earn_row; $ins; ROLLBACK")
bench_row "loyalty: bulk INSERT..SELECT $n orders, C vs PL/pgSQL row trigger" "$c_trig" "$plpgsql_row" \
	"$(echo "scale=1; $plpgsql_row / $c_trig" | bc)x; own cost (minus bare) $(echo "scale=1; ($plpgsql_row - $bare) / ($c_trig - $bare)" | bc)x"
# The triggers' own cost: each load minus the bare load (the FK checks and
# the other triggers that both sides pay).
bench_row "loyalty: trigger's own cost (load minus bare load), C vs PL/pgSQL" \
	"$(echo "$c_trig - $bare" | bc)" "$(echo "$plpgsql - $bare" | bc)"
# The floor under any trigger that journals every earn: inserting the same
# journal rows the C trigger wrote, alone.  Both triggers' own cost includes
# it, so their ratio cannot exceed plpgsql_own / floor.
jcols="customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason"
bench_sql "CREATE TABLE bench_jrows AS SELECT $jcols FROM crm.points_journal LIMIT 0"
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
BEGIN;
CREATE TEMP TABLE bench_before AS SELECT coalesce(max(journal_id), 0) AS id FROM crm.points_journal;
$ins;
\copy (SELECT $jcols FROM crm.points_journal WHERE journal_id > (SELECT id FROM bench_before)) TO '$BENCH_OUT/journal_rows.copy'
ROLLBACK;
\copy bench_jrows FROM '$BENCH_OUT/journal_rows.copy'
VACUUM ANALYZE bench_jrows;
SQL
njrows=$(psql -X -At -c "SELECT count(*) FROM bench_jrows")
jfloor=$(bench_time "BEGIN; INSERT INTO crm.points_journal ($jcols) SELECT $jcols FROM bench_jrows; ROLLBACK")
bench_row "loyalty: writing the C trigger's $njrows journal rows alone (floor of any trigger's own cost)" "$jfloor" "-" \
	"PL/pgSQL own cost / floor = $(echo "scale=1; ($plpgsql - $bare) / $jfloor" | bc)x: the most any journaling trigger could beat it by"
rm -f "$BENCH_OUT/journal_rows.copy"

# Single-row order inserts, 2 clients, with and without the C trigger: three
# rounds each, alternating, after a VACUUM of what the rolled-back loads left
# (so autovacuum does not land on one side); each side's TPS is its total
# transactions over its total time.
ncust=$(psql -X -At -c "SELECT count(*) FROM crm.customer")
cat >"$BENCH_OUT/loyalty_insert.sql" <<EOF
\set c random(1, $ncust)
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (:c, 'web', '2026-06-15 12:00+00', 10.00 + (:c % 50));
EOF
pgbench_secs() {
	local t0 t1
	t0=$(date +%s.%N)
	pgbench -n -c 2 -j 2 -t "$pgbench_tx" -f "$BENCH_OUT/loyalty_insert.sql" >/dev/null 2>&1
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc
}
bench_sql "VACUUM ANALYZE"
secs_bare=0
secs_c=0
for round in 1 2 3; do
	bench_sql "ALTER TABLE crm.orders DISABLE TRIGGER orders_loyalty_insert"
	secs_bare=$(echo "$secs_bare + $(pgbench_secs)" | bc)
	bench_sql "ALTER TABLE crm.orders ENABLE TRIGGER orders_loyalty_insert"
	secs_c=$(echo "$secs_c + $(pgbench_secs)" | bc)
done
tps_bare=$(echo "scale=1; 3 * 2 * $pgbench_tx / $secs_bare" | bc)
tps_c=$(echo "scale=1; 3 * 2 * $pgbench_tx / $secs_c" | bc)
bench_row "loyalty: pgbench single-row inserts, s per 1000 (C trigger vs none)" \
	"$(echo "scale=4; 1000 / $tps_c" | bc)" "$(echo "scale=4; 1000 / $tps_bare" | bc)" \
	"tps $tps_c vs $tps_bare (3 alternating rounds each): $(echo "scale=0; 100 * $tps_c / $tps_bare" | bc)% of bare (target >= 80%)"

# Redemption stress.  Accounts 1..100 get 200,000 points each; clients redeem
# 1..500 points under fresh keys (a counter per client: random keys collide,
# and a reused key with other arguments is rightly CR002), and 10% of the
# time retry their previous request with the same key and arguments (which
# must return the first result).  CR001 is an expected outcome, not an error.
bench_sql "
CREATE TABLE bench_stress_accounts AS
	SELECT row_number() OVER (ORDER BY customer_id) AS n, customer_id FROM crm.customer WHERE merged_into IS NULL ORDER BY customer_id LIMIT 100;
SELECT crm.adjust_points(customer_id, 200000, 'bench: stress credit', 'bench-credit-' || customer_id, '2026-06-30+00')
FROM bench_stress_accounts ORDER BY customer_id;
CREATE TABLE bench_accepted (key text NOT NULL, customer_id bigint NOT NULL, points bigint NOT NULL, result bigint NOT NULL, retry boolean NOT NULL);
CREATE FUNCTION bench_redeem(n bigint, points bigint, key text, retry boolean) RETURNS bigint LANGUAGE plpgsql AS \$f\$
DECLARE
	c bigint := (SELECT s.customer_id FROM bench_stress_accounts s WHERE s.n = bench_redeem.n);
	r bigint;
BEGIN
	r := crm.redeem_points(c, points, key, '2026-07-01+00');
	INSERT INTO bench_accepted VALUES (key, c, points, r, retry);
	RETURN r;
EXCEPTION WHEN SQLSTATE 'CR001' THEN
	RETURN -1;
END
\$f\$"
cat >"$BENCH_OUT/loyalty_redeem.sql" <<'EOF'
\set retry random(1, 10)
\if :retry = 1 and :prev_key > 0
SELECT bench_redeem(:prev_acct, :prev_pts, 'stress-' || :client_id || '-' || :prev_key, true);
\else
\set prev_acct random(1, 100)
\set prev_pts random(1, 500)
\set prev_key :prev_key + 1
SELECT bench_redeem(:prev_acct, :prev_pts, 'stress-' || :client_id || '-' || :prev_key, false);
\endif
EOF
t0=$(date +%s.%N)
stress_out=$(pgbench -n -c 16 -j 2 -t "$stress_tx" -D prev_acct=1 -D prev_pts=1 -D prev_key=0 -f "$BENCH_OUT/loyalty_redeem.sql" 2>&1) || echo "$stress_out" | grep -v "^progress" | tail -20 >&2
t1=$(date +%s.%N)
stress_tps=$(echo "$stress_out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
failed_tx=$(echo "$stress_out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
processed=$(echo "$stress_out" | sed -n 's/^number of transactions actually processed: \([0-9/]*\).*/\1/p')
bench_sql "CREATE INDEX ON bench_accepted (key); ANALYZE bench_accepted"
checks=$(psql -X -At -F' ' -c "
SELECT (SELECT count(*) FROM crm.verify_ledgers()),
       (SELECT count(*) FROM crm.loyalty_account WHERE crm.ledger_total(ledger) < 0 OR debt < 0),
       (SELECT count(*) FROM (SELECT DISTINCT key FROM bench_accepted) k
        WHERE (SELECT count(*) FROM crm.points_journal j WHERE j.idempotency_key = k.key AND j.kind = 'spend') <> 1),
       (SELECT count(*) FROM crm.points_journal j WHERE j.idempotency_key LIKE 'stress-%'
        AND NOT EXISTS (SELECT 1 FROM bench_accepted a WHERE a.key = j.idempotency_key)),
       (SELECT count(*) FROM (SELECT key FROM bench_accepted GROUP BY key HAVING count(DISTINCT result) > 1) d),
       (SELECT count(DISTINCT key) FROM bench_accepted),
       (SELECT count(*) FROM bench_accepted WHERE retry)")
read -r mismatches negatives not_once orphans differing accepted retries_ok <<<"$checks"
bench_row "loyalty: redemption stress 16 x $stress_tx over 100 accounts" "$(echo "$t1 - $t0" | bc)" "-" \
	"tps $stress_tps, processed $processed, failed tx ${failed_tx:-0}; $accepted keys accepted, $retries_ok retries answered; verify_ledgers rows $mismatches, negative $negatives, keys not spent exactly once $not_once, spends without accepted key $orphans, retries with another result $differing"
echo "loyalty invariants: verify_ledgers=$mismatches negative=$negatives not_exactly_once=$not_once orphan_spends=$orphans differing_retries=$differing" >&2

bench_sql "DROP TRIGGER bench_plpgsql_earn ON crm.orders; DROP TRIGGER bench_plpgsql_earn_row ON crm.orders;
DROP FUNCTION bench_plpgsql_earn(), bench_plpgsql_earn_row(), bench_redeem(bigint, bigint, text, boolean);
DROP TABLE bench_loyalty_src, bench_jrows, bench_lot, bench_pjournal, bench_paccount, bench_stress_accounts, bench_accepted"
