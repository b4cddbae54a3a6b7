#!/usr/bin/env bash
# test/shell/outbox_consumer.sh: scripts/outbox-consumer, the reference
# consumer of the outbox, against a database with crm_ext:
#   * --once delivers exactly the due messages a consumer may send (one line
#     each, in claim order) and acks them: service ones, a marketing one to a
#     customer who opted in; not a marketing one to a customer without
#     consent (suppressed at the enqueue), nor one whose consent was revoked
#     before the claim (suppressed at the claim), nor one not due yet; a
#     second run delivers nothing again;
#   * --fail-every 2 fails every second message (pending again, attempts 1,
#     last_error set) and delivers the others, on stdout;
#   * a consumer waiting with a long --poll wakes up on the NOTIFY of an
#     enqueue, and one with a short --poll finds a message that became due
#     with no NOTIFY; SIGTERM and SIGINT stop a waiting consumer at once.
#
# Runs against the server the PG* variables point at (scripts/test's throwaway
# cluster), as a superuser; prints TAP.
set -uo pipefail
cd "$(dirname "$0")/../.."

db=crm_outbox_consumer
work=$(mktemp -d "${TMPDIR:-/tmp}/crm_ext.outbox_consumer.XXXXXX")
unset PGOPTIONS PGDATABASE
pids=()

