# servicedb — the make targets are the interface.
#   make run     servicedb and the shop (current cluster, or a real local one)
#   make test    unit, engine and end-to-end tests
#   make crds    regenerate crds/ from the code
#   make lint    rustfmt + clippy, warnings are errors

SHELL := /bin/bash
CARGO ?= cargo
TESTENV_DIR ?= $(HOME)/.cache/servicedb/testenv-e2e
RUN_DIR ?= $(HOME)/.cache/servicedb/testenv-run
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/servicedb

.PHONY: build crds check-crds lint unit engine engine-static agent e2e test bench bench-provision bench-scale bench-backup run stop testenv-up testenv-down static clean

build:
	$(CARGO) build --locked

## crds: write crds/ from the Rust types.
crds: build
	@mkdir -p crds charts/servicedb/crds
	$(BIN) crd > crds/servicedb.dev.yaml
	cp crds/servicedb.dev.yaml charts/servicedb/crds/servicedb.dev.yaml
	@echo "wrote crds/servicedb.dev.yaml and charts/servicedb/crds/servicedb.dev.yaml"

## check-crds: fail when crds/ differs from the code.
check-crds: build
	@$(BIN) crd | diff -u crds/servicedb.dev.yaml - || { echo "crds/ is stale: run 'make crds' and commit it" >&2; exit 1; }
	@$(BIN) crd | diff -u charts/servicedb/crds/servicedb.dev.yaml - || { echo "charts/servicedb/crds/ is stale: run 'make crds' and commit it" >&2; exit 1; }

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## unit: pure tests of validate/build and library code; the generated alerts
## through promtool (Debian's prometheus).
unit:
	hack/prereqs.sh promtool
	$(CARGO) test --locked --lib --bins --test readme --test gitops_health --test dashboards --test architecture

ENGINE_TESTS := --test instance_postgres --test postgres_users --test instance_redis --test instance_mongodb --test exporter_scrape

## engine: the instance manager against real PostgreSQL and Redis servers,
## the MongoDB user handling against FerretDB (hack/ferretdb), and the
## exporters of monitored instances scraped by a real Prometheus.
engine:
	hack/prereqs.sh postgres redis prometheus go
	hack/ferretdb/build.sh >/dev/null
	$(CARGO) test --locked $(ENGINE_TESTS)

AGENT_TESTS := --test agent_postgres --test agent_redis --test agent_mongodb

## agent: the backup agent (backup, restore, verify, delete) against real
## PostgreSQL, Redis and FerretDB servers and a real S3 server (versitygw,
## hack/s3), and a directory.
agent:
	hack/prereqs.sh postgres redis go
	hack/s3/build.sh >/dev/null
	hack/ferretdb/build.sh >/dev/null
	$(CARGO) test --locked $(AGENT_TESTS)

## bench-backup: time `servicedb agent backup`/`restore` of a PostgreSQL
## database (BENCH_SCALE pgbench scale, 70 ≈ 1 GiB) to a directory and to
## versitygw, against `pg_dump -Fc | zstd`; prints MB/s and ratios.
## A release build: debug zstd and SHA-256 would measure the compiler.
bench-backup:
	hack/prereqs.sh postgres zstd
	$(CARGO) build --locked --release
	hack/bench-backup.sh $(or $(CARGO_TARGET_DIR),target)/release/servicedb

## e2e: the operator against a real API server (KUBECONFIG, or a local one).
e2e: build
	hack/prereqs.sh postgres redis prometheus go
	hack/s3/build.sh >/dev/null
	hack/e2e.sh

## test: every tier; cluster-e2e brings up a real single-node cluster
## (root: it starts a kubelet and changes the host's network). The e2e tier
## (local API servers) and the real-cluster tier mostly wait on their
## servers, so they run side by side once both builds are done; each one's
## output is shown whole when it ends.
test: unit engine agent
	@$(MAKE) --no-print-directory build static
	@$(MAKE) --no-print-directory -j2 --output-sync=target e2e cluster-e2e

## bench: every benchmark (figures, not pass/fail).
bench: bench-provision bench-scale bench-backup

