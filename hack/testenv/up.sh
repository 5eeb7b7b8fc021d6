#!/usr/bin/env bash
# Starts a throwaway control plane (etcd + kube-apiserver) with state in DIR,
# detached from the caller, and prints the path of its kubeconfig once the API
# answers. Stop it with down.sh DIR. Several DIRs can be up at the same time.
# Usage: hack/testenv/up.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
BIN=$("$here/build.sh")
kc=$DIR/kubeconfig
TIMEOUT=${TESTENV_UP_TIMEOUT:-120}

ready() { [ -s "$kc" ] && "$BIN/kubectl" --kubeconfig "$kc" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; }
alive() { kill -0 "$1" 2>/dev/null; }

if [ -f "$DIR/testenv.pid" ] && ps -o comm= -p "$(cat "$DIR/testenv.pid")" 2>/dev/null | grep -qx testenv; then
  if ready; then echo "$kc"; exit 0; fi
  echo "up.sh: a testenv (pid $(cat "$DIR/testenv.pid")) is already running in $DIR but is not ready; run down.sh $DIR first" >&2
  exit 1
fi

rm -f "$kc" "$DIR/testenv.pid" # stale
# setsid: own session and process group, so down.sh can sweep it and the
# caller's terminal signals do not reach it.
setsid nohup "$BIN/testenv" up --dir "$DIR" --bin-dir "$BIN" >"$DIR/testenv.log" 2>&1 </dev/null &
pid=$!

deadline=$((SECONDS + TIMEOUT))
until ready; do
  if ! alive "$pid"; then
    echo "up.sh: testenv exited before the API came up; last lines of $DIR/testenv.log:" >&2
    tail -n 40 "$DIR/testenv.log" | sed 's/^/    /' >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "up.sh: API in $DIR not ready after ${TIMEOUT}s; last lines of $DIR/testenv.log and $DIR/kube-apiserver.log:" >&2
    tail -n 20 "$DIR/testenv.log" | sed 's/^/    /' >&2
    tail -n 20 "$DIR/kube-apiserver.log" 2>/dev/null | sed 's/^/    /' >&2
    # Our own child: signal it directly, its pid file may not exist yet.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do alive "$pid" || break; sleep 0.5; done
    "$here/down.sh" "$DIR" >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "$kc"
