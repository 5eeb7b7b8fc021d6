#!/usr/bin/env bash
# make run: servicedb and the shop (examples/manifests, namespace `shop`).
#
# Where it runs:
#   - KUBECONFIG (or ~/.kube/config) names a cluster: crds/ are applied and
#     the operator runs from this machine (this build) against it;
#   - otherwise, as root: a real single-node cluster (hack/cluster) is
#     brought up, the images built and imported, servicedb installed with its
#     Helm chart (in-cluster, 2 replicas, leader election), the shop applied
#     in a namespace enforcing the `restricted` Pod Security Standard, and
#     the run ends by showing the databases Ready and the shop's own pods
#     writing and reading through their Secrets;
#   - otherwise (not root, or RUN_CLUSTER=apiserver): a local control plane
#     alone (etcd + kube-apiserver, hack/testenv), where nothing runs a pod.
#
#   hack/run.sh               run in the foreground until Ctrl-C
#   RUN_DETACH=1 hack/run.sh  leave it running; stop with `hack/run.sh stop`
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${RUN_DIR:-$HOME/.cache/servicedb/testenv-run}
cluster_dir=${CLUSTER_DIR:-$HOME/.cache/servicedb/cluster}
ns=${RUN_NAMESPACE:-shop}
target=${CARGO_TARGET_DIR:-target}
bin=$target/debug/servicedb
static=$target/x86_64-unknown-linux-gnu/release/servicedb
mkdir -p "$dir"
say() { printf 'run: %s\n' "$*" >&2; }

stop() {
  if [ -f "$dir/operator.pid" ]; then
    kill -TERM "$(cat "$dir/operator.pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$dir/operator.pid")" 2>/dev/null || break; sleep 0.2; done
    rm -f "$dir/operator.pid"
  fi
  [ -f "$dir/local" ] && hack/testenv/down.sh "$dir" >/dev/null && rm -f "$dir/local"
  # Only a cluster make run started itself is taken down.
  [ -f "$dir/cluster" ] && hack/cluster/down.sh "$cluster_dir" >/dev/null && rm -f "$dir/cluster"
  echo "stopped"
}
[ "${1:-}" = stop ] && { stop; exit 0; }

if [ -n "${KUBECONFIG:-}" ] || [ -f "$HOME/.kube/config" ]; then
  mode=current
elif [ "$(id -u)" = 0 ] && [ "${RUN_CLUSTER:-}" != apiserver ]; then
  mode=cluster
else
  mode=apiserver
fi

kubectl_bin=$(command -v kubectl || true)
[ -n "$kubectl_bin" ] || kubectl_bin="$(hack/testenv/build.sh)/kubectl"
k() { "$kubectl_bin" "$@"; }

