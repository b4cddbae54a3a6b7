#!/usr/bin/env bash
# test/shell/upgrade.sh: every released version of crm_ext, installed and
# brought to the current one with ALTER EXTENSION crm_ext UPDATE, must be the
# same as a fresh install of the current version: the catalog (functions
# with their bodies and settings, tables, columns, constraints, indexes,
# triggers, policies, types, operators, privileges, comments, what pg_dump
# keeps; test/shell/catalog.sql) and the rows the install script ships.  And
# a database that holds data when it is updated keeps working: its ledgers
# stay exact and new orders earn points.
#
# Runs against the server the PG* variables point at, as a superuser; prints TAP.
set -uo pipefail
cd "$(dirname "$0")/../.."

fresh=crm_upgrade_fresh
updated=crm_upgrade_updated
busy=crm_upgrade_busy
work=$(mktemp -d "${TMPDIR:-/tmp}/crm_ext.upgrade.XXXXXX")
unset PGOPTIONS PGDATABASE
current=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" crm_ext.control)
# Released versions: the frozen scripts src/updates/crm_ext--X.sql.
releases=$(ls src/updates/ | sed -n 's/^crm_ext--\([0-9.]*\)\.sql$/\1/p' | sort -V)

n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
	n=$((n + 1)); echo "not ok $n - $1"
	shift; for line in "$@"; do printf '%s\n' "$line"; done | sed 's/^/#   /'
}
q() { local db=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }

cleanup() {
	for db in $fresh $updated $busy; do dropdb --if-exists "$db" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work"

# Each table's rows, as order- and column-position-independent digests.
table_rows() {
	q "$1" <<'SQL'
DO $$
DECLARE
	t regclass;
BEGIN
	CREATE TEMP TABLE digest (tbl text, rows bigint, md5 text);
	FOR t IN SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'r' ORDER BY 1 LOOP
		EXECUTE format('INSERT INTO digest SELECT %L, count(*), md5(coalesce(string_agg(j, %L ORDER BY j), %L))
		                FROM (SELECT to_jsonb(x)::text AS j FROM %s x) s', t::text, ',', '', t);
	END LOOP;
END
$$;
SELECT tbl || ' ' || rows || ' ' || md5 FROM digest ORDER BY 1;
SQL
}

createdb "$fresh"
if q "$fresh" -c "SET client_min_messages = warning" -c "CREATE EXTENSION crm_ext" >"$work/fresh.log" 2>&1; then
	ok "fresh install of $current"
else
	not_ok "fresh install of $current" "$(cat "$work/fresh.log")"
fi
q "$fresh" -f test/shell/catalog.sql >"$work/fresh.catalog" 2>&1 || echo "catalog query failed" >>"$work/fresh.catalog"
table_rows "$fresh" >"$work/fresh.rows" 2>&1 || echo "row digest failed" >>"$work/fresh.rows"
# The listing itself must work: every function, table and member is in it.
if grep -q '^function crm.generate_sample' "$work/fresh.catalog" && grep -q '^member table crm.orders' "$work/fresh.catalog" \
	&& ! grep -q '^catalog query failed\|^row digest failed\|^psql:.*ERROR' "$work/fresh.catalog" "$work/fresh.rows"; then
	ok "catalog listing of a fresh $current ($(wc -l <"$work/fresh.catalog") lines, $(wc -l <"$work/fresh.rows") tables)"
else
	not_ok "catalog listing of a fresh $current" "$(head -5 "$work/fresh.catalog")" "$(head -5 "$work/fresh.rows")"
fi

for from in $releases; do
	[ "$from" = "$current" ] && continue
	dropdb --if-exists "$updated" 2>/dev/null
	createdb "$updated"
	if ! q "$updated" -c "SET client_min_messages = warning" -c "CREATE EXTENSION crm_ext VERSION '$from'" \
		-c "ALTER EXTENSION crm_ext UPDATE" >"$work/update.log" 2>&1; then
		not_ok "$from updates to $current" "$(cat "$work/update.log")"
		continue
	fi
	ok "$from updates to $current"
	got=$(q "$updated" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'crm_ext'")
	if [ "$got" = "$current" ]; then ok "$from updated reports version $current"; else not_ok "$from updated reports version $current" "got $got"; fi
	q "$updated" -f test/shell/catalog.sql >"$work/updated.catalog" 2>&1 || echo "catalog query failed" >>"$work/updated.catalog"
	if diff "$work/fresh.catalog" "$work/updated.catalog" >"$work/catalog.diff"; then
		ok "$from updated has the catalog of a fresh $current"
	else
		not_ok "$from updated has the catalog of a fresh $current (< fresh, > updated)" "$(head -60 "$work/catalog.diff")"
	fi
	table_rows "$updated" >"$work/updated.rows" 2>&1 || echo "row digest failed" >>"$work/updated.rows"
	if diff "$work/fresh.rows" "$work/updated.rows" >"$work/rows.diff"; then
		ok "$from updated holds the rows of a fresh $current"
	else
		not_ok "$from updated holds the rows of a fresh $current (< fresh, > updated)" "$(cat "$work/rows.diff")"
	fi

	# A busy database: sample data, stitching and redemptions before the
	# update; the same work after it, on the updated objects.
	dropdb --if-exists "$busy" 2>/dev/null
	createdb "$busy"
	if q "$busy" >"$work/busy.log" 2>&1 <<SQL
SET client_min_messages = warning;
CREATE EXTENSION crm_ext VERSION '$from';
SELECT count(*) FROM crm.generate_sample(300, 3);
SELECT count(*) FROM crm.stitch_identities();
SELECT crm.redeem_points(a.customer_id, 10, 'before-update-' || a.customer_id, crm.sample_as_of())
FROM crm.loyalty_account a WHERE crm.points_balance(a.customer_id, crm.sample_as_of()) >= 10 ORDER BY 1 LIMIT 5;
ALTER EXTENSION crm_ext UPDATE;
-- the sample's story happens before 2026-07-01: redemptions count lots as
-- expired by that clock, not the wall clock's
SET crm.loyalty_now = '2026-07-01 00:00+00';
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount)
SELECT c.customer_id, 'web', crm.sample_as_of() - interval '1 day', 100.00
FROM crm.customer c WHERE c.merged_into IS NULL ORDER BY 1 LIMIT 5;
SELECT crm.redeem_points(a.customer_id, 10, 'after-update-' || a.customer_id, crm.sample_as_of())
FROM crm.loyalty_account a WHERE crm.points_balance(a.customer_id, crm.sample_as_of()) >= 10 ORDER BY 1 LIMIT 5;
SELECT count(*) FROM crm.stitch_identities();
SELECT crm.refresh_rfm(crm.sample_as_of());
SQL
	then
		ok "$from with data updates to $current and keeps working"
		bad=$(q "$busy" -c "SELECT count(*) FROM crm.verify_ledgers()")
		if [ "$bad" = 0 ]; then ok "$from with data: ledgers exact after the update"; else not_ok "$from with data: ledgers exact after the update" "verify_ledgers: $bad rows"; fi
	else
		not_ok "$from with data updates to $current and keeps working" "$(tail -20 "$work/busy.log")"
	fi
done
echo "1..$n"
