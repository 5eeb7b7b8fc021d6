#!/usr/bin/env bash
# Runs tests/e2e and tests/leader_election.
#
# With KUBECONFIG set: against that cluster, one test at a time (the tests
# start their own operators, and two would contend for the same objects).
#
# Without: each of E2E_SLOTS workers (default 3) brings up its own local
# control plane (hack/testenv) and takes the next test from a shared queue,
# longest first by the durations of the last run, each test in its own
# process. A test runs alone on its API server, as it does serially, so the
# tests need no change; the slots only overlap their waiting. Every control
# plane is stopped at the end. A failed test's output is printed in full.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

if [ -n "${KUBECONFIG:-}" ]; then
  echo "e2e: using KUBECONFIG=$KUBECONFIG, one test at a time"
  exec $cargo test --locked --test e2e --test leader_election -- --test-threads=1
fi

slots=${E2E_SLOTS:-3}
case $slots in '' | *[!0-9]* | 0) echo "e2e: E2E_SLOTS must be a positive number, not '$slots'" >&2; exit 2 ;; esac
base=${TESTENV_DIR:-$HOME/.cache/servicedb/testenv-e2e}
times=$base.times # "seconds name" of the last run, read for the order
work=$(mktemp -d /tmp/servicedb-e2e.XXXXXX)

# The test executables, as cargo built them.
executables=$($cargo test --locked --test e2e --test leader_election --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("e2e", "leader_election"):
        print(m["target"]["name"], m["executable"])')
exe() { awk -v t="$1" '$1 == t {print $2}' <<<"$executables"; }
e2e=$(exe e2e)
leader=$(exe leader_election)
[ -x "$e2e" ] && [ -x "$leader" ] || { echo "e2e: cargo did not report the test executables" >&2; exit 1; }

# The queue: "binary name" lines, longest first (unknown durations first of
# all: a new test may be long). leader_election's tests share one process.
{
  "$e2e" --list --format terse | sed -n 's/: test$//p' | sed "s|^|$e2e |"
  echo "$leader *"
} >"$work/all"
python3 - "$work/all" "$times" >"$work/queue" <<'EOF'
import sys
known = {}
try:
    for line in open(sys.argv[2]):
        secs, name = line.split(maxsplit=1)
        known[name.strip()] = float(secs)
except FileNotFoundError:
    pass
jobs = [l.rstrip("\n") for l in open(sys.argv[1]) if l.strip()]
jobs.sort(key=lambda j: -known.get(j.split(" ", 1)[1], 1e9))
print("\n".join(jobs))
EOF
total=$(wc -l <"$work/queue")
echo "e2e: $total test processes on $slots local control planes (E2E_SLOTS)"

down_all() {
  for i in $(seq "$slots"); do hack/testenv/down.sh "$base-$i" >/dev/null 2>&1 || true; done
}
cleanup() {
  local rc=$?
  # Workers and their tests first, then the control planes they used.
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
  down_all
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Takes the next queue line under a lock; empty when the queue is done.
next() {
  exec 9>>"$work/lock"
  flock 9
  local line
  line=$(head -n1 "$work/queue")
  sed -i 1d "$work/queue"
  flock -u 9
  exec 9>&-
  printf '%s' "$line"
}

worker() {
  local slot=$1 kc line binary name start rc secs out
  hack/testenv/down.sh "$base-$slot" >/dev/null 2>&1 || true
  kc=$(hack/testenv/up.sh "$base-$slot") || { echo "e2e: slot $slot: the control plane did not start" >&2; echo "slot $slot" >>"$work/failed"; return; }
  while line=$(next) && [ -n "$line" ]; do
    binary=${line%% *}
    name=${line#* }
    out=$work/$(echo "$name" | tr -c 'A-Za-z0-9_\n' '_').log
    start=$SECONDS
    rc=0
    if [ "$name" = "*" ]; then
      KUBECONFIG=$kc "$binary" --test-threads=1 >"$out" 2>&1 || rc=$?
      name=leader_election
    else
      KUBECONFIG=$kc "$binary" --exact "$name" --test-threads=1 >"$out" 2>&1 || rc=$?
    fi
    secs=$((SECONDS - start))
    if [ $rc -eq 0 ] && grep -q '^test result: ok\. [1-9]' "$out"; then
      printf 'test %s ... ok (%ss, slot %s)\n' "$name" "$secs" "$slot"
      echo "$secs $line" >>"$work/times"
    else
      printf 'test %s ... FAILED (%ss, slot %s)\n' "$name" "$secs" "$slot"
      { echo "---- $name (slot $slot, exit $rc) ----"; cat "$out"; } >>"$work/failures"
      echo "$name" >>"$work/failed"
      echo "$secs $line" >>"$work/times"
    fi
  done
  hack/testenv/down.sh "$base-$slot" >/dev/null 2>&1 || true
}

begin=$SECONDS
for i in $(seq "$slots"); do worker "$i" & done
wait
# Durations for the next run's order (names are stable, paths are not).
sed "s| $e2e | |; s| $leader | |" "$work/times" >"$times.new" 2>/dev/null && mv "$times.new" "$times"

if [ -s "$work/failed" ]; then
  cat "$work/failures" 2>/dev/null || true
  echo "e2e: FAILED after $((SECONDS - begin))s: $(sort "$work/failed" | tr '\n' ' ')" >&2
  exit 1
fi
ran=$(wc -l <"$work/times")
[ "$ran" -eq "$total" ] || { echo "e2e: only $ran of $total test processes ran" >&2; exit 1; }
echo "e2e: $total test processes passed in $((SECONDS - begin))s on $slots control planes"
