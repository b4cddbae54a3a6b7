# Issue 16: coupons under load, on the sample.
#   issue     crm.issue_coupons of one coupon to every golden customer of the
#             sample (the audience "everyone": 1M at scale 1,000,000), against
#             the plain INSERT ... SELECT of the same number of rows with a
#             random code (gen_random_uuid) into a plain table.
#   storm     BENCH_COUPON_CLIENTS (16) pgbench clients redeem 1,000 coupons,
#             each owned by a customer with a paid order, BENCH_COUPON_TX
#             (10,000) transactions in all, 10% of them a retry of a pair
#             already tried: every coupon must be used once, on one order, and
#             a retry must return the first discount (so must a try that
#             happens to pick the winning order); the row's note counts
#             redemptions, double uses (must be 0) and the outcomes.
cp_clients=${BENCH_COUPON_CLIENTS:-16}
cp_tx=${BENCH_COUPON_TX:-10000}
cp_goldens=$(psql -X -At -c "SELECT count(*) FROM crm.customer WHERE merged_into IS NULL AND forgotten_at IS NULL")
bench_sql "INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('bench everyone', 'amount_off', 5.00, 30)"
cp_t=$(psql -X -At -c "SELECT template_id FROM crm.coupon_template WHERE name = 'bench everyone'")
cp_issue=$(bench_time "SELECT crm.issue_coupons($cp_t, ARRAY(SELECT customer_id FROM crm.customer WHERE merged_into IS NULL AND forgotten_at IS NULL), crm.sample_as_of())")
bench_sql "CREATE TABLE bench_plain_coupon (id bigserial PRIMARY KEY, code text NOT NULL UNIQUE, customer_id bigint NOT NULL, issued_at timestamptz NOT NULL)"
cp_plain=$(bench_time "INSERT INTO bench_plain_coupon (code, customer_id, issued_at) SELECT gen_random_uuid()::text, customer_id, now() FROM crm.customer WHERE merged_into IS NULL AND forgotten_at IS NULL")
bench_sql "DROP TABLE bench_plain_coupon"
bench_floor_row "coupons: issue_coupons to $cp_goldens customers vs plain INSERT of as many rows" s "$cp_issue" "$cp_plain"

# The storm: 1,000 coupons of customers with a paid order, and the order
# each is tried on (a random one of the customer's paid orders per try).
bench_sql "INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('bench storm', 'amount_off', 2.00, 30)"
cp_s=$(psql -X -At -c "SELECT template_id FROM crm.coupon_template WHERE name = 'bench storm'")
bench_sql "SELECT crm.issue_coupons($cp_s, ARRAY(SELECT DISTINCT o.customer_id FROM crm.orders o WHERE o.status = 'paid' ORDER BY 1 LIMIT 1000), crm.sample_as_of())"
bench_sql "CREATE TABLE bench_storm AS
	SELECT row_number() OVER (ORDER BY c.coupon_id) AS k, c.code, c.customer_id,
	       (SELECT array_agg(o.order_id ORDER BY o.order_id) FROM crm.orders o WHERE o.customer_id = c.customer_id AND o.status = 'paid') AS orders
	FROM crm.coupon c WHERE c.template_id = $cp_s;
	CREATE UNIQUE INDEX ON bench_storm (k);
	CREATE TABLE bench_storm_try (k int, order_id bigint, outcome text, discount numeric);
	CREATE FUNCTION bench_redeem(k int, retry boolean) RETURNS text LANGUAGE plpgsql AS \$f\$
	DECLARE s record; o bigint; d numeric;
	BEGIN
		SELECT * INTO s FROM bench_storm b WHERE b.k = bench_redeem.k;
		-- a retry tries the pair tried first for this coupon, else a random order of its customer
		o := CASE WHEN retry THEN (SELECT t.order_id FROM bench_storm_try t WHERE t.k = bench_redeem.k ORDER BY t.ctid LIMIT 1) END;
		o := COALESCE(o, s.orders[1 + floor(random() * cardinality(s.orders))::int]);
		d := crm.redeem_coupon(s.code, s.customer_id, o, crm.sample_as_of());
		INSERT INTO bench_storm_try VALUES (k, o, CASE WHEN retry THEN 'retry accepted' ELSE 'accepted' END, d);
		RETURN 'ok';
	EXCEPTION WHEN SQLSTATE 'CR308' THEN
		INSERT INTO bench_storm_try VALUES (k, o, 'refused CR308', NULL);
		RETURN 'CR308';
	END \$f\$"
