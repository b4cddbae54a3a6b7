#!/usr/bin/env bash
# test/citus/run.sh: the Citus suite.  scripts/test runs it after
# scripts/setup; it can also be run on its own the same way.
#
# Installs Citus (scripts/citus-install builds it from ../shared/citus/ or
# CITUS_SRC when it is not installed), starts a throwaway coordinator and two
# workers (citus_cluster_start in scripts/lib.sh) and runs every
# test/citus/*.sql pgTAP file on the coordinator, each in a fresh database
# of its own with crm_ext and pgTAP, printing pg_prove's TAP.  Where Citus
# cannot be had it prints "citus suite skipped: <why>" and exits 0.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
cd "$CRM_ROOT"

rc=0
"$CRM_ROOT/scripts/citus-install" || rc=$?
if [ "$rc" -eq 3 ]; then exit 0; fi
[ "$rc" -eq 0 ] || exit "$rc"

dir=$(cluster_dir citus)
trap 'citus_cluster_stop "$dir"' EXIT
trap 'exit 130' INT TERM
citus_cluster_start "$dir"
echo "citus: coordinator and workers $CITUS_WORKERS up"

# A database per file, with Citus on every node, and crm_ext and pgTAP
# created on the coordinator (Citus creates them on the workers).
for t in test/citus/*.sql; do
	db=crm_citus_$(basename "$t" .sql)
	citus_database "$db"
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION pgtap; CREATE EXTENSION crm_ext" >/dev/null
	pg_prove --verbose --ext .sql -d "$db" "$t" || true
done
