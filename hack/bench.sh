#!/usr/bin/env bash
# `make bench`: benchmarks that print figures, against KUBECONFIG when it is
# set, otherwise against a local control plane (hack/testenv) started for the
# run and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TESTENV_DIR:-$HOME/.cache/servicedb/testenv-bench}
if [ -z "${KUBECONFIG:-}" ]; then
  hack/testenv/down.sh "$dir" >/dev/null 2>&1 || true
  export KUBECONFIG
  KUBECONFIG=$(hack/testenv/up.sh "$dir")
  trap 'hack/testenv/down.sh "$dir" >/dev/null' EXIT
fi
# The API server's own request counts are read with kubectl.
KUBECTL=${KUBECTL:-$(hack/testenv/build.sh)/kubectl}
export KUBECTL
# Reconciles per shared server: the operator's default at its default
# --concurrency 8 (the benchmark's operator runs 4). Measured at 100
# PostgreSQL tenants: 2 → 48.6 s, 4 → 14.0 s.
export SERVICEDB_PER_SERVER_CONCURRENCY=${SERVICEDB_PER_SERVER_CONCURRENCY:-4}
# SERVICEDB_BENCH_DATABASES (default 300) sets the tenants per engine;
# SERVICEDB_BENCH_PROFILE=dev measures a debug build (no release build needed).
# BENCH picks the benchmark: provision (the default) or scale.
${CARGO:-cargo} bench --locked --profile "${SERVICEDB_BENCH_PROFILE:-bench}" --bench "${BENCH:-provision}"