## bench-provision: provisioning of 300 PostgreSQL and 300 Redis tenants on
## one server each (total, p50, p99, reconciles, API requests and server
## statements per tenant) against the floor: the same statements run
## serially by one plain session on a fresh server (ratio to floor).
bench-provision:
	hack/prereqs.sh postgres redis go
	hack/bench.sh

## bench-scale: 1,000 dedicated ServiceDatabases (SERVICEDB_BENCH_SCALE) on
## the API server alone: time until every child is applied against a plain
## server-side apply of the same objects (ratio to floor), the operator's
## peak RSS and CPU, and the writes a fresh operator makes over them.
bench-scale:
	hack/prereqs.sh go
	BENCH=scale hack/bench.sh

## run: the operator against the current cluster; with none, a real local
## cluster (root; hack/cluster) with servicedb installed by its chart.
run: build
	hack/prereqs.sh go
	hack/run.sh

stop:
	hack/run.sh stop

testenv-up:
	@hack/testenv/up.sh $(TESTENV_DIR)

testenv-down:
	@hack/testenv/down.sh $(TESTENV_DIR)

STATIC_BIN := $(or $(CARGO_TARGET_DIR),target)/x86_64-unknown-linux-gnu/release/servicedb

## static: the statically linked binary for the operator and engine images.
static:
	hack/prereqs.sh file
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --locked --release --target x86_64-unknown-linux-gnu
	@file $(STATIC_BIN)
	@file $(STATIC_BIN) | grep -q 'static' || { echo "$(STATIC_BIN) is not statically linked" >&2; exit 1; }

## engine-static: the engine tests against the statically linked binary.
engine-static: static
	hack/prereqs.sh postgres redis go
	hack/ferretdb/build.sh >/dev/null
	SERVICEDB_TEST_BINARY=$(abspath $(STATIC_BIN)) $(CARGO) test --locked $(ENGINE_TESTS)

clean:
	$(CARGO) clean

## chart: lint the Helm chart and render it with the defaults and with every
## option on (helm from hack/helm.sh, built once from the Go module proxy).
.PHONY: chart
CHART := charts/servicedb
chart:
	@set -e; helm=$$(hack/helm.sh); \
	echo "helm lint $(CHART)"; \
	$$helm lint --strict $(CHART); \
	$$helm lint --strict $(CHART) -f $(CHART)/ci/all-on-values.yaml; \
	echo "helm template $(CHART) (defaults, every option on)"; \
	$$helm template servicedb $(CHART) -n servicedb-system >/dev/null; \
	$$helm template servicedb $(CHART) -n servicedb-system -f $(CHART)/ci/all-on-values.yaml \
	  --api-versions monitoring.coreos.com/v1 | grep -q '^kind: ServiceMonitor$$'; \
	echo "chart ok"

## The real single-node cluster (hack/cluster; root): kubelet, containerd,
## kube-proxy, CoreDNS, kube-router (NetworkPolicy), local-path volumes,
## images built here. cluster-e2e: build, up, images, tests/cluster.rs, down.
CLUSTER_DIR ?= $(HOME)/.cache/servicedb/cluster
.PHONY: cluster-build cluster-images cluster-up cluster-down cluster-e2e
cluster-build:
	hack/prereqs.sh go
	hack/cluster/build.sh >/dev/null

cluster-images: static
	hack/cluster/images.sh --operator $(STATIC_BIN)

## cluster-up: prints the kubeconfig; the operator image is imported too, so
## that servicedb's database pods can start there.
cluster-up:
	@$(MAKE) -s static >&2
	@kc=$$(hack/cluster/up.sh $(CLUSTER_DIR)) && \
	hack/cluster/images.sh --operator $(abspath $(STATIC_BIN)) --import $(CLUSTER_DIR)/containerd/containerd.sock >/dev/null && \
	echo "$$kc"

cluster-down:
	@hack/cluster/down.sh $(CLUSTER_DIR)

cluster-e2e: static
	hack/prereqs.sh go
	CLUSTER_DIR=$(CLUSTER_DIR) hack/cluster/e2e.sh $(abspath $(STATIC_BIN))
