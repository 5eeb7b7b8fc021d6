#!/usr/bin/env bash
# Stops the control plane that up.sh started in DIR: SIGTERM to the testenv
# launcher (which stops kube-apiserver, then etcd), up to 30s grace, then
# SIGKILL for whatever is left of its process group. Idempotent.
# Usage: hack/testenv/down.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
pidfile=$DIR/testenv.pid
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
case $pid in '' | *[!0-9]*) rm -f "$pidfile"; exit 0 ;; esac

# Members of the launcher's process group (up.sh makes it a group leader)
# that are ours: guards against a stale pid file and pid reuse.
members() { ps -eo pid=,pgid=,stat=,comm= | awk -v g="$pid" '$2 == g && $3 !~ /^Z/ && ($4 == "testenv" || $4 == "etcd" || $4 == "kube-apiserver") {print $1}'; }
# Alive and not a zombie waiting to be reaped.
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }

if ps -o comm= -p "$pid" 2>/dev/null | grep -qx testenv; then
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 60); do
    running "$pid" || break
    sleep 0.5
  done
fi
left=$(members)
if [ -n "$left" ]; then
  echo "down.sh: killing leftover processes in $DIR: $(echo $left)" >&2
  kill -KILL $left 2>/dev/null
fi
rm -f "$pidfile" "$DIR/kubeconfig"
