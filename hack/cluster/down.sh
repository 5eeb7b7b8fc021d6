#!/usr/bin/env bash
# Stops the cluster that up.sh started in DIR and undoes what it did to the
# host: its processes (by the pids it recorded, SIGTERM with a bounded wait,
# then SIGKILL) and the containers they ran, the mounts under DIR, the bridge,
# kube-proxy's, kube-router's and the CNI plugins' iptables rules and ipsets,
# the kubepods cgroups, the host folders that did not exist before, and the
# sysctls (restored to the values recorded before the first start). Keeps
# DIR/logs for a look afterwards. Idempotent.
# Usage: hack/cluster/down.sh [DIR]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -le 1 ] || { echo "usage: $0 [DIR]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "down.sh: run it as root, as up.sh was" >&2; exit 1; }
DIR=${1:-${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/cluster}
[ -d "$DIR" ] || exit 0
DIR=$(cd "$DIR" && pwd)
. "$here/lib.sh"
log() { echo "cluster: $*" >&2; }
[ -d "$DIR/run" ] || [ -f "$DIR/host.orig" ] || exit 0
BIN=$(cat "$DIR/bin-dir" 2>/dev/null || true)

# stop NAME SECONDS: SIGTERM, up to SECONDS, then SIGKILL.
stop() {
  local pid
  pid=$(pid_of "$1") || { rm -f "$DIR/run/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  local deadline=$((SECONDS + $2))
  while pid_of "$1" >/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if pid_of "$1" >/dev/null; then
    log "$1 (pid $pid) did not stop in $2s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    sleep 0.2
  fi
  rm -f "$DIR/run/$1.pid"
}

# The containers' processes: everything in the kubepods cgroups (only this
# cluster's kubelet makes them), and the containerd shims serving our socket.
container_pids() {
  cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null | sort -un
}
shim_pids() {
  local p
  for p in $(ps -eo pid=,comm= | awk '$2 ~ /^containerd-shim/ {print $1}'); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -F -- "-address $SOCKET " >/dev/null && echo "$p"
  done
}

log "stopping the cluster in $DIR"
for name in local-path-provisioner kube-router coredns kube-proxy kubelet; do stop "$name" 10; done
pids=$(container_pids)
[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
stop containerd 10
for _ in $(seq 20); do [ -z "$(container_pids)" ] && break; sleep 0.2; done
pids=$(shim_pids)
[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
for name in kube-scheduler kube-controller-manager; do stop "$name" 10; done
# kube-apiserver can take ~55s to drain on SIGTERM; nothing depends on that here.
stop kube-apiserver 15
stop etcd 10

# Rules: kube-proxy's and kube-router's own clean-up, then whatever is left
# in chains named KUBE-* and CNI-* (kubelet's canaries, the bridge plugin's
# masquerading of pods whose teardown never ran).
if [ -n "$BIN" ] && [ -x "$BIN/kube-proxy" ]; then
  timeout 60 "$BIN/kube-proxy" --cleanup --proxy-mode=iptables >/dev/null 2>&1
fi
if [ -n "$BIN" ] && [ -x "$BIN/kube-router" ]; then
  timeout 60 "$BIN/kube-router" --cleanup-config >/dev/null 2>&1
fi
for tool in iptables ip6tables; do
  command -v "$tool-save" >/dev/null || continue
  # Saved first: `save | grep -q` fails under pipefail when grep stops early.
  rules=$("$tool-save" 2>/dev/null)
  if echo "$rules" | grep -E '(^:| -[jg] )(KUBE-|CNI-)' >/dev/null; then
    echo "$rules" | awk '
      /^\*/ { print; next }
      /^:(KUBE-|CNI-)/ { next }
      /^-A (KUBE-|CNI-)/ { next }
      / -[jg] (KUBE-|CNI-)/ { next }
      { print }' | "$tool-restore" || log "could not remove the KUBE-/CNI- chains from $tool"
  fi
done
# ipsets that were not there before the first start.
if command -v ipset >/dev/null; then
  for set in $(ipset list -n 2>/dev/null); do
    grep -qxF "ipset $set" "$DIR/host.orig" 2>/dev/null || ipset destroy "$set" 2>/dev/null ||
      log "could not destroy ipset $set"
  done
fi

# Mounts under DIR (containers' root filesystems, network namespaces, the
# kubelet's volumes), deepest first.
for _ in 1 2 3; do
  mounts=$(awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  [ -z "$mounts" ] && break
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done

ip link show "$BRIDGE" >/dev/null 2>&1 && { ip link delete "$BRIDGE" || log "could not delete the bridge $BRIDGE"; }

# cgroups the kubelet made (kubepods and below), deepest first, unless they
# existed before the first start.
for c in /sys/fs/cgroup/*/kubepods; do
  [ -d "$c" ] || continue
  grep -qxF "cgroup-existed $c" "$DIR/host.orig" 2>/dev/null && continue
  find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  [ -d "$c" ] && log "could not remove the cgroup $c"
done

# Host folders and sysctls as they were.
if [ -f "$DIR/host.orig" ]; then
  while read -r kind a b; do
    case $kind in
      dir)
        if [ -e "$a" ] && ! awk -v d="$a" '$2 == d || index($2, d "/") == 1 {found=1} END {exit !found}' /proc/self/mounts; then
          rm -rf "$a"
        fi ;;
      sysctl) sysctl -qw "$a=$b" 2>/dev/null || log "could not restore $a=$b" ;;
    esac
  done <"$DIR/host.orig"
fi

# DIR's state (only what up.sh makes there), except the logs.
for p in "${STATE[@]}"; do rm -rf "${DIR:?}/$p"; done
log "down"