# --- the real single-node cluster, servicedb from its chart ------------------
if [ "$mode" = cluster ]; then
  start=$SECONDS
  say "no cluster configured: a real single-node cluster (hack/cluster) with servicedb installed by its Helm chart"
  say "building the statically linked binary (the operator image; cached after the first run)"
  make -s static >&2
  say "building the cluster's parts (kubelet, containerd's CNI, CoreDNS, kube-router, ...; cached)"
  kubectl_bin="$(hack/cluster/build.sh)/kubectl"
  helm=$(hack/helm.sh)
  [ -s "$cluster_dir/kubeconfig" ] || touch "$dir/cluster"
  say "starting the cluster ($cluster_dir)"
  export KUBECONFIG
  KUBECONFIG=$(hack/cluster/up.sh "$cluster_dir")
  say "building and importing the images (postgres:17, redis:8.0 and Prometheus from Debian; the exporters from their Go modules; the operator's)"
  hack/cluster/images.sh --operator "$static" --import "$cluster_dir/containerd/containerd.sock" >/dev/null
  k apply --server-side --force-conflicts --field-manager=servicedb-install -f crds/ >/dev/null
  k wait --for=condition=Established crd --all --timeout=60s >/dev/null
  say "installing servicedb with the Helm chart (namespace servicedb-system)"
  # The image's tag stays the chart's; a rebuilt binary rolls the operator.
  "$helm" upgrade --install servicedb charts/servicedb -n servicedb-system --create-namespace \
    --set operator.logFormat=text \
    --set-string "podAnnotations.servicedb\.dev/binary=$(sha256sum "$static" | cut -c1-16)" \
    --wait --timeout 5m >/dev/null
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
  k label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
  k apply --server-side --field-manager=servicedb-run -f examples/monitoring/ >/dev/null
  k apply -n "$ns" --server-side --field-manager=servicedb-run -f examples/manifests/ >/dev/null
  say "the shop is applied; waiting for orders (PostgreSQL 17) and cart (Redis 8.0) to be Ready"
  deadline=$((SECONDS + ${RUN_TIMEOUT:-600}))
  while :; do
    phases=$(k get sdb -n "$ns" orders cart -o jsonpath='{range .items[*]}{.status.phase}{" "}{end}' 2>/dev/null || true)
    [ "$phases" = "Ready Ready " ] && break
    if [ $SECONDS -ge $deadline ]; then
      k get sdb,pods -n "$ns" >&2 || true
      say "orders and cart are not Ready after ${RUN_TIMEOUT:-600}s; their conditions:"
      k get sdb -n "$ns" -o jsonpath='{range .items[*]}{.metadata.name}: {range .status.conditions[?(@.status!="True")]}{.type}={.reason}: {.message}; {end}{"\n"}{end}' >&2 || true
      exit 1
    fi
    sleep 5
  done
  say "waiting for the shop's pods to write and read through their Secrets"
  for app in orders cart; do
    until k logs -n "$ns" "deploy/$app" 2>/dev/null | grep -q "^$app:"; do
      [ $SECONDS -lt $deadline ] || { say "deploy/$app logged nothing"; k get pods -n "$ns" >&2; exit 1; }
      sleep 2
    done
  done
  # catalog's pod is scheduled once its volume is provisioned (VolumeNotBound
  # meanwhile), then tries to pull mongo; its status says so once that failed.
  instance() { k get sdb -n "$ns" catalog -o jsonpath="{.status.conditions[?(@.type==\"InstanceReady\")].$1}" 2>/dev/null; }
  for _ in $(seq 60); do
    case $(instance reason) in Starting|VolumeNotBound|'') sleep 2 ;; *) break ;; esac
  done
  echo
  k get sdb -n "$ns"
  echo
  for app in orders cart; do
    k logs -n "$ns" "deploy/$app" 2>/dev/null | grep "^$app:" | tail -1
  done
  # orders is monitored: Prometheus (examples/monitoring) scrapes its exporter.
  say "waiting for Prometheus to scrape orders' exporter"
  promql() {
    k get --raw "/api/v1/namespaces/monitoring/services/prometheus:9090/proxy/api/v1/query?query=$1" 2>/dev/null |
      grep -o '"value":\[[^]]*\]' | head -1 | sed 's/.*,"\(.*\)"\]/\1/'
  }
  up='pg_up%7Bnamespace%3D%22'$ns'%22%2Cservice_database%3D%22orders%22%7D'
  size='pg_database_size_bytes%7Bnamespace%3D%22'$ns'%22%2Cservice_database%3D%22orders%22%2Cdatname%3D%22orders%22%7D'
  until [ "$(promql "$up")" = 1 ]; do
    [ $SECONDS -lt $deadline ] || { say "Prometheus has no pg_up == 1 for orders"; k get pods -n monitoring >&2; exit 1; }
    sleep 3
  done
  echo "orders: monitored; Prometheus reads pg_up $(promql "$up"), database size $(($(promql "$size") / 1024)) kB"
  echo
  echo "catalog: $(instance reason): $(instance message | cut -c1-160)"
  echo "  (no MongoDB server package exists in Debian, so no mongo image is built here; on a cluster that can pull mongo it runs)"
  echo
  echo "Ready in $((SECONDS - start))s. Try:  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$kubectl_bin"):\$PATH"
  echo "  kubectl get sdb -n $ns; kubectl logs -n $ns deploy/orders; kubectl logs -n servicedb-system -l app.kubernetes.io/name=servicedb"
  if [ -n "${RUN_DETACH:-}" ]; then
    echo "Left running; stop with: make stop"
    exit 0
  fi
  trap stop EXIT INT TERM
  echo "Following the shop's logs; Ctrl-C stops${dir:+ (and takes the cluster down if make run started it)}."
  k logs -n "$ns" -f -l 'app in (orders,cart)' --prefix --max-log-requests 10 || true
  exit 0
fi

# --- the operator from this machine -----------------------------------------
if [ "$mode" = current ]; then
  if k --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
    say "using the current cluster ($(k config current-context 2>/dev/null || echo KUBECONFIG))"
  else
    say "the configured cluster does not answer; unset KUBECONFIG to use a local cluster" >&2
    exit 1
  fi
else
  [ "$(id -u)" = 0 ] || say "not root: no real cluster can be started here; a local control plane only (no pod runs)"
  export KUBECONFIG
  KUBECONFIG=$(hack/testenv/up.sh "$dir")
  touch "$dir/local"
  say "started a local control plane (KUBECONFIG=$KUBECONFIG)"
fi

k apply --server-side --field-manager=servicedb-install -f crds/ >/dev/null
k wait --for=condition=Established crd --all --timeout=60s >/dev/null
k create namespace servicedb-system --dry-run=client -o yaml | k apply -f - >/dev/null
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -n "$ns" -f examples/manifests/

"$bin" operator --log-format text --namespace servicedb-system --http-addr 127.0.0.1:${RUN_HTTP_PORT:-8080} >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"
trap '[ -n "${RUN_DETACH:-}" ] || stop' EXIT INT TERM

for _ in $(seq 60); do
  total=$(k get sdb -n "$ns" -o name 2>/dev/null | wc -l)
  phased=$(k get sdb -n "$ns" -o jsonpath='{.items[*].status.phase}' 2>/dev/null | wc -w)
  [ "$total" -gt 0 ] && [ "$phased" -ge "$total" ] && break
  kill -0 "$(cat "$dir/operator.pid")" 2>/dev/null || { echo "run: the operator exited; see $dir/operator.log" >&2; tail -20 "$dir/operator.log" >&2; exit 1; }
  sleep 0.5
done
echo
k get sdb -n "$ns"
echo
echo "Operator log: $dir/operator.log   metrics: http://127.0.0.1:${RUN_HTTP_PORT:-8080}/metrics"
[ -f "$dir/local" ] && echo "The local control plane has no kubelet: instances stay Provisioning. Run make run as root for a real local cluster, or point KUBECONFIG at one."
if [ -n "${RUN_DETACH:-}" ]; then
  echo "Left running; stop with: make stop"
  exit 0
fi
echo "Ctrl-C stops the operator${dir:+ and the local control plane}."
wait "$(cat "$dir/operator.pid")"
