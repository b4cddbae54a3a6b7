# The concurrency soak of issue 13 (bench/soak, on a cluster of its own with
# synchronous_commit on): 16 clients over 50 customers, with and without
# merges and unmerges, then the same with an immediate stop halfway.  One row
# per run: seconds and the summary line (TPS, deadlocks, unexpected errors,
# crm.verify() rows; for the crash, acknowledged operations missing).
#
#   BENCH_SOAK_SECONDS  length of each run (default 60)
soak_secs=${BENCH_SOAK_SECONDS:-60}
soak_out=$("$CRM_ROOT/bench/soak" "$soak_secs" 16 2>&1 | grep '^==' || true)
echo "$soak_out" >&2
while IFS= read -r line; do
	case "$line" in
	"== soak "*) bench_row "soak: ${line#== soak }" "$soak_secs" "-" ;;
	"== crash:"*|"== TPS"*) bench_row "soak: ${line#== }" "-" "-" ;;
	esac
done <<<"$soak_out"
