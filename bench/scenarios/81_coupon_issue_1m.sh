# Issue 16: a batch issue of 1,000,000 coupons to an audience (target: at
# most 30 s on this machine), whatever the scale: customers are added to
# the sample (plain rows, ids after the sample's) until there are
# BENCH_COUPON_AUDIENCE (1,000,000) golden customers, then crm.issue_coupons
# gives one to each of them in one call, against the plain INSERT ... SELECT
# of as many rows with a random code (gen_random_uuid) into a bare table.
# The customers added are deleted again (with their coupons) at the end.
ci_n=${BENCH_COUPON_AUDIENCE:-1000000}
ci_have=$(psql -X -At -c "SELECT count(*) FROM crm.customer WHERE merged_into IS NULL AND forgotten_at IS NULL")
ci_first=$(psql -X -At -c "SELECT COALESCE(max(customer_id), 0) + 1 FROM crm.customer")
if [ "$ci_have" -lt "$ci_n" ]; then
	bench_sql "INSERT INTO crm.customer (customer_id, name, created_at)
		SELECT i, 'bench audience ' || i, crm.sample_as_of() - interval '1 day' FROM generate_series($ci_first, $ci_first + $ci_n - $ci_have - 1) i;
		ANALYZE crm.customer"
fi
bench_sql "CREATE TABLE bench_audience AS SELECT customer_id FROM crm.customer WHERE merged_into IS NULL AND forgotten_at IS NULL ORDER BY customer_id LIMIT $ci_n;
	INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days) VALUES ('bench 1m', 'amount_off', 3.00, 30)"
ci_t=$(psql -X -At -c "SELECT template_id FROM crm.coupon_template WHERE name = 'bench 1m'")
bench_sql "CHECKPOINT"
ci_issue=$(bench_time "SELECT crm.issue_coupons($ci_t, ARRAY(SELECT customer_id FROM bench_audience), crm.sample_as_of())")
ci_count=$(psql -X -At -c "SELECT count(*) FROM crm.coupon WHERE template_id = $ci_t")
bench_sql "CREATE TABLE bench_plain_coupon (id bigserial PRIMARY KEY, code text NOT NULL UNIQUE, customer_id bigint NOT NULL, issued_at timestamptz NOT NULL);
	CHECKPOINT"
ci_plain=$(bench_time "INSERT INTO bench_plain_coupon (code, customer_id, issued_at) SELECT gen_random_uuid()::text, customer_id, now() FROM bench_audience")
bench_floor_row "coupons: issue_coupons of $ci_count coupons to an audience vs plain INSERT of as many rows" s "$ci_issue" "$ci_plain" \
	"target 30 s for 1,000,000"
bench_sql "DROP TABLE bench_plain_coupon, bench_audience;
	SET session_replication_role = replica;
	DELETE FROM crm.coupon_journal j USING crm.coupon c WHERE c.coupon_id = j.coupon_id AND c.template_id = $ci_t;
	DELETE FROM crm.coupon WHERE template_id = $ci_t;
	DELETE FROM crm.coupon_template WHERE template_id = $ci_t;
	DELETE FROM crm.customer_stats WHERE customer_id >= $ci_first;
	DELETE FROM crm.customer WHERE customer_id >= $ci_first;
	RESET session_replication_role"
