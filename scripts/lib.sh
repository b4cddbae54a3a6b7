# scripts/lib.sh: helpers shared by scripts/setup, scripts/demo, scripts/test
# and bench/run.  Source it; do not run it.
#
# A throwaway cluster lives in a private temporary directory and listens only
# on a Unix socket there, so it never collides with another server's port.

set -euo pipefail

CRM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
# CRM_PGBIN points at another PostgreSQL 15 installation's bin directory,
# e.g. a private copy made by scripts/private-pg so that parallel work trees
# do not install over each other.
PGBIN=${CRM_PGBIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
export PATH="$PGBIN:$PATH"

# Run a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run a command that writes into the PostgreSQL installation: as ourselves
# when we may write there (a private copy), else as root.
as_installer() {
	if [ -w "$("$PGBIN/pg_config" --pkglibdir)" ]; then "$@"; else as_root "$@"; fi
}

# PostgreSQL refuses to run as root; root runs the cluster as "postgres".
if [ "$(id -u)" -eq 0 ]; then CLUSTER_USER=postgres; else CLUSTER_USER=$(id -un); fi
as_cluster_user() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# cluster_start DIR [extra postgresql.conf lines...]
# Creates and starts a cluster in DIR; exports PGHOST/PGPORT/PGUSER for it.
cluster_start() {
	local dir=$1; shift
	mkdir -p "$dir"
	if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
	as_cluster_user "$PGBIN/initdb" -D "$dir/data" -U "$CLUSTER_USER" -A trust \
		--encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
		|| { cat "$dir/initdb.log"; return 1; }
	{
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$dir'"
		echo "port = 5432"
		echo "fsync = off"
		echo "max_prepared_transactions = 10"
		for line in "$@"; do echo "$line"; done
	} | as_cluster_user tee -a "$dir/data/postgresql.conf" >/dev/null
	# CLUSTER_POSTGRES: another program to start as the server (a valgrind wrapper).
	as_cluster_user "$PGBIN/pg_ctl" ${CLUSTER_POSTGRES:+-p "$CLUSTER_POSTGRES"} \
		-D "$dir/data" -l "$dir/server.log" -w -t 300 start >/dev/null \
		|| { cat "$dir/server.log"; return 1; }
	export PGHOST=$dir PGPORT=5432 PGUSER=$CLUSTER_USER PGDATABASE=postgres
}

# cluster_stop DIR: stops the cluster (if running) and removes DIR.
cluster_stop() {
	local dir=$1
	if [ -f "$dir/data/postmaster.pid" ]; then
		as_cluster_user "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$dir"
}

# A fresh private directory for a cluster, readable by the cluster user.
cluster_dir() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/crm_ext.$1.XXXXXX")
	chmod 755 "$dir"
	echo "$dir"
}

# citus_cluster_start DIR [extra postgresql.conf lines...]
# A throwaway Citus cluster: a coordinator and two workers, each a cluster
# of cluster_start's kind in DIR/coord, DIR/worker1, DIR/worker2 (its own
# Unix socket directory, so all three use port 5432), with Citus loaded and
# database postgres set up by citus_database.  Exports PGHOST/PGPORT/PGUSER
# for the coordinator and CITUS_WORKERS (the workers' socket directories).
citus_cluster_start() {
	local dir=$1; shift
	local node
	mkdir -p "$dir"
	CITUS_WORKERS="$dir/worker1 $dir/worker2"
	for node in $CITUS_WORKERS "$dir/coord"; do
		cluster_start "$node" "shared_preload_libraries = 'citus'" "max_connections = 200" "$@"
	done
	export CITUS_WORKERS
	citus_database postgres
}

# citus_database DB: makes DB a Citus database on the running cluster:
# creates it on every node unless it exists (Citus does not propagate
# CREATE DATABASE), creates Citus in it on every node, registers the
# coordinator (reference tables need it) and adds the workers.
citus_database() {
	local db=$1 node
	# (Without the notice that Citus does not propagate CREATE DATABASE.)
	for node in $CITUS_WORKERS "$PGHOST"; do
		if [ "$db" != postgres ]; then
			PGOPTIONS="-c client_min_messages=warning" \
				psql -X -q -v ON_ERROR_STOP=1 -h "$node" -d postgres -c "CREATE DATABASE $db" >/dev/null
		fi
		psql -X -q -v ON_ERROR_STOP=1 -h "$node" -d "$db" -c "CREATE EXTENSION citus" >/dev/null
	done
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "SELECT citus_set_coordinator_host('$PGHOST', 5432)" >/dev/null
	for node in $CITUS_WORKERS; do
		psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "SELECT citus_add_node('$node', 5432)" >/dev/null
	done
}

# citus_cluster_stop DIR: stops the three nodes and removes DIR.
citus_cluster_stop() {
	local dir=$1 node
	for node in "$dir/coord" "$dir/worker1" "$dir/worker2"; do cluster_stop "$node"; done
	rm -rf "$dir"
}
