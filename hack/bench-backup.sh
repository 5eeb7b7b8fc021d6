#!/usr/bin/env bash
# Benchmark of the backup agent on PostgreSQL: a pgbench database of
# BENCH_SCALE (default 70, about 1 GiB on disk) on a throwaway server, then
#   servicedb agent backup  → a directory
#   servicedb agent backup  → versitygw (S3, hack/s3/build.sh)
#   servicedb agent restore ← the directory, into a new database
#   pg_dump -Fc | zstd > file   (the baseline: the tools alone)
#   zstd -d | pg_restore        (the baseline's restore)
# Prints seconds, MB/s of database size and compression ratios, then the
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
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

t0=$(now); out=$(agent backup "${db[@]}" --database bench --destination "file://$tmp/out" --name b1); t1=$(now)
agent_backup_s=$(secs "$t0" "$t1")
report "agent backup → directory" "$(secs "$t0" "$t1")" "$(field sizeBytes <<<"$out")" "$(field rawBytes <<<"$out")"
t0=$(now); out=$(agent backup "${db[@]}" --database bench --destination s3://bench/x --name b1 \
  --s3-endpoint "http://127.0.0.1:$s3_port"); t1=$(now)
report "agent backup → versitygw (S3)" "$(secs "$t0" "$t1")" "$(field sizeBytes <<<"$out")" "$(field rawBytes <<<"$out")"
rm -rf "$tmp/s3/bench/x"

"$PGBIN/createdb" restored
t0=$(now); agent restore "${db[@]}" --database restored --from "file://$tmp/out/b1" >/dev/null; t1=$(now)
agent_restore_s=$(secs "$t0" "$t1")
printf '%-34s %7.1f s %8.1f MB/s\n' "agent restore ← directory" "$(secs "$t0" "$t1")" "$(echo "$db_mb / $(secs "$t0" "$t1")" | bc -l)"
rows=$("$PGBIN/psql" -qAtc "SELECT count(*) FROM pgbench_accounts" restored)
[ "$rows" = "$((SCALE * 100000))" ] || { echo "restored $rows accounts, expected $((SCALE * 100000))" >&2; exit 1; }
"$PGBIN/dropdb" restored

t0=$(now); "$PGBIN/pg_dump" -Fc bench | zstd -q -3 >"$tmp/baseline.zst"; t1=$(now)
baseline_backup_s=$(secs "$t0" "$t1")
size=$(stat -c %s "$tmp/baseline.zst")
raw=$("$PGBIN/pg_dump" -Fc bench | wc -c)
report "pg_dump -Fc | zstd > file" "$(secs "$t0" "$t1")" "$size" "$raw"
t0=$(now); "$PGBIN/pg_dump" -Fc -Z0 bench | zstd -q -3 >"$tmp/baseline0.zst"; t1=$(now)
size=$(stat -c %s "$tmp/baseline0.zst")
raw=$("$PGBIN/pg_dump" -Fc -Z0 bench | wc -c)
report "pg_dump -Fc -Z0 | zstd > file" "$(secs "$t0" "$t1")" "$size" "$raw"

"$PGBIN/createdb" restored
t0=$(now); zstd -q -d -c "$tmp/baseline.zst" | "$PGBIN/pg_restore" --single-transaction -d restored; t1=$(now)
baseline_restore_s=$(secs "$t0" "$t1")
printf '%-34s %7.1f s %8.1f MB/s\n' "zstd -d | pg_restore" "$baseline_restore_s" "$(echo "$db_mb / $baseline_restore_s" | bc -l)"
"$PGBIN/dropdb" restored

printf '\nthroughput, agent / (pg_dump -Fc | zstd): backup %.2fx, restore %.2fx\n' \
  "$(echo "$baseline_backup_s / $agent_backup_s" | bc -l)" "$(echo "$baseline_restore_s / $agent_restore_s" | bc -l)"
