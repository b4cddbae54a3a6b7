#!/usr/bin/env bash
# test/shell/restore.sh: a database with crm_ext and busy sample data (stitching,
# manual merge and unmerge, redemptions, full and partial refunds, RFM, CLV,
# rows added to configuration tables) dumped and restored with the commands
# README.md documents ("Backup and restore"), must come back exactly: every
# table and sequence of schema crm, listed from pg_catalog so a new one is
# covered without touching this file.  Then the triggers must work on the
# restored database as on the original.
#
# Runs against the server the PG* variables point at (scripts/test's throwaway
# cluster), as a superuser; prints TAP.
set -uo pipefail

src=crm_restore_src
dst=crm_restore_dst
txt=crm_restore_txt
probe=crm_restore_probe
work=$(mktemp -d "${TMPDIR:-/tmp}/crm_ext.restore.XXXXXX")
unset PGOPTIONS PGDATABASE

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
q() { local db=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }

cleanup() {
	for db in $src $dst $txt; do dropdb --if-exists "$db" 2>/dev/null; done
	psql -X -q -d postgres -c "DROP ROLE IF EXISTS $probe" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work"

# --------------------------------------------------------------------------
# The busy source database
# --------------------------------------------------------------------------
createdb "$src"
if q "$src" >"$work/build.log" 2>&1 <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION crm_ext;
-- the sample's story happens before 2026-07-01: redemptions count lots as
-- expired by that clock, not the wall clock's
SET crm.loyalty_now = '2026-07-01 00:00+00';
-- user functions that configuration rows name (restored before the data)
CREATE FUNCTION public.restore_test_task(at timestamptz) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';
CREATE FUNCTION public.restore_test_hook(a bigint, b bigint) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT count(*) FROM crm.generate_sample(2000);
-- rows users add to configuration tables (dumped: WHERE NOT builtin)
INSERT INTO crm.identity_kind (kind, strength, max_customers, single_valued, description)
	VALUES ('loyalty_card', 'strong', 1, true, 'Plastic card');
INSERT INTO crm.event_kind (kind, description) VALUES ('wishlist', 'Added to a wish list');
INSERT INTO crm.identity_blocklist (kind, value, reason) VALUES ('phone', '99999999999', 'junk');
INSERT INTO crm.tier (tier, rank, threshold, multiplier) VALUES ('diamond', 5, 50000, 2.5);
INSERT INTO crm.earn_rule (rule, priority, valid_from, points_per_unit) VALUES ('winter', 10, '2026-11-01 00:00+00', 3);
INSERT INTO crm.tag (name, rule) VALUES ('big_basket', 'spend_365d >= 3000');
INSERT INTO crm.tag (name, kind) VALUES ('vip', 'manual');
INSERT INTO crm.segment (name, expression) VALUES ('big_fresh', 'big_basket and fresh_lover');
INSERT INTO crm.segment_setting (key, value, description) VALUES ('restore_test', '1', 'a user setting');
INSERT INTO crm.rfm_segment_map (priority, segment, r_min, r_max) VALUES (5, 'Brand new', 5, 5);
INSERT INTO crm.tick_task (task, run_order, fn) VALUES ('restore_test', 900, 'public.restore_test_task(timestamptz)');
INSERT INTO crm.customer_hook (event, hook, run_order, fn)
	VALUES ('merge', 'restore_test', 900, 'public.restore_test_hook(bigint, bigint)');
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('loyalty_card', 'LC-1', 11);
INSERT INTO crm.event (customer_id, kind, at, channel) VALUES (12, 'wishlist', '2026-06-30 10:00+00', 'app');
-- coupons: a template, coupons issued, one reserved, one redeemed
INSERT INTO crm.coupon_template (name, kind, amount_off, valid_days, per_customer_limit) VALUES ('restore five', 'amount_off', 5.00, 60, 2);
SELECT crm.issue_coupons(1, ARRAY(SELECT generate_series(1, 40)::bigint), crm.sample_as_of());
SELECT crm.reserve_coupon(c.code, c.customer_id, 'restore-r', '1 day', crm.sample_as_of())
FROM crm.coupon c ORDER BY c.coupon_id LIMIT 1;
SELECT crm.redeem_coupon(c.code, c.customer_id, o.order_id, crm.sample_as_of())
FROM crm.coupon c JOIN LATERAL (SELECT o.order_id FROM crm.orders o WHERE o.customer_id = c.customer_id AND o.status = 'paid'
                                ORDER BY o.order_id DESC LIMIT 1) o ON true
WHERE c.status = 'issued' ORDER BY c.coupon_id LIMIT 1;
-- identity, loyalty, segmentation and prediction at work
SELECT * FROM crm.stitch_identities();
SELECT count(crm.redeem_points(a.customer_id, 10, 'restore-test-' || a.customer_id, crm.sample_as_of()))
FROM (SELECT customer_id FROM crm.loyalty_account
      WHERE crm.points_balance(customer_id, crm.sample_as_of()) >= 10 ORDER BY customer_id LIMIT 50) a;
UPDATE crm.orders SET status = 'refunded'
WHERE order_id IN (SELECT order_id FROM crm.orders WHERE status = 'paid' ORDER BY order_id LIMIT 30);
UPDATE crm.orders SET refunded_amount = round(amount / 3, 2)
WHERE order_id IN (SELECT order_id FROM crm.orders WHERE status = 'paid' AND amount > 10 ORDER BY order_id DESC LIMIT 30);
SELECT crm.adjust_points(crm.golden_customer(21), 500, 'goodwill', 'restore-test-adjust', crm.sample_as_of());
SELECT crm.tag_customer(crm.golden_customer(22), 'vip', crm.sample_as_of());
-- two manual merges of golden customers who bought; the second one undone
SELECT crm.merge_customers(g[1], g[2], 'restore test') FROM (
	SELECT array_agg(customer_id ORDER BY customer_id) g FROM (
		SELECT customer_id FROM crm.customer c WHERE merged_into IS NULL
		  AND EXISTS (SELECT FROM crm.orders o WHERE o.customer_id = c.customer_id)
		ORDER BY customer_id LIMIT 2 OFFSET 100) s) x;
SELECT crm.merge_customers(g[1], g[2], 'restore test, undone') FROM (
	SELECT array_agg(customer_id ORDER BY customer_id) g FROM (
		SELECT customer_id FROM crm.customer c WHERE merged_into IS NULL
		  AND EXISTS (SELECT FROM crm.orders o WHERE o.customer_id = c.customer_id)
		ORDER BY customer_id LIMIT 2 OFFSET 200) s) x;
SELECT crm.unmerge(max(merge_id)) FROM crm.merge_log;
SELECT count(*) FROM crm.tick(crm.sample_as_of());
SELECT crm.refresh_rfm(crm.sample_as_of());
SELECT crm.clv_fit('bgnbd', crm.sample_as_of()) IS NOT NULL, crm.clv_fit('gammagamma', crm.sample_as_of()) IS NOT NULL;
SELECT crm.refresh_associations();
SQL
then
	ok "source database built"
else
	not_ok "source database built" "$(tail -5 "$work/build.log")"
fi
check "the source has what a restore must keep: stitched and manual merges, an unmerge, redemptions, full and partial refunds, user configuration rows" \
	"t" "$(q "$src" -c "SELECT (SELECT count(*) FROM crm.merge_log WHERE source = 'batch') > 100
	  AND (SELECT count(*) FROM crm.merge_log WHERE source = 'manual' AND undone_at IS NULL) = 1
	  AND (SELECT count(*) FROM crm.merge_log WHERE undone_at IS NOT NULL) = 1
	  AND (SELECT count(*) FROM crm.points_journal WHERE kind = 'spend') >= 50
	  AND (SELECT count(*) FROM crm.points_journal WHERE kind = 'clawback') > 0
	  AND (SELECT count(*) FROM crm.orders WHERE status = 'refunded') > 30
	  AND (SELECT count(*) FROM crm.orders WHERE status = 'paid' AND refunded_amount > 0) >= 30
	  AND (SELECT count(*) FROM crm.tag WHERE NOT builtin) = 2
	  AND (SELECT count(*) FROM crm.clv_model) = 2
	  AND (SELECT count(*) FROM crm.customer_rfm) > 0" 2>&1)"
check "every table and sequence of schema crm is registered with pg_extension_config_dump" "" \
	"$(q "$src" -c "SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text)
	  FROM pg_catalog.pg_class c
	  WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p', 'S')
	    AND c.oid <> ALL ((SELECT extconfig FROM pg_catalog.pg_extension WHERE extname = 'crm_ext')::oid[])" 2>&1)"

