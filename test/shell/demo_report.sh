#!/usr/bin/env bash
# test/shell/demo_report.sh: the demo's report (scripts/report/*.sql, what
# scripts/demo prints) runs on a small sample as the demo prepares it:
# crm.generate_sample, crm.generate_sample_activity, crm.tick at the sample's
# end.  Each section must run to its end without an ERROR and print its
# heading; a report that stops halfway is a broken demo.
#
# Runs against the server the PG* variables point at (scripts/test's throwaway
# cluster), as a superuser; prints TAP.
set -uo pipefail
db=crm_demo_report
root=$(cd "$(dirname "$0")/../.." && pwd)
unset PGOPTIONS PGDATABASE
work=$(mktemp -d "${TMPDIR:-/tmp}/crm_ext.demo_report.XXXXXX")
cleanup() { dropdb --if-exists "$db" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work"

n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
	n=$((n + 1)); echo "not ok $n - $1"
	shift; for line in "$@"; do printf '%s\n' "$line"; done | sed 's/^/#   /'
}

createdb "$db"
if psql -X -q -v ON_ERROR_STOP=1 -d "$db" >"$work/prepare.log" 2>&1 <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm_ext;
SELECT count(*) FROM crm.generate_sample(600, 1);
SELECT count(*) FROM crm.generate_sample_activity(1);
SELECT count(*) FROM crm.tick(crm.sample_as_of());
SQL
then ok "the demo's preparation: sample, activity, tick"
else not_ok "the demo's preparation: sample, activity, tick" "$(tail -5 "$work/prepare.log")"
fi

for report in "$root"/scripts/report/*.sql; do
	name=$(basename "$report")
	if PGDATABASE=$db psql -X -q -v ON_ERROR_STOP=1 -P footer=off -f "$report" >"$work/$name.out" 2>&1; then
		if grep -q '^== ' "$work/$name.out"; then
			ok "report $name runs to its end"
		else
			not_ok "report $name runs to its end" "no section heading (== ...) printed"
		fi
	else
		not_ok "report $name runs to its end" "$(grep -m3 -A2 'ERROR' "$work/$name.out")"
	fi
done
echo "1..$n"
