#!/usr/bin/env bash
# Builds every program the real single-node cluster runs, once per version,
# from the Go module proxy (and gcc for pause), and prints the directory that
# holds them all:
#   etcd, kube-apiserver, kubectl      hack/testenv/build.sh (shared cache)
#   kubelet, kube-proxy,               k8s.io/kubernetes/cmd/<x> through the
#   kube-controller-manager,           wrapper module in this directory
#   kube-scheduler                     (go.mod, from gen-gomod.sh)
#   coredns                            github.com/coredns/coredns
#   kube-router                        github.com/cloudnativelabs/kube-router/v2 (NetworkPolicy)
#   local-path-provisioner             github.com/rancher/local-path-provisioner
#   pause                              build/pause/linux/pause.c, gcc -Os -static
#   postgres_exporter, redis_exporter  the monitored instances' exporters, at the
#                                      versions src/engine/exporter.rs pins
# into ${SERVICEDB_CACHE:-~/.cache/servicedb}/cluster-<k8s version>/bin.
# Safe to run concurrently (serialised with flock). Progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
K8S=$(cat ../testenv/K8S_VERSION)
COREDNS=v1.12.1
KUBE_ROUTER=v2.1.0
LOCAL_PATH=v0.0.30
CACHE=${SERVICEDB_CACHE:-$HOME/.cache/servicedb}
OUT=$CACHE/cluster-$K8S/bin
mkdir -p "$OUT"
command -v go >/dev/null || { echo "build.sh: go 1.24+ is needed (https://go.dev/dl)" >&2; exit 1; }
command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ "$(id -u)" -ne 0 ] ||
  "$(dirname "$0")/packages.sh"
command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] ||
  { echo "build.sh: gcc and libc6-dev are needed to build pause (apt-get install gcc libc6-dev)" >&2; exit 1; }
exec 9>"$OUT/.build.lock"
flock 9

# etcd, kube-apiserver and kubectl: the test control plane's own build.
testenv_bin=$("$here/../testenv/build.sh")
for b in etcd kube-apiserver kubectl; do ln -sf "$testenv_bin/$b" "$OUT/$b"; done

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S" | cut -d. -f2)"
# build NAME STAMP-INPUT COMMAND...: runs COMMAND (which writes $OUT/NAME.tmp)
# unless NAME was built from the same inputs (by content, not mtime).
build() {
  local name=$1 want=$2; shift 2
  [ -x "$OUT/$name" ] && [ "$(cat "$OUT/$name.stamp" 2>/dev/null)" = "$want" ] && return 0
  echo "building $name" >&2
  local start=$SECONDS
  rm -f "$OUT/$name.tmp"
  "$@"
  mv "$OUT/$name.tmp" "$OUT/$name"
  echo "$want" >"$OUT/$name.stamp"
  echo "built $name in $((SECONDS - start))s" >&2
}
source "$here/exporters.sh"
gomod_stamp=$(cat go.mod go.sum | sha256sum | cut -c1-16)
for b in kubelet kube-proxy kube-controller-manager kube-scheduler; do
  build "$b" "$gomod_stamp" env CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go build -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
done

# Programs with their own go.mod: `go install pkg@version` into a scratch GOBIN.
goinstall() {
  local name=$1 pkg=$2 tmp
  tmp=$(mktemp -d)
  CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "-s -w" "$pkg"
  mv "$tmp/$name" "$OUT/$name.tmp"
  rmdir "$tmp"
}
build coredns "$COREDNS" goinstall coredns "github.com/coredns/coredns@$COREDNS"
build kube-router "$KUBE_ROUTER" goinstall kube-router "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER"
build local-path-provisioner "$LOCAL_PATH" goinstall local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH"

# The exporters, built in their own module (go install pkg@version would ask
# the proxy for a version list, which it refuses for these modules).
PG_EXPORTER=$(exporter_tag POSTGRES)
REDIS_EXPORTER=$(exporter_tag REDIS)
gomodule() {
  local name=$1 module=$2 version=$3 pkg=$4 ldflags=$5 dir
  dir=$(go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] || { echo "build.sh: the Go module proxy has no $module@$version" >&2; exit 1; }
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$OUT/$name.tmp" "$pkg")
}
build postgres_exporter "$PG_EXPORTER" gomodule postgres_exporter github.com/prometheus-community/postgres_exporter \
  "$PG_EXPORTER" ./cmd/postgres_exporter "-X github.com/prometheus/common/version.Version=${PG_EXPORTER#v}"
build redis_exporter "$REDIS_EXPORTER" gomodule redis_exporter github.com/oliver006/redis_exporter \
  "$REDIS_EXPORTER" . "-X main.BuildVersion=$REDIS_EXPORTER"

pause_src=$(go mod download -json "k8s.io/kubernetes@$K8S" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
build pause "$K8S" gcc -Os -static -Wall -Werror -DVERSION="$K8S" -o "$OUT/pause.tmp" "$pause_src"
echo "$OUT"
