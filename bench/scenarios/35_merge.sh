# Merges (issue 13): online merge latency, and batch stitching of one large
# component in one step.  Runs after 30_identity.sh, on stitched data.
#
# 1. Online merge latency: pgbench, one client, crm.merge_goldens of two
#    random records ('online'; two random records are rarely one customer
#    already), per-transaction latencies from --log: p50 and p99 (targets
#    5 ms and 25 ms).
# 2. One junk phone on 2,000 golden customers: crm.stitch_identities() with
#    the phone's max_holders raised to 5,000 (the component merges in one
#    step; target 2 s) vs the default hub policy (20: the holders go to the
#    review queue).  Each run in a transaction rolled back.
n_merge=${BENCH_MERGE_TX:-500}
maxc=$(psql -X -At -c "SELECT max(customer_id) FROM crm.customer")
script=$(mktemp)
logdir=$(mktemp -d)
cat >"$script" <<PGB
\\set a random(1, $maxc)
\\set b random(1, $maxc)
SELECT crm.merge_goldens(:a, :b, 'online', 'bench', NULL);
PGB
# --log writes one line per transaction: client, tx, latency (us), ...
(cd "$logdir" && pgbench -n -c 1 -t "$n_merge" -f "$script" --log --log-prefix=m >/dev/null 2>&1)
merges_done=$(psql -X -At -c "SELECT count(*) FROM crm.merge_log WHERE reason = 'bench'")
lat=$(cat "$logdir"/m.* | awk '{print $3 / 1000}' | sort -n | awk '{a[NR] = $1} END {
	if (NR == 0) { print "- -"; exit }
	i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1;
	printf "%.2f %.2f", a[i50], a[i99] }')
p50=${lat% *}
p99=${lat#* }
bench_row "online merge latency: $n_merge crm.merge_goldens, p50 (p99 in note)" "$(awk -v p="$p50" 'BEGIN { printf "%.4f", p / 1000 }')" "-" \
	"p50 $p50 ms, p99 $p99 ms over $n_merge transactions ($merges_done merges; targets 5 / 25 ms)"
rm -rf "$script" "$logdir"

# One junk phone on 2,000 goldens; the time of crm.stitch_identities() alone.
large_component() {
	psql -X -q -At -v ON_ERROR_STOP=1 2>&1 <<SQL | sed -n 's/.*NOTICE: *//p'
BEGIN;
SET LOCAL crm.stitch_on_insert = off;
UPDATE crm.identity_kind SET max_holders = $1 WHERE kind = 'phone';
INSERT INTO crm.identity (kind, value, customer_id)
SELECT 'phone', '13712345678', c.customer_id FROM crm.customer c
WHERE c.merged_into IS NULL AND c.forgotten_at IS NULL ORDER BY pg_catalog.md5(c.customer_id::text) LIMIT 2000;
DO \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
	r record;
BEGIN
	SELECT * INTO r FROM crm.stitch_identities();
	RAISE NOTICE '% % % %', round(extract(epoch FROM clock_timestamp() - t0)::numeric, 3), r.merges, r.reviews, r.rows_redirected;
END
\$\$;
ROLLBACK;
SQL
}
read -r big_s big_merges big_reviews _ <<<"$(large_component 5000)"
read -r hub_s hub_merges hub_reviews _ <<<"$(large_component 20)"
bench_row "stitch one component of 2000 records (merge in one step vs hub review)" "$big_s" "$hub_s" \
	"merge: $big_merges merges, $big_reviews reviews (target 2 s); hub (max_holders 20): $hub_merges merges, $hub_reviews reviews"