# --------------------------------------------------------------------------
# Dump and restore exactly as README.md says
# --------------------------------------------------------------------------
if pg_dump -Fc -d "$src" -f "$work/crm.dump" 2>"$work/dump.log"; then
	ok "pg_dump -Fc"
else
	not_ok "pg_dump -Fc" "$(cat "$work/dump.log")"
fi
createdb "$dst"
start=$(date +%s%N)
if PGOPTIONS='-c session_replication_role=replica' pg_restore -d "$dst" "$work/crm.dump" >"$work/restore.log" 2>&1 \
	&& ! [ -s "$work/restore.log" ]; then
	ok "pg_restore with session_replication_role = replica: no error"
else
	not_ok "pg_restore with session_replication_role = replica: no error" "$(grep -v '^CONTEXT\|^LINE\|^ *\^' "$work/restore.log" | cut -c1-200 | head -20)"
fi
echo "# restore took $((($(date +%s%N) - start) / 1000000)) ms"

# One line per table (rows, MD5 of the rows in text order) and sequence
# (last_value, is_called) of schema crm.
fingerprint() {
	q "$1" <<'SQL'
SELECT pg_catalog.format('SELECT %L || '' '' || pg_catalog.count(*) || '' rows, md5 '' || '
	'coalesce(pg_catalog.md5(pg_catalog.string_agg(t::text, '','' ORDER BY t::text)), ''-'') FROM %s t',
	c.oid::regclass::text, c.oid::regclass)
FROM pg_catalog.pg_class c WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
UNION ALL
SELECT pg_catalog.format('SELECT %L || '' last_value '' || last_value || '', is_called '' || is_called FROM %s',
	c.oid::regclass::text, c.oid::regclass)
FROM pg_catalog.pg_class c WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind = 'S'
ORDER BY 1 \gexec
SQL
}
fingerprint "$src" >"$work/src.fp" 2>&1 || not_ok "fingerprint of the source" "$(cat "$work/src.fp")"
fingerprint "$dst" >"$work/dst.fp" 2>&1 || not_ok "fingerprint of the restored database" "$(cat "$work/dst.fp")"
while read -r rel rest; do
	got=$(awk -v r="$rel" '$1 == r' "$work/dst.fp")
	check "restored $rel: same ${rest%%,*}" "$rel $rest" "${got:-(missing)}"