cat >"$BENCH_OUT/coupon_storm.pgbench" <<'EOF'
\set k random(1, 1000)
\set r random(1, 10)
SELECT bench_redeem(:k, :r = 1);
EOF
cp_t0=$(date +%s.%N)
if ! cp_out=$(pgbench -n -c "$cp_clients" -j 2 -t $((cp_tx / cp_clients)) -f "$BENCH_OUT/coupon_storm.pgbench" 2>&1); then
	echo "coupon storm failed:" >&2
	echo "$cp_out" | tail -20 >&2
	exit 1
fi
cp_t1=$(date +%s.%N)
cp_tps=$(echo "$cp_out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk '{ printf "%.0f", $1 }')
cp_note=$(psql -X -At -c "SELECT format('%s tries by %s clients: %s coupons used, %s used twice, %s redemptions journaled, %s', (SELECT count(*) FROM bench_storm_try), $cp_clients,
	(SELECT count(*) FROM crm.coupon WHERE template_id = $cp_s AND status = 'redeemed'),
	(SELECT count(*) FROM (SELECT coupon_id FROM crm.coupon_journal WHERE change = 'redeem' GROUP BY 1 HAVING count(*) > 1) d),
	(SELECT count(*) FROM crm.coupon_journal j JOIN crm.coupon c USING (coupon_id) WHERE c.template_id = $cp_s AND j.change = 'redeem'),
	(SELECT string_agg(format('%s %s', outcome, n), ', ' ORDER BY outcome) FROM (SELECT outcome, count(*) AS n FROM bench_storm_try GROUP BY 1) o))")
# A retry that found another order's redemption first is refused: the
# retry must return the first discount only when it tries the winning pair.
cp_bad=$(psql -X -At -c "SELECT count(*) FROM bench_storm_try t JOIN bench_storm b USING (k) JOIN crm.coupon c ON c.code = b.code
	WHERE t.outcome <> 'refused CR308' AND t.order_id <> c.order_id")
bench_row "coupons: storm of $cp_tx redemptions of 1,000 coupons ($cp_tps TPS)" \
	"$(awk -v a="$cp_t0" -v b="$cp_t1" 'BEGIN { printf "%.3f", b - a }')" "-" "$cp_note; $cp_bad accepted on a losing order"
bench_sql "DROP FUNCTION bench_redeem(int, boolean); DROP TABLE bench_storm, bench_storm_try"

# Exchanges: 2 pgbench clients exchange points for a reward (unlimited
# stock) for random members with enough points now, each with a new key; the
# TPS, against crm.redeem_points of the same points for the same members
# (the points half alone: the exchange adds the reward row and the coupon).
bench_sql "INSERT INTO crm.coupon_template (name, kind, gift_sku, valid_days) VALUES ('bench gift', 'gift_item', 'GIFT-B', 30);
	INSERT INTO crm.reward (name, kind, points_price, template_id)
	SELECT 'bench gift', 'goods', 1, template_id FROM crm.coupon_template WHERE name = 'bench gift';
	CREATE TABLE bench_rich AS SELECT row_number() OVER (ORDER BY customer_id) AS k, customer_id FROM crm.loyalty_account
	WHERE crm.ledger_balance(ledger, now()) >= 1000;
	CREATE UNIQUE INDEX ON bench_rich (k)"
cp_rich=$(psql -X -At -c "SELECT count(*) FROM bench_rich")
cp_r=$(psql -X -At -c "SELECT reward_id FROM crm.reward WHERE name = 'bench gift'")
cat >"$BENCH_OUT/exchange.pgbench" <<EOS
\\set k random(1, $cp_rich)
SELECT crm.exchange_points(customer_id, $cp_r, 1, 'bx-' || :client_id || '-' || nextval('crm.reward_exchange_id_seq') || '-' || :k) FROM bench_rich WHERE k = :k;
EOS
cat >"$BENCH_OUT/redeem.pgbench" <<EOS
\\set k random(1, $cp_rich)
SELECT crm.redeem_points(customer_id, 1, 'br-' || :client_id || '-' || nextval('crm.reward_exchange_id_seq') || '-' || :k) FROM bench_rich WHERE k = :k;
EOS
cp_ex=$(bench_tps "$PGDATABASE" "$BENCH_OUT/exchange.pgbench" "${BENCH_PGBENCH_SECONDS:-30}")
cp_rd=$(bench_tps "$PGDATABASE" "$BENCH_OUT/redeem.pgbench" "${BENCH_PGBENCH_SECONDS:-30}")
bench_floor_row "rewards: exchange_points (1 point, 1 coupon) vs redeem_points of the points alone, 2 clients" tps "$cp_ex" "$cp_rd" \
	"$cp_rich members with 1,000 points or more"
bench_sql "DROP TABLE bench_rich"
