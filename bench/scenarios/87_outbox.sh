# Issue 17: the outbox under load, on the sample's golden customers.
#   throughput  BENCH_OUTBOX_MESSAGES (200,000) service messages enqueued
#               round-robin to the customers with one INSERT ... SELECT
#               calling crm.outbox_enqueue per row (timed: the enqueue rate,
#               against a plain INSERT ... SELECT of as many rows into a
#               bare queue table with a unique dedupe key), then 4 pgbench
#               clients claim and ack them, 500 a claim, until all are
#               delivered: one transaction is
#                 crm.outbox_ack(array_agg(message_id)) FROM crm.outbox_claim(client, 500)
#               (target: at least 10,000 messages/s claimed and acked),
#               against the same 4 clients on the bare queue, where one
#               statement claims and finishes 500 rows:
#                 WITH c AS (SELECT id ... WHERE status = 'pending' ORDER BY id LIMIT 500
#                            FOR UPDATE SKIP LOCKED) UPDATE ... SET status = 'done' FROM c ...
#               Each transaction records how many it acked; the note checks
#               that every message was acked once (sum of acks = messages),
#               claimed once (attempts = 1) and none is left.
#   consent     the same with marketing messages to customers who opted in
#               (crm.set_consent first): the consent found is an event, not
#               the default; and crm.consent_allows alone over the messages
#               of each run (what the check at the claim costs a message;
#               the enqueue checks it too).
#   purge       BENCH_OUTBOX_BIG (10,000,000) delivered messages finished
#               10 to 30 days ago, written with one INSERT ... SELECT into
#               crm.outbox (triggers off: the customers exist) behind 1,000
#               live ones; the table's size; crm.outbox_purge(now()) timed
#               while one client claims 10 messages at a time (lease 1 ms,
#               never acked, so the 1,000 stay due) with 5 ms between
#               claims, whose worst and mean claim time are compared with 5 s
#               of the same claims before the purge; the size after the
#               purge and after a VACUUM (and the heap's free space then).
# The outbox is emptied again at the end; the opt-ins stay (crm.consent_event
# is append-only).
ob_n=${BENCH_OUTBOX_MESSAGES:-200000}
ob_big=${BENCH_OUTBOX_BIG:-10000000}
ob_clients=4
ob_batch=500
bench_sql "CREATE TABLE bench_ob_cust AS
	SELECT row_number() OVER (ORDER BY customer_id) AS k, customer_id FROM crm.customer
	WHERE merged_into IS NULL AND forgotten_at IS NULL;
	CREATE UNIQUE INDEX ON bench_ob_cust (k);
	ANALYZE bench_ob_cust;
	CREATE TABLE bench_ob_acks (client int NOT NULL, acked bigint);
	CREATE TABLE bench_plain_queue (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, channel text NOT NULL,
	                                purpose text NOT NULL, template text NOT NULL, payload jsonb NOT NULL,
	                                dedupe_key text NOT NULL UNIQUE, status text NOT NULL DEFAULT 'pending',
	                                created_at timestamptz NOT NULL DEFAULT now());
	CREATE INDEX ON bench_plain_queue (id) WHERE status = 'pending';
	TRUNCATE crm.outbox"
ob_cust=$(psql -X -At -c "SELECT count(*) FROM bench_ob_cust")
ob_tx=$(( (ob_n + ob_batch * ob_clients - 1) / (ob_batch * ob_clients) + 2 ))  # per client: all of them, and 2 claims more
cat >"$BENCH_OUT/outbox_consume.pgbench" <<EOS
INSERT INTO bench_ob_acks SELECT :client_id, crm.outbox_ack(array_agg(message_id)) FROM crm.outbox_claim('bench-' || :client_id, $ob_batch, '1 minute');
EOS
cat >"$BENCH_OUT/outbox_plain_consume.pgbench" <<EOS
WITH c AS (SELECT id FROM bench_plain_queue WHERE status = 'pending' ORDER BY id LIMIT $ob_batch FOR UPDATE SKIP LOCKED),
     u AS (UPDATE bench_plain_queue q SET status = 'done' FROM c WHERE q.id = c.id RETURNING q.id)