done < <(grep '^crm\.' "$work/src.fp")

check "crm.verify_ledgers() is empty on the source" "0" "$(q "$src" -c "SELECT count(*) FROM crm.verify_ledgers()" 2>&1)"
check "crm.verify_ledgers() is empty on the restored database" "0" "$(q "$dst" -c "SELECT count(*) FROM crm.verify_ledgers()" 2>&1)"

# --------------------------------------------------------------------------
# The restored database works like the original
# --------------------------------------------------------------------------
# An order on a record merged by hand (it goes to the golden customer), with a
# baby line (category bonus), in the window of the user's earn rule; then an
# identity that links two golden customers (online stitching).
after_restore() {
	q "$1" <<'SQL'
SET client_min_messages = warning;
-- the probe order is dated 2026-12-01, in the user's winter earn rule: allow
-- it however soon after the wall clock this runs
SET crm.max_future = '1 year';
CREATE TEMP TABLE probe AS
	SELECT merged AS record, survivor AS golden, crm.points_balance(survivor, '2026-12-02 00:00+00') AS before
	FROM crm.merge_log WHERE source = 'manual' AND undone_at IS NULL;
WITH o AS (
	INSERT INTO crm.orders (customer_id, channel, store_id, ordered_at, amount, external_ref)
	SELECT record, 'pos', 3, '2026-12-01 12:00+00', 123.45, 'RESTORE-TEST-1' FROM probe
	RETURNING order_id)
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount)
	SELECT order_id, 1, 'BAB-0001', 'baby', 1, 123.45 FROM o;
