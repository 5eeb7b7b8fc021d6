#!/usr/bin/env bash
# Makes sure the host has what the tests and `make run` need, installing the
# Debian packages itself when it runs as root; otherwise it names what is
# missing and how to get it, and fails.
# Usage: hack/prereqs.sh [postgres] [redis] [prometheus] [promtool] [file] [zstd] [go] [cargo]
set -euo pipefail

missing_apt=()
missing_other=()
for need in "$@"; do
  case $need in
    postgres) [ -x /usr/lib/postgresql/15/bin/postgres ] && command -v pg_dump >/dev/null ||
                missing_apt+=(postgresql-15 postgresql-client-15) ;;
    redis)    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
                missing_apt+=(redis-server redis-tools) ;;
    # Prometheus and the exporters of monitored instances (tests/exporter_scrape.rs).
    prometheus)
              for pkg in prometheus prometheus-postgres-exporter prometheus-redis-exporter; do
                [ -x "/usr/bin/$pkg" ] || missing_apt+=("$pkg")
              done ;;
    file)     command -v file >/dev/null || missing_apt+=(file) ;;
    zstd)     command -v zstd >/dev/null || missing_apt+=(zstd) ;;
    promtool) command -v promtool >/dev/null || missing_apt+=(prometheus) ;;
    go)       command -v go >/dev/null ||
                missing_other+=("go 1.24+ (https://go.dev/dl), to build the test control plane, FerretDB, versitygw and helm") ;;
    cargo)    command -v cargo >/dev/null || missing_other+=("cargo (Rust 1.89+, https://rustup.rs)") ;;
    *) echo "prereqs.sh: unknown prerequisite '$need'" >&2; exit 2 ;;
  esac
done

if [ ${#missing_other[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing_other[@]}" >&2
  exit 1
fi
[ ${#missing_apt[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing_apt[*]}" >&2
  echo "install them (sudo apt-get install ${missing_apt[*]}) or run as root, which installs them" >&2
  exit 1
fi
command -v apt-get >/dev/null || {
  echo "missing packages ${missing_apt[*]} and no apt-get to install them with" >&2
  exit 1
}
echo "installing ${missing_apt[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
