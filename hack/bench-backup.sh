#!/usr/bin/env bash
# Benchmark of the backup agent on PostgreSQL: a pgbench database of
# BENCH_SCALE (default 70, about 1 GiB on disk) on a throwaway server, then
#   servicedb agent backup  → a directory
#   servicedb agent backup  → versitygw (S3, hack/s3/build.sh)
#   servicedb agent restore ← the directory, into a new database
#   pg_dump -Fc | zstd > file   (the baseline: the tools alone)
#   zstd -d | pg_restore        (the baseline's restore)
# Each is run BENCH_RUNS times (default 3, taking turns) and the median is
# printed: seconds, MB/s of database size and compression ratios, then the
# agent's backup and restore throughput as a ratio to the baseline's.
# Usage (as root): hack/bench-backup.sh [path/to/servicedb]
#   BENCH_SCALE=5 hack/bench-backup.sh target/release/servicedb   # a quick run
# Use a release build: a debug build's zstd and SHA-256 are several times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/servicedb}")
SCALE=${BENCH_SCALE:-70}
[ -x "$BIN" ] || { echo "no servicedb binary at $BIN (cargo build --release)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (the server runs as the postgres user)" >&2; exit 1; }
command -v zstd >/dev/null || { echo "zstd is required (apt-get install zstd)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
VGW=$(hack/s3/build.sh)

tmp=$(mktemp -d /tmp/sdbbench.XXXXXX)
chown postgres: "$tmp"
pg_pid=""; vgw_pid=""
cleanup() {
  [ -n "$vgw_pid" ] && kill "$vgw_pid" 2>/dev/null || true
  # The postmaster itself (runuser, whose pid $! is, does not pass signals on).
  [ -f "$tmp/data/postmaster.pid" ] && kill -INT "$(head -1 "$tmp/data/postmaster.pid")" 2>/dev/null || true
  [ -n "$pg_pid" ] && wait "$pg_pid" 2>/dev/null || true
  rm -rf "$tmp" || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

pg_port=$(free_port)
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
echo "$password" >"$tmp/pwfile"; chown postgres: "$tmp/pwfile"
runuser -u postgres -- "$PGBIN/initdb" -D "$tmp/data" -U bench --auth=scram-sha-256 --pwfile="$tmp/pwfile" --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/postgres" -D "$tmp/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$tmp" -c fsync=off -c max_wal_size=4GB >"$tmp/postgres.log" 2>&1 &
pg_pid=$!
until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; do sleep 0.2; done
export PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=bench PGPASSWORD=$password

s3_port=$(free_port)
mkdir -p "$tmp/s3/bench"
ROOT_ACCESS_KEY_ID=benchkey ROOT_SECRET_ACCESS_KEY=benchsecret "$VGW" --port "127.0.0.1:$s3_port" --quiet posix "$tmp/s3" >"$tmp/versitygw.log" 2>&1 &
vgw_pid=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; do sleep 0.2; done

echo "pgbench -i -s $SCALE ..." >&2
"$PGBIN/createdb" bench
t0=$(now); "$PGBIN/pgbench" -q -i -s "$SCALE" bench >/dev/null 2>&1
# pgbench's rows are mostly blanks and compress far better than real data;
# a table of hashes and random numbers keeps the ratio honest.
"$PGBIN/psql" -qc "CREATE TABLE bench_random AS SELECT i AS id, md5(random()::text) AS hash,
  random() * 1e9 AS amount, now() - random() * interval '365 days' AS at
  FROM generate_series(1, $SCALE * 50000) i" bench
t1=$(now)
"$PGBIN/psql" -qAtc "VACUUM ANALYZE" bench
db_bytes=$("$PGBIN/psql" -qAtc "SELECT pg_database_size('bench')" bench)
db_mb=$(echo "$db_bytes / 1000000" | bc -l)
printf 'database: %.0f MB (pgbench scale %s, loaded in %.1f s)\n' "$db_mb" "$SCALE" "$(secs "$t0" "$t1")"

mkdir "$tmp/out"
agent() { SERVICEDB_PASSWORD=$password AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret \
  "$BIN" agent "$@" --termination-log "$tmp/termination-log" 2>>"$tmp/agent.log" \
  || { cat "$tmp/agent.log" >&2; return 1; }; }
db=(--engine postgres --host 127.0.0.1 --port "$pg_port" --username bench --pg-bin-dir "$PGBIN")

report() { # name seconds stored_bytes raw_bytes
  printf '%-34s %7.1f s %8.1f MB/s  stored %7.1f MB  ratio %5.2f (of the database) %5.2f (of the dump)\n' \
    "$1" "$2" "$(echo "$db_mb / $2" | bc -l)" "$(echo "$3 / 1000000" | bc -l)" \
    "$(echo "$db_bytes / $3" | bc -l)" "$(echo "$4 / $3" | bc -l)"
}
report_restore() { # name seconds
  printf '%-34s %7.1f s %8.1f MB/s\n' "$1" "$2" "$(echo "$db_mb / $2" | bc -l)"
}
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
timed() { # key command...: appends the command's seconds to t[key]; a failure stops the script
  local key=$1 t0; shift
  t0=$(now); "$@" >/dev/null; t[$key]+=" $(secs "$t0" "$(now)")"
}
restored_rows_match() {
  local rows
  rows=$("$PGBIN/psql" -qAtc "SELECT count(*) FROM pgbench_accounts" restored)
  [ "$rows" = "$((SCALE * 100000))" ] || { echo "restored $rows accounts, expected $((SCALE * 100000))" >&2; exit 1; }
}

baseline_dump() { "$PGBIN/pg_dump" -Fc bench | zstd -q -3 >"$tmp/baseline.zst"; }
baseline_dump0() { "$PGBIN/pg_dump" -Fc -Z0 bench | zstd -q -3 >"$tmp/baseline0.zst"; }
baseline_restore() { zstd -q -d -c "$tmp/baseline.zst" | "$PGBIN/pg_restore" --single-transaction -d restored; }
agent_dir() { rm -rf "$tmp/out/b1"; agent backup "${db[@]}" --database bench --destination "file://$tmp/out" --name b1 >"$tmp/out.json"; }
agent_s3() { agent backup "${db[@]}" --database bench --destination s3://bench/x --name b1 \
  --s3-endpoint "http://127.0.0.1:$s3_port" >"$tmp/s3.json"; rm -rf "$tmp/s3/bench/x"; }
agent_restore() { agent restore "${db[@]}" --database restored --from "file://$tmp/out/b1"; }

# Each measure RUNS times, the tools and the agent taking turns so that a
# slower moment of the machine falls on both; the median is reported.
RUNS=${BENCH_RUNS:-3}
declare -A t
for run in $(seq "$RUNS"); do
  echo "run $run of $RUNS ..." >&2
  timed dir agent_dir
  timed base baseline_dump
  timed s3 agent_s3
  timed base0 baseline_dump0
  "$PGBIN/createdb" restored
  timed restore agent_restore
  restored_rows_match
  "$PGBIN/dropdb" restored
  "$PGBIN/createdb" restored
  timed base_restore baseline_restore
  restored_rows_match
  "$PGBIN/dropdb" restored
done
for k in "${!t[@]}"; do
  # shellcheck disable=SC2086 # the list of times is split on purpose
  t[$k]=$(median ${t[$k]})
done

printf 'median of %s runs:\n' "$RUNS"
out=$(cat "$tmp/out.json")
report "agent backup → directory" "${t[dir]}" "$(field sizeBytes <<<"$out")" "$(field rawBytes <<<"$out")"
out=$(cat "$tmp/s3.json")
report "agent backup → versitygw (S3)" "${t[s3]}" "$(field sizeBytes <<<"$out")" "$(field rawBytes <<<"$out")"
report "pg_dump -Fc | zstd > file" "${t[base]}" "$(stat -c %s "$tmp/baseline.zst")" "$("$PGBIN/pg_dump" -Fc bench | wc -c)"
report "pg_dump -Fc -Z0 | zstd > file" "${t[base0]}" "$(stat -c %s "$tmp/baseline0.zst")" "$("$PGBIN/pg_dump" -Fc -Z0 bench | wc -c)"
report_restore "agent restore ← directory" "${t[restore]}"
report_restore "zstd -d | pg_restore" "${t[base_restore]}"

printf '\nthroughput, agent / (pg_dump -Fc | zstd): backup %.2fx, restore %.2fx\n' \
  "$(echo "${t[base]} / ${t[dir]}" | bc -l)" "$(echo "${t[base_restore]} / ${t[restore]}" | bc -l)"