INSERT INTO bench_ob_acks SELECT :client_id, count(*) FROM u;
EOS
# ob_consume SCRIPT: $ob_clients pgbench clients run SCRIPT $ob_tx times each
# after a VACUUM ANALYZE and a CHECKPOINT; prints the wall-clock seconds
ob_consume() {
	local t0 t1 out
	# (in a command substitution, where set -e is off)
	bench_sql "TRUNCATE bench_ob_acks" || exit 1
	bench_sql "VACUUM ANALYZE crm.outbox, bench_plain_queue" || exit 1
	bench_sql "CHECKPOINT" || exit 1
	t0=$(date +%s.%N)
	if ! out=$(pgbench -n -c "$ob_clients" -j 2 -t "$ob_tx" -f "$1" 2>&1); then
		echo "pgbench $1 failed:" >&2
		echo "$out" | tail -20 >&2
		exit 1
	fi
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
ob_rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
# ob_check KIND: what one consumer run left, as a note
ob_check() {
	psql -X -At -c "SELECT format('%s acked in all (messages: %s), %s claimed more than once, %s not delivered, %s suppressed',
		(SELECT COALESCE(sum(acked), 0) FROM bench_ob_acks), $ob_n,
		(SELECT count(*) FROM crm.outbox WHERE attempts > 1),
		(SELECT count(*) FROM crm.outbox WHERE status <> 'delivered'),
		(SELECT count(*) FROM crm.outbox WHERE status = 'suppressed'))"
}
# ob_enqueue PURPOSE TEMPLATE: one INSERT ... SELECT through crm.outbox_enqueue
ob_enqueue() {
	bench_sql "CHECKPOINT" || exit 1
	bench_time "SELECT count(crm.outbox_enqueue(c.customer_id, 'sms', '$1', '$2', jsonb_build_object('n', g), 'bench:$2:' || g))
		FROM generate_series(1, $ob_n) g JOIN bench_ob_cust c ON c.k = 1 + (g - 1) % $ob_cust"
}