n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
	n=$((n + 1)); echo "not ok $n - $1"
	shift; for line in "$@"; do printf '%s\n' "$line"; done | sed 's/^/#   /'
}
# check NAME EXPECTED GOT
check() {
	if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected: $2" "got:      $3"; fi
}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
# the consumer finds its database in the libpq environment, as a user runs
# it (in the background: started directly, so that $! is its pid)
consumer() { PGDATABASE=$db scripts/outbox-consumer "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

cleanup() {
	local p
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
	dropdb --if-exists --force "$db" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
dropdb --if-exists --force "$db" 2>/dev/null
createdb "$db"

# Six customers (ids 1 to 6 in a fresh database) and the messages of the
# first run, enqueued one statement after another (claim order = id order).
if q >"$work/setup.log" 2>&1 <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm_ext;
INSERT INTO crm.customer (name) SELECT 'outbox test ' || g FROM generate_series(1, 6) g;
SELECT crm.set_consent(4, 'push', 'marketing', true, 'app', now() - interval '1 day');
SELECT crm.set_consent(5, 'email', 'marketing', true, 'web', now() - interval '1 day');
SELECT crm.outbox_enqueue(1, 'sms', 'service', 'order_shipped', '{"order": 101}', 'test:1');
SELECT crm.outbox_enqueue(2, 'email', 'service', 'receipt', '{"order": 102, "total": 9.5}', 'test:2');
SELECT crm.outbox_enqueue(3, 'sms', 'marketing', 'promo', '{"offer": "10%"}', 'test:3');
SELECT crm.outbox_enqueue(4, 'push', 'marketing', 'promo', '{"offer": "10%"}', 'test:4');
SELECT crm.outbox_enqueue(5, 'email', 'marketing', 'promo', '{"offer": "10%"}', 'test:5');
SELECT crm.outbox_enqueue(6, 'sms', 'service', 'reminder', '{}', 'test:6', now() + interval '1 hour');
SELECT crm.outbox_enqueue(1, 'app_inbox', 'service', 'welcome', '{"text": "hi there"}', 'test:7');
-- customer 5 opts out after the enqueue: the claim must not hand it out
SELECT crm.set_consent(5, 'email', 'marketing', false, 'web');
SQL
then
	ok "database with six customers and seven messages"
else
	not_ok "database with six customers and seven messages" "$(tail -5 "$work/setup.log")"
fi

# --------------------------------------------------------------------------
# --once: what is due and allowed, exactly once
# --------------------------------------------------------------------------
rc=0
consumer --once --name t1 --batch 2 --out "$work/t1.out" 2>"$work/t1.err" || rc=$?
check "--once exits 0" "0" "$rc"
check "--once delivered the due messages consent allows, one line each, in claim order" \
	't1 #1 sms order_shipped customer=1 {"order": 101}
t1 #2 email receipt customer=2 {"order": 102, "total": 9.5}
t1 #4 push promo customer=4 {"offer": "10%"}
t1 #7 app_inbox welcome customer=1 {"text": "hi there"}' \
	"$(cut -d' ' -f2- "$work/t1.out" 2>&1)"
check "each line starts with the delivery time (UTC, ISO 8601)" "4" \
	"$(grep -cE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z ' "$work/t1.out")"
check "the messages delivered are acked (delivered, attempts 1, consumer t1); the others suppressed or not due" \
	"1 delivered 1 t1|2 delivered 1 t1|3 suppressed 0 no consent|4 delivered 1 t1|5 suppressed 0 consent revoked|6 pending 0|7 delivered 1 t1" \
	"$(q -c "SELECT string_agg(concat_ws(' ', message_id, status, attempts, consumer, suppressed_reason), '|' ORDER BY message_id) FROM crm.outbox" 2>&1)"
check "the summary on stderr counts them" "outbox-consumer t1: 4 delivered, 0 failed, 3 batches" "$(tail -1 "$work/t1.err")"
rc=0
consumer --once --name t1b --out "$work/t1.out" 2>"$work/t1b.err" || rc=$?
check "a second --once delivers nothing again" "0 4 outbox-consumer t1b: 0 delivered, 0 failed, 0 batches" \
	"$rc $(wc -l <"$work/t1.out") $(tail -1 "$work/t1b.err")"

# --------------------------------------------------------------------------
# --fail-every 2, on stdout
# --------------------------------------------------------------------------
q -c "UPDATE crm.outbox_settings SET retry_after = '1 hour'" \
  -c "SELECT count(crm.outbox_enqueue(g, 'sms', 'service', 'code', jsonb_build_object('code', 1000 + g), 'test:fail:' || g)) FROM generate_series(1, 4) g" \
	>"$work/fail.log" 2>&1 || not_ok "four more messages enqueued" "$(cat "$work/fail.log")"
rc=0
consumer --once --name t2 --fail-every 2 >"$work/t2.out" 2>"$work/t2.err" || rc=$?
check "--fail-every 2: exits 0, delivers every other message on stdout" \
	'0
t2 #8 sms code customer=1 {"code": 1001}
t2 #10 sms code customer=3 {"code": 1003}' \
	"$rc
$(cut -d' ' -f2- "$work/t2.out" 2>&1)"
check "--fail-every 2: the failed ones are pending for a retry, attempts 1, last_error set; the others delivered" \
	"8 delivered 1 -|9 pending 1 simulated failure (--fail-every 2)|10 delivered 1 -|11 pending 1 simulated failure (--fail-every 2)" \
	"$(q -c "SELECT string_agg(concat_ws(' ', message_id, status, attempts, COALESCE(last_error, '-')), '|' ORDER BY message_id)
	         FROM crm.outbox WHERE message_id BETWEEN 8 AND 11" 2>&1)"
check "--fail-every 2: the retry is due after retry_after, not before" "t" \
	"$(q -c "SELECT bool_and(due_at > now() + interval '50 minutes') FROM crm.outbox WHERE message_id IN (9, 11)" 2>&1)"
check "--fail-every 2: stderr names the failed messages and counts them" \
	"outbox-consumer: #9 not delivered (--fail-every 2): pending
outbox-consumer: #11 not delivered (--fail-every 2): pending
outbox-consumer t2: 2 delivered, 2 failed, 1 batches" "$(cat "$work/t2.err")"

# --------------------------------------------------------------------------
# A waiting consumer: NOTIFY, poll, signals
# --------------------------------------------------------------------------
# wait_idle NAME: until the consumer's connection is idle after a claim
# (it is waiting), at most 10 s
wait_idle() {
	local i
	for i in $(seq 100); do
		[ "$(q -c "SELECT count(*) FROM pg_stat_activity
		           WHERE application_name = 'outbox-consumer $1' AND state = 'idle' AND query LIKE '%outbox_claim%'")" = 1 ] \
			&& { sleep 0.2; return 0; }
		sleep 0.1
	done
	return 1
}
# wait_line FILE PATTERN SECONDS: until FILE has a line matching PATTERN
wait_line() {
	local i
	for i in $(seq $(($3 * 20))); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}
# stop PID SIGNAL: sends it, waits at most 5 s; sets got to "exit-status ms"
# (not in a command substitution: only this shell can wait for the PID)
stop() {
	local t0 i rc
	t0=$(now_ms)
	kill -"$2" "$1"
	for i in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
	if kill -0 "$1" 2>/dev/null; then got="still running"; return; fi
	rc=0
	wait "$1" || rc=$?
	got="$rc $(($(now_ms) - t0))"
}

PGDATABASE=$db scripts/outbox-consumer --name t3 --poll 60 --out "$work/t3.out" 2>"$work/t3.err" &
t3=$!
pids+=("$t3")
if wait_idle t3; then ok "a consumer with --poll 60 is waiting"; else not_ok "a consumer with --poll 60 is waiting" "$(cat "$work/t3.err")"; fi
t0=$(now_ms)
q -c "SELECT crm.outbox_enqueue(6, 'push', 'service', 'ready', '{\"order\": 106}', 'test:notify')" >/dev/null
if wait_line "$work/t3.out" ' t3 #12 push ready customer=6 {"order": 106}$' 10; then
	ms=$(($(now_ms) - t0))
	if [ "$ms" -lt 5000 ]; then
		ok "the NOTIFY of an enqueue woke it: delivered in $ms ms (poll 60 s)"
	else
		not_ok "the NOTIFY of an enqueue woke it" "delivered after $ms ms"
	fi
else
	not_ok "the NOTIFY of an enqueue woke it" "nothing delivered in 10 s" "$(cat "$work/t3.out" "$work/t3.err")"
fi
check "the message woken for is delivered" "delivered t3" \
	"$(q -c "SELECT status || ' ' || consumer FROM crm.outbox WHERE dedupe_key = 'test:notify'" 2>&1)"
wait_idle t3 >/dev/null
stop "$t3" TERM
if [ "${got%% *}" = 0 ] && [ "${got#* }" -lt 3000 ]; then
	ok "SIGTERM stops the waiting consumer at once, exit 0 ($got ms)"
else
	not_ok "SIGTERM stops the waiting consumer at once, exit 0" "exit status and ms: $got" "$(cat "$work/t3.err")"
fi
check "its summary" "outbox-consumer t3: 1 delivered, 0 failed, 1 batches" "$(tail -1 "$work/t3.err")"

# A message that becomes due later: its enqueue's NOTIFY comes before it is
# due, so only the poll finds it.
PGDATABASE=$db scripts/outbox-consumer --name t4 --poll 1 --out "$work/t4.out" 2>"$work/t4.err" &
t4=$!
pids+=("$t4")
if wait_idle t4; then ok "a consumer with --poll 1 is waiting"; else not_ok "a consumer with --poll 1 is waiting" "$(cat "$work/t4.err")"; fi
t0=$(now_ms)
q -c "SELECT crm.outbox_enqueue(2, 'sms', 'service', 'later', '{}', 'test:poll', clock_timestamp() + interval '2 seconds')" >/dev/null
if wait_line "$work/t4.out" ' t4 #13 sms later customer=2 {}$' 10; then
	ms=$(($(now_ms) - t0))
	if [ "$ms" -ge 1900 ] && [ "$ms" -lt 5000 ]; then
		ok "the poll found a message due 2 s after its enqueue: delivered after $ms ms"
	else
		not_ok "the poll found a message due 2 s after its enqueue" "delivered after $ms ms"
	fi
else
	not_ok "the poll found a message due 2 s after its enqueue" "nothing delivered in 10 s" "$(cat "$work/t4.out" "$work/t4.err")"
fi
stop "$t4" INT
if [ "${got%% *}" = 0 ] && [ "${got#* }" -lt 3000 ]; then
	ok "SIGINT stops the waiting consumer, exit 0 ($got ms)"
else
	not_ok "SIGINT stops the waiting consumer, exit 0" "exit status and ms: $got" "$(cat "$work/t4.err")"
fi
check "no consumer connection is left" "0" \
	"$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outbox-consumer %'" 2>&1)"
check "every message was delivered at most once: one line each over all the runs" "" \
	"$(cat "$work"/t*.out | awk '{ print $3 }' | sort | uniq -d | tr '\n' ' ')"

echo "1..$n"
