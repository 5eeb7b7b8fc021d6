#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kubectl and the testenv launcher (and, for
# benchmarks, kube-controller-manager and kube-scheduler) from the Go module
# proxy into ~/.cache/servicedb/k8s-<version>/bin, once per version. Prints
# that dir. Safe to run concurrently (builds are serialised with flock).
set -euo pipefail
cd "$(dirname "$0")"
K8S=$(cat K8S_VERSION)
OUT=${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/k8s-$K8S/bin
mkdir -p "$OUT"
if command -v flock >/dev/null; then
  exec 9>"$OUT/.build.lock"
  flock 9
fi
want=(etcd kube-apiserver kubectl testenv)
[ "${TESTENV_FULL:-0}" = 1 ] && want+=(kube-controller-manager kube-scheduler)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S" | cut -d. -f2)"
# A binary is rebuilt when the sources that pin it change (by content, not
# by mtime: a fresh clone must reuse the cache).
stamp() {
  case $1 in
    testenv) cat go.mod go.sum main.go ;;
    etcd)    cat go.mod go.sum cmd/etcd/main.go ;;
    *)       cat go.mod go.sum ;;
  esac | sha256sum | cut -c1-16
}
for b in "${want[@]}"; do
  want_stamp=$(stamp "$b")
  [ -x "$OUT/$b" ] && [ "$(cat "$OUT/$b.stamp" 2>/dev/null)" = "$want_stamp" ] && continue
  case $b in
    etcd)    pkg=./cmd/etcd ;;
    testenv) pkg=. ;;
    *)       pkg=k8s.io/kubernetes/cmd/$b ;;
  esac
  echo "building $b ($K8S)" >&2
  start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/$b.$$.tmp" "$pkg"
  mv "$OUT/$b.$$.tmp" "$OUT/$b"
  echo "$want_stamp" >"$OUT/$b.stamp"
  echo "built $b in $((SECONDS - start))s" >&2
done
echo "$OUT"