CREATE TEMP TABLE pair AS
	SELECT c.customer_id FROM crm.customer c
	WHERE c.merged_into IS NULL AND NOT EXISTS (
		SELECT FROM crm.customer r JOIN crm.identity i ON i.customer_id = r.customer_id
		WHERE (r.customer_id = c.customer_id OR r.merged_into = c.customer_id) AND i.kind = 'member_no')
	ORDER BY c.customer_id LIMIT 2 OFFSET 300;
INSERT INTO crm.identity (kind, value, customer_id)
	SELECT 'email', 'restore-test@example.org', customer_id FROM pair ORDER BY customer_id;
SELECT pg_catalog.format('golden %s: balance %s -> %s; journal %s; stats orders %s spend %s; tags %s; stitched %s; merges %s',
	p.golden, p.before, crm.points_balance(p.golden, '2026-12-02 00:00+00'),
	(SELECT pg_catalog.string_agg(j.kind || ' ' || j.points, ', ' ORDER BY j.journal_id)
	 FROM crm.points_journal j WHERE j.customer_id = p.golden AND j.at >= '2026-12-01'),
	s.orders, s.spend,
	(SELECT pg_catalog.string_agg(t.name, ' ' ORDER BY t.name) FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id)
	 WHERE ct.customer_id = p.golden),
	(SELECT pg_catalog.string_agg(customer_id || ' -> ' || crm.golden_customer(customer_id), ', ' ORDER BY customer_id) FROM pair),
	(SELECT pg_catalog.count(*) FROM crm.merge_log))
FROM probe p LEFT JOIN crm.customer_stats s ON s.customer_id = p.golden;
SQL
}
a=$(after_restore "$src" 2>&1)
b=$(after_restore "$dst" 2>&1)
check "an order, its lines and an identity inserted after the restore: same points, stats, tags and stitching as on the source" "$a" "$b"
before=$(echo "$a" | sed -n 's/.*balance \([0-9]*\) -> \([0-9]*\);.*/\1 \2/p')
if [ -n "$before" ] && [ "${before% *}" -lt "${before#* }" ]; then
	ok "the order earned points on the restored database ($b)"
else
	not_ok "the order earned points on the restored database" "$b"
fi
check "crm.verify_ledgers() is empty on the restored database after the order" "0" \
	"$(q "$dst" -c "SELECT count(*) FROM crm.verify_ledgers()" 2>&1)"

# --------------------------------------------------------------------------
# Plain-text dump through psql, and who may switch the triggers off
# --------------------------------------------------------------------------
createdb "$txt"
if pg_dump -d "$src" 2>/dev/null | PGOPTIONS='-c session_replication_role=replica' \
	psql -X -q -v ON_ERROR_STOP=1 -d "$txt" >"$work/txt.log" 2>&1; then
	ok "plain-text pg_dump | psql with session_replication_role = replica: no error"
else
	not_ok "plain-text pg_dump | psql with session_replication_role = replica: no error" "$(head -5 "$work/txt.log")"
fi
# The source as it is now (with the probe's rows) against its plain-text copy.
fingerprint "$src" >"$work/src2.fp" 2>&1
fingerprint "$txt" >"$work/txt.fp" 2>&1
check "plain-text restore: every table and sequence of crm as on the source (relations that differ listed)" "" \
	"$(diff "$work/src2.fp" "$work/txt.fp" | sed -n 's/^> \([^ ]*\) .*/\1/p' | tr '\n' ' ')"

psql -X -q -d postgres -c "CREATE ROLE $probe" >/dev/null
got=$(psql -X -q -At -d "$dst" -c "SET ROLE $probe" -c "SET session_replication_role = replica" 2>&1)
check "a role without superuser cannot switch the triggers off" \
	'ERROR:  permission denied to set parameter "session_replication_role"' "$got"

echo "1..$n"
