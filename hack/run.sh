#!/usr/bin/env bash
# make run: the operator against the current cluster, or — when there is
# none — against a local control plane (etcd + kube-apiserver from
# hack/testenv). Installs crds/, applies examples/manifests into namespace
# `shop`, starts the operator and shows `kubectl get sdb`.
#   hack/run.sh          run in the foreground until Ctrl-C
#   RUN_DETACH=1 hack/run.sh   leave it running; stop with `hack/run.sh stop`
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${RUN_DIR:-$HOME/.cache/servicedb/testenv-run}
ns=${RUN_NAMESPACE:-shop}
bin=${CARGO_TARGET_DIR:-target}/debug/servicedb
mkdir -p "$dir"

stop() {
  if [ -f "$dir/operator.pid" ]; then
    kill -TERM "$(cat "$dir/operator.pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$dir/operator.pid")" 2>/dev/null || break; sleep 0.2; done
    rm -f "$dir/operator.pid"
  fi
  [ -f "$dir/local" ] && hack/testenv/down.sh "$dir" >/dev/null && rm -f "$dir/local"
  echo "stopped"
}
[ "${1:-}" = stop ] && { stop; exit 0; }

kubectl_bin=$(command -v kubectl || true)
[ -n "$kubectl_bin" ] || kubectl_bin="$(hack/testenv/build.sh)/kubectl"
if [ -n "${KUBECONFIG:-}" ] || [ -f "$HOME/.kube/config" ]; then
  if "$kubectl_bin" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
    echo "run: using the current cluster ($("$kubectl_bin" config current-context 2>/dev/null || echo KUBECONFIG))"
  else
    echo "run: the configured cluster does not answer; unset KUBECONFIG to use a local control plane" >&2
    exit 1
  fi
else
  export KUBECONFIG
  KUBECONFIG=$(hack/testenv/up.sh "$dir")
  touch "$dir/local"
  echo "run: no cluster configured; started a local control plane (KUBECONFIG=$KUBECONFIG)"
fi
k() { "$kubectl_bin" "$@"; }

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
[ -f "$dir/local" ] && echo "The local control plane has no kubelet: instances stay Provisioning. Use a real cluster (kind, k3d) to run the databases."
if [ -n "${RUN_DETACH:-}" ]; then
  echo "Left running; stop with: make stop"
  exit 0
fi
echo "Ctrl-C stops the operator${dir:+ and the local control plane}."
wait "$(cat "$dir/operator.pid")"
