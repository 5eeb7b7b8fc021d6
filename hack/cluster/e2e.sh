#!/usr/bin/env bash
# The real-cluster tier (tests/cluster.rs): brings the cluster up (unless it
# already is), builds and imports the images (the operator image from the
# static binary BIN), runs the tests, and takes the cluster down again if it
# started it (SERVICEDB_CLUSTER_KEEP=1 leaves it up). Prints how long each
# step took.
# Usage: hack/cluster/e2e.sh BIN   (make cluster-e2e)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 1 ] || { echo "usage: $0 STATIC_BINARY" >&2; exit 2; }
static=$1
[ "$(id -u)" = 0 ] || { echo "cluster-e2e: the real-cluster tier starts a kubelet and changes the host's network: run it (make test) as root" >&2; exit 1; }
dir=${CLUSTER_DIR:-${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/cluster}
step() { local what=$1 start=$SECONDS; shift; "$@"; echo "cluster-e2e: $what took $((SECONDS - start))s" >&2; }

was_up=0
[ -s "$dir/kubeconfig" ] && was_up=1
step "build (hack/cluster/build.sh)" hack/cluster/build.sh >/dev/null
images=$(step "images (hack/cluster/images.sh)" hack/cluster/images.sh --operator "$static")
operator_archive=$(echo "$images" | grep '/servicedb-[^/]*\.tar$')
kc=$dir/kubeconfig
step "up (hack/cluster/up.sh)" hack/cluster/up.sh "$dir" >/dev/null
if [ "$was_up" = 0 ] && [ "${SERVICEDB_CLUSTER_KEEP:-0}" != 1 ]; then
  trap 'step "down (hack/cluster/down.sh)" hack/cluster/down.sh "$dir"' EXIT
fi
step "operator image import" hack/cluster/images.sh --operator "$static" --import "$dir/containerd/containerd.sock" >/dev/null
echo "cluster-e2e: cluster at $(grep -m1 server: "$kc" | awk '{print $2}')" >&2
step "tests (cargo test --test cluster)" env SERVICEDB_CLUSTER_KUBECONFIG="$kc" SERVICEDB_OPERATOR_IMAGE_ARCHIVE="$operator_archive" \
  ${CARGO:-cargo} test --locked --test cluster -- --test-threads=1
