#!/usr/bin/env bash
# Runs tests/e2e (and the leader-election tests) against KUBECONFIG when it is
# set, otherwise against a local control plane (hack/testenv) started for the
# run and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TESTENV_DIR:-$HOME/.cache/servicedb/testenv-e2e}
if [ -z "${KUBECONFIG:-}" ]; then
  hack/testenv/down.sh "$dir" >/dev/null 2>&1 || true
  export KUBECONFIG
  KUBECONFIG=$(hack/testenv/up.sh "$dir")
  trap 'hack/testenv/down.sh "$dir" >/dev/null' EXIT
  echo "e2e: local control plane at $(grep -m1 server: "$KUBECONFIG" | awk '{print $2}')"
else
  echo "e2e: using KUBECONFIG=$KUBECONFIG"
fi
# One operator at a time: the tests start and restart their own.
${CARGO:-cargo} test --locked --test e2e --test leader_election -- --test-threads=1
