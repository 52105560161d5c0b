# A throwaway PostgreSQL cluster for the tests, sourced by .ci/run (and
# usable by itself: `source .ci/postgres.sh && pg_cluster_start`).
#
# pg_cluster_start creates a cluster as the `postgres` user in a fresh
# mktemp -d directory (no system service, no /etc/postgresql cluster),
# listening on 127.0.0.1 on a free port with trust authentication, starts it,
# exports POSTERN_TEST_POSTGRES_DSN and installs an EXIT trap that stops the
# cluster and removes the directory on every exit path (success, failure,
# Ctrl-C, SIGTERM). pg_cluster_stop does the same by hand and is idempotent.
#
# Needs Debian's `postgresql` package; its binaries live in
# /usr/lib/postgresql/VERSION/bin, which is not on PATH.

pg_cluster_dir=""
pg_cluster_bin=""

# pg_as_postgres runs a command as the postgres user (root: runuser; else sudo).
pg_as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		sudo -u postgres -- "$@"
	fi
}

# pg_as_root runs a command as root (directly when root, else with sudo).
pg_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	else
		sudo -- "$@"
	fi
}

# pg_port_free reports whether nothing accepts connections on 127.0.0.1:$1.
pg_port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_cluster_stop() {
	local dir="$pg_cluster_dir"
	[ -n "$dir" ] || return 0
	pg_cluster_dir=""
	if [ -f "$dir/data/postmaster.pid" ]; then
		echo "==> stopping the PostgreSQL test cluster in $dir"
		pg_as_postgres "$pg_cluster_bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 ||
			echo "ci: pg_ctl stop failed in $dir" >&2
	fi
	pg_as_root rm -rf -- "$dir"
}

pg_cluster_start() {
	local bindir
	bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
	if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
		echo "ci: no PostgreSQL binaries in /usr/lib/postgresql/*/bin (install Debian's postgresql)" >&2
		return 1
	fi
	if ! id postgres >/dev/null 2>&1; then
		echo "ci: no postgres user (Debian's postgresql package creates it)" >&2
		return 1
	fi
	pg_cluster_bin="$bindir"
	pg_cluster_dir="$(mktemp -d "${TMPDIR:-/tmp}/postern-pg.XXXXXX")"
	# Bash runs the EXIT trap on exit and, with these, on INT and TERM too.
	trap pg_cluster_stop EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	pg_as_root chown postgres: "$pg_cluster_dir"
	chmod 0755 "$pg_cluster_dir" 2>/dev/null || pg_as_root chmod 0755 "$pg_cluster_dir"

	echo "==> initdb in $pg_cluster_dir ($bindir)"
	if ! pg_as_postgres "$bindir/initdb" -D "$pg_cluster_dir/data" -U postgres \
		--auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$pg_cluster_dir/initdb.log" 2>&1; then
		cat "$pg_cluster_dir/initdb.log" >&2
		echo "ci: initdb failed" >&2
		return 1
	fi

	# A port that is free now may be taken before the server binds it: try a
	# few random ones.
	local try port
	for try in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 40000))
		pg_port_free "$port" || continue
		if pg_as_postgres "$bindir/pg_ctl" -D "$pg_cluster_dir/data" \
			-l "$pg_cluster_dir/server.log" -w -t 60 \
			-o "-p $port -k $pg_cluster_dir -c listen_addresses=127.0.0.1 -c max_connections=200" \
			start >/dev/null; then
			export POSTERN_TEST_POSTGRES_DSN="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
			echo "==> PostgreSQL test cluster on 127.0.0.1:$port: POSTERN_TEST_POSTGRES_DSN=$POSTERN_TEST_POSTGRES_DSN"
			return 0
		fi
		echo "ci: pg_ctl start on port $port failed (try $try):" >&2
		tail -n 20 "$pg_cluster_dir/server.log" >&2 || true
	done
	echo "ci: could not start the PostgreSQL test cluster" >&2
	return 1
}