# --- the floor: a bare queue table ----------------------------------------
bench_sql "CHECKPOINT"
ob_plain_enq=$(bench_time "INSERT INTO bench_plain_queue (customer_id, channel, purpose, template, payload, dedupe_key)
	SELECT c.customer_id, 'sms', 'service', 'bench_service', jsonb_build_object('n', g), 'bench:plain:' || g
	FROM generate_series(1, $ob_n) g JOIN bench_ob_cust c ON c.k = 1 + (g - 1) % $ob_cust
	ON CONFLICT (dedupe_key) DO NOTHING")
ob_plain_s=$(ob_consume "$BENCH_OUT/outbox_plain_consume.pgbench")
ob_plain_note=$(psql -X -At -c "SELECT format('%s finished in all, %s left pending', (SELECT sum(acked) FROM bench_ob_acks),
	(SELECT count(*) FROM bench_plain_queue WHERE status = 'pending'))")
ob_plain_rate=$(ob_rate "$ob_n" "$ob_plain_s")

# --- service messages: consent allowed by default ---------------------------
ob_svc_enq=$(ob_enqueue service bench_service)
ob_svc_s=$(ob_consume "$BENCH_OUT/outbox_consume.pgbench")
ob_svc_note=$(ob_check)
ob_svc_consent=$(bench_time "SELECT count(*) FILTER (WHERE crm.consent_allows(customer_id, channel, purpose, now())) FROM crm.outbox")
bench_sql "TRUNCATE crm.outbox"

# --- marketing messages to customers who opted in ---------------------------
ob_optin=$(bench_time "SELECT count(crm.set_consent(customer_id, 'sms', 'marketing', true, 'bench', now() - interval '1 day')) FROM bench_ob_cust")
ob_mkt_enq=$(ob_enqueue marketing bench_marketing)
ob_mkt_s=$(ob_consume "$BENCH_OUT/outbox_consume.pgbench")
ob_mkt_note=$(ob_check)
ob_mkt_consent=$(bench_time "SELECT count(*) FILTER (WHERE crm.consent_allows(customer_id, channel, purpose, now())) FROM crm.outbox")
bench_sql "TRUNCATE crm.outbox"

ob_us() { awk -v s="$1" -v n="$ob_n" 'BEGIN { printf "%.0f", s * 1000000 / n }'; }
bench_row "outbox: enqueue $ob_n service messages (crm.outbox_enqueue per row) vs plain INSERT" "$ob_svc_enq" "$ob_plain_enq" \
	"$(ob_rate "$ob_n" "$ob_svc_enq") messages/s, plain $(ob_rate "$ob_n" "$ob_plain_enq")"
bench_row "outbox: enqueue $ob_n marketing messages to opted-in customers vs plain INSERT" "$ob_mkt_enq" "$ob_plain_enq" \
	"$(ob_rate "$ob_n" "$ob_mkt_enq") messages/s; the opt-ins of $ob_cust customers took $ob_optin s"
bench_row "outbox: $ob_clients clients claim+ack $ob_n service messages vs plain queue" "$ob_svc_s" "$ob_plain_s" "$ob_svc_note; plain: $ob_plain_note"
bench_row "outbox: $ob_clients clients claim+ack $ob_n marketing messages (opted in) vs plain queue" "$ob_mkt_s" "$ob_plain_s" "$ob_mkt_note"
bench_row "outbox: crm.consent_allows alone over the $ob_n service messages" "$ob_svc_consent" "-" "$(ob_us "$ob_svc_consent") us a message (no answer: the default)"
bench_row "outbox: crm.consent_allows alone over the $ob_n marketing messages" "$ob_mkt_consent" "-" "$(ob_us "$ob_mkt_consent") us a message (an opt-in found)"
bench_floor_row "outbox: $ob_clients clients claim+ack service messages, $ob_batch a claim (messages/s; target 10,000)" msg/s \
	"$(ob_rate "$ob_n" "$ob_svc_s")" "$ob_plain_rate" "$ob_n messages; floor: one UPDATE finishes 500 rows of a bare queue"
bench_floor_row "outbox: the same, marketing messages to opted-in customers (messages/s)" msg/s \
	"$(ob_rate "$ob_n" "$ob_mkt_s")" "$ob_plain_rate"

# --- size after BENCH_OUTBOX_BIG finished messages, and the purge -----------
bench_sql "DROP TABLE bench_plain_queue, bench_ob_acks; CHECKPOINT"
ob_fill=$(bench_time "SET session_replication_role = replica;
	INSERT INTO crm.outbox (customer_id, channel, purpose, template, payload, source, dedupe_key, status,
	                        available_at, due_at, consumer, attempts, created_at, finished_at)
	SELECT c.customer_id, 'sms', 'service', 'bench_big', jsonb_build_object('n', g), 'bench', 'bench:big:' || g, 'delivered',
	       t, NULL, 'bench', 1, t, t + interval '2 seconds'
	FROM generate_series(1, $ob_big) g JOIN bench_ob_cust c ON c.k = 1 + (g - 1) % $ob_cust,
	     LATERAL (SELECT now() - interval '30 days' + (g - 1) * (interval '20 days' / $ob_big) AS t) t")
# the live messages, newest, at the end of the table as on a live system
bench_sql "SELECT count(crm.outbox_enqueue(c.customer_id, 'sms', 'service', 'bench_live', '{}', 'bench:live:' || c.k))
	FROM bench_ob_cust c WHERE c.k <= 1000"
ob_vac1=$(bench_time "VACUUM ANALYZE crm.outbox")
ob_size() {
	psql -X -At -c "SELECT format('%s (heap %s, indexes %s)', pg_size_pretty(pg_total_relation_size('crm.outbox')),
		pg_size_pretty(pg_relation_size('crm.outbox')), pg_size_pretty(pg_indexes_size('crm.outbox')))"
}
ob_size0=$(ob_size)
ob_bytes0=$(psql -X -At -c "SELECT pg_total_relation_size('crm.outbox')")
# The claimer: claims 10 due messages (lease 1 ms, so they are due again at
# once) every 5 ms until told to stop or SECONDS have passed; its worst and
# mean claim time go to bench_ob_claims under LABEL.
bench_sql "CREATE TABLE bench_ob_stop (stop boolean NOT NULL); INSERT INTO bench_ob_stop VALUES (false);
	CREATE TABLE bench_ob_claims (label text, claims bigint, claimed bigint, worst_ms numeric, mean_ms numeric)"
ob_claimer() { # LABEL SECONDS
	psql -X -q -v ON_ERROR_STOP=1 -c "DO \$\$
	DECLARE
		t0 timestamptz; d interval; worst interval := interval '0'; total interval := interval '0';
		n bigint := 0; got bigint := 0; k bigint; halt boolean;
		until timestamptz := clock_timestamp() + interval '$2 seconds';
	BEGIN
		LOOP
			t0 := clock_timestamp();
			SELECT count(*) INTO k FROM crm.outbox_claim('bench-claimer', 10, '1 millisecond');
			COMMIT;
			d := clock_timestamp() - t0;
			worst := GREATEST(worst, d); total := total + d; n := n + 1; got := got + k;
			SELECT s.stop INTO halt FROM bench_ob_stop s;
			EXIT WHEN halt OR clock_timestamp() > until;
			PERFORM pg_sleep(0.005);
		END LOOP;
		INSERT INTO bench_ob_claims VALUES ('$1', n, got,
			round(extract(epoch FROM worst)::numeric * 1000, 1), round(extract(epoch FROM total)::numeric * 1000 / n, 2));
		COMMIT;
	END \$\$" >/dev/null
}
ob_claimer idle 5
ob_claimer purge 86400 &
ob_claimer_pid=$!
ob_purged_n=0
ob_t0=$(date +%s.%N)
# one call per transaction, as successive ticks would make them (each
# deletes at most ten batches), until nothing is left to purge
while ob_k=$(psql -X -At -v ON_ERROR_STOP=1 -c "SELECT crm.outbox_purge(now())") && [ "$ob_k" -gt 0 ]; do
	ob_purged_n=$((ob_purged_n + ob_k))
done
ob_t1=$(date +%s.%N)
bench_sql "UPDATE bench_ob_stop SET stop = true"
wait "$ob_claimer_pid"
ob_purge=$(awk -v a="$ob_t0" -v b="$ob_t1" 'BEGIN { printf "%.3f", b - a }')
ob_size1=$(ob_size)
ob_vac2=$(bench_time "VACUUM crm.outbox")
ob_size2=$(ob_size)
# what VACUUM made reusable (the free space map; the file does not shrink
# while live messages sit at its end)
bench_sql "CREATE EXTENSION IF NOT EXISTS pg_freespacemap"
ob_free=$(psql -X -At -c "SELECT pg_size_pretty(sum(avail)) FROM pg_freespace('crm.outbox')")
ob_claims=$(psql -X -At -c "SELECT string_agg(format('%s: %s claims, worst %s ms, mean %s ms', label, claims, worst_ms, mean_ms), '; ' ORDER BY label DESC)
	FROM bench_ob_claims")
ob_left=$(psql -X -At -c "SELECT format('%s left (%s finished)', count(*), count(*) FILTER (WHERE finished_at IS NOT NULL)) FROM crm.outbox")
bench_row "outbox: INSERT ... SELECT of $ob_big delivered messages (fixture, triggers off), VACUUM ANALYZE after" "$ob_fill" "-" \
	"size $ob_size0 = $(awk -v b="$ob_bytes0" -v n="$ob_big" 'BEGIN { printf "%.0f", b / n }') bytes a message; VACUUM ANALYZE $ob_vac1 s"
bench_row "outbox: crm.outbox_purge(now()) calls (ten batches each, as ticks) over $ob_big finished messages" "$ob_purge" "-" \
	"$ob_purged_n purged, $(ob_rate "$ob_purged_n" "$ob_purge") a second, $ob_left; size after $ob_size1; a claimer of 10 every 5 ms, $ob_claims"
bench_row "outbox: VACUUM after the purge" "$ob_vac2" "-" "size after $ob_size2, of which $ob_free free in the heap for new messages"
bench_sql "DROP TABLE bench_ob_stop, bench_ob_claims, bench_ob_cust; TRUNCATE crm.outbox"
