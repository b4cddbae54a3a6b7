# Issue 16: stored value under load, on the sample.
#   pay       2 pgbench clients pay 1.00 from random wallets (each payment a
#             new key): crm.wallet_pay, which locks the customer, checks the
#             key, draws cash then bonus, writes a transaction and its
#             double entries and updates the wallet, against the floor the
#             issue names: a bare UPDATE plain_wallet SET balance = balance -
#             1.00 WHERE id = ... AND balance >= 1.00 on a plain table of the
#             same wallets; and against the plain-SQL way of a journaled
#             payment (that UPDATE, a transaction row with a unique key and
#             two entries, in one statement: a second row).
#   storm     BENCH_WALLET_CLIENTS (16) clients pay 30.00 from 100 wallets of
#             100.00 each with BENCH_WALLET_TX (5,000) payments in all, 10%
#             a retry of a key already tried: no wallet may go below zero,
#             every accepted payment is journaled once, a retry returns the
#             first transaction; the note counts them.
wl_clients=${BENCH_WALLET_CLIENTS:-16}
wl_tx=${BENCH_WALLET_TX:-5000}
bench_sql "CREATE TABLE bench_payers AS
	SELECT row_number() OVER (ORDER BY customer_id) AS k, customer_id FROM crm.customer
	WHERE merged_into IS NULL AND forgotten_at IS NULL ORDER BY customer_id LIMIT 10000;
	CREATE UNIQUE INDEX ON bench_payers (k);
	SELECT count(crm.wallet_top_up(customer_id, 1000000.00, 'bench-top-' || customer_id, bonus => 100.00)) FROM bench_payers;
	CREATE TABLE bench_plain_wallet (id bigint PRIMARY KEY, balance numeric(14,2) NOT NULL CHECK (balance >= 0));
	INSERT INTO bench_plain_wallet SELECT customer_id, 1000100.00 FROM bench_payers;
	CREATE TABLE bench_plain_txn (txn_id bigserial PRIMARY KEY, wallet_id bigint NOT NULL, amount numeric(14,2) NOT NULL,
	                              key text NOT NULL UNIQUE, at timestamptz NOT NULL);
	CREATE TABLE bench_plain_entry (entry_id bigserial PRIMARY KEY, txn_id bigint NOT NULL REFERENCES bench_plain_txn,
	                                account text NOT NULL, wallet_id bigint, amount numeric(14,2) NOT NULL);
	CREATE INDEX ON bench_plain_entry (txn_id);
	CREATE SEQUENCE bench_key_seq;
	-- statistics as autovacuum would have them on a live system (without,
	-- the payment's plans are built for empty tables: half the TPS)
	ANALYZE crm.wallet, crm.wallet_bonus_lot, crm.wallet_txn, crm.wallet_journal, bench_payers, bench_plain_wallet, bench_plain_txn, bench_plain_entry"
wl_n=$(psql -X -At -c "SELECT count(*) FROM bench_payers")
cat >"$BENCH_OUT/wallet_pay.pgbench" <<EOS
\\set k random(1, $wl_n)
SELECT crm.wallet_pay(customer_id, 1.00, 'bw-' || nextval('bench_key_seq')) FROM bench_payers WHERE k = :k;
EOS
cat >"$BENCH_OUT/wallet_bare.pgbench" <<EOS
\\set k random(1, $wl_n)
UPDATE bench_plain_wallet SET balance = balance - 1.00 WHERE id = (SELECT customer_id FROM bench_payers WHERE k = :k) AND balance >= 1.00;
EOS
cat >"$BENCH_OUT/wallet_plain_journal.pgbench" <<EOS
\\set k random(1, $wl_n)
WITH u AS (UPDATE bench_plain_wallet SET balance = balance - 1.00
           WHERE id = (SELECT customer_id FROM bench_payers WHERE k = :k) AND balance >= 1.00 RETURNING id),
     t AS (INSERT INTO bench_plain_txn (wallet_id, amount, key, at)
           SELECT u.id, 1.00, 'bp-' || nextval('bench_key_seq'), now() FROM u RETURNING txn_id, wallet_id)
INSERT INTO bench_plain_entry (txn_id, account, wallet_id, amount)
SELECT t.txn_id, 'wallet', t.wallet_id, -1.00 FROM t UNION ALL SELECT t.txn_id, 'sales', NULL, 1.00 FROM t;
EOS
secs=${BENCH_PGBENCH_SECONDS:-30}
wl_pay=$(bench_tps "$PGDATABASE" "$BENCH_OUT/wallet_pay.pgbench" "$secs")
wl_bare=$(bench_tps "$PGDATABASE" "$BENCH_OUT/wallet_bare.pgbench" "$secs")
wl_journal=$(bench_tps "$PGDATABASE" "$BENCH_OUT/wallet_plain_journal.pgbench" "$secs")
wl_ok=$(psql -X -At -c "SELECT count(*) = 0 FROM crm.verify_wallets()")
bench_floor_row "wallet: crm.wallet_pay vs bare UPDATE ... WHERE balance >= x, 2 clients" tps "$wl_pay" "$wl_bare" \
	"$wl_n wallets; verify_wallets clean: $wl_ok"
bench_floor_row "wallet: crm.wallet_pay vs plain journaled payment (UPDATE + txn + 2 entries, one statement)" tps "$wl_pay" "$wl_journal"
bench_sql "DROP TABLE bench_plain_entry, bench_plain_txn, bench_plain_wallet"

# The storm: 100 wallets of 100.00, 30.00 a payment, so at most 3 of the
# tries on each wallet can pay; 10% of tries repeat a key tried before.
bench_sql "CREATE TABLE bench_storm_w AS
	SELECT k, customer_id FROM bench_payers WHERE k > $wl_n - 100;
	UPDATE bench_storm_w SET k = k - ($wl_n - 100);
	CREATE UNIQUE INDEX ON bench_storm_w (k);
	CREATE TABLE bench_storm_try (key text, outcome text, txn_id bigint);
	CREATE FUNCTION bench_wallet_pay(k int, retry boolean) RETURNS text LANGUAGE plpgsql AS \$f\$
	DECLARE c bigint; key text; t bigint;
	BEGIN
		SELECT s.customer_id INTO c FROM bench_storm_w s WHERE s.k = bench_wallet_pay.k;
		key := CASE WHEN retry THEN (SELECT x.key FROM bench_storm_try x WHERE x.key LIKE 'storm-' || k || '-%' ORDER BY x.ctid LIMIT 1) END;
		key := COALESCE(key, 'storm-' || k || '-' || nextval('bench_key_seq'));
		t := crm.wallet_pay(c, 30.00, key, at => crm.sample_as_of());
		INSERT INTO bench_storm_try VALUES (key, CASE WHEN retry THEN 'retry' ELSE 'paid' END, t);
		RETURN 'ok';
	EXCEPTION WHEN SQLSTATE 'CR401' THEN
		INSERT INTO bench_storm_try VALUES (key, 'refused CR401', NULL);
		RETURN 'CR401';
	END \$f\$"
# the storm's wallets hold exactly 100.00 cash: pay the rest out first
bench_sql "SELECT count(crm.wallet_pay(customer_id, b.spendable - 100.00, 'storm-trim-' || customer_id, at => crm.sample_as_of()))
	FROM bench_storm_w, crm.wallet_balance(customer_id, crm.sample_as_of()) b"
cat >"$BENCH_OUT/wallet_storm.pgbench" <<'EOS'
\set k random(1, 100)
\set r random(1, 10)
SELECT bench_wallet_pay(:k, :r = 1);
EOS
wl_t0=$(date +%s.%N)
if ! wl_out=$(pgbench -n -c "$wl_clients" -j 2 -t $((wl_tx / wl_clients)) -f "$BENCH_OUT/wallet_storm.pgbench" 2>&1); then
	echo "wallet storm failed:" >&2
	echo "$wl_out" | tail -20 >&2
	exit 1
fi
wl_t1=$(date +%s.%N)
wl_tps=$(echo "$wl_out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk '{ printf "%.0f", $1 }')
wl_note=$(psql -X -At -c "SELECT format('%s tries by %s clients: %s payments of 30.00 journaled (at most 300 fit), %s wallets below zero, %s retries returned another transaction, %s; verify_wallets clean: %s',
	(SELECT count(*) FROM bench_storm_try), $wl_clients,
	(SELECT count(*) FROM crm.wallet_txn t WHERE t.kind = 'pay' AND t.idempotency_key LIKE 'storm-%' AND t.idempotency_key NOT LIKE 'storm-trim-%'),
	(SELECT count(*) FROM bench_storm_w s, crm.wallet_balance(s.customer_id, crm.sample_as_of()) b WHERE b.spendable < 0),
	(SELECT count(*) FROM bench_storm_try r JOIN crm.wallet_txn t ON t.idempotency_key = r.key WHERE r.outcome = 'retry' AND r.txn_id <> t.txn_id),
	(SELECT string_agg(format('%s %s', outcome, n), ', ' ORDER BY outcome) FROM (SELECT outcome, count(*) AS n FROM bench_storm_try GROUP BY 1) o),
	(SELECT count(*) = 0 FROM crm.verify_wallets()))")
bench_row "wallet: storm of $wl_tx payments on 100 wallets, $wl_clients clients ($wl_tps TPS)" \
	"$(awk -v a="$wl_t0" -v b="$wl_t1" 'BEGIN { printf "%.3f", b - a }')" "-" "$wl_note"
bench_sql "DROP FUNCTION bench_wallet_pay(int, boolean); DROP TABLE bench_storm_w, bench_storm_try, bench_payers; DROP SEQUENCE bench_key_seq"
