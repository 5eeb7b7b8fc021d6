#!/usr/bin/env bash
# Builds versitygw (Apache-2.0; an S3 gateway with SigV4 authentication and a
# posix backend: a bucket is a directory) from the Go module proxy into
# ~/.cache/servicedb/versitygw-<version>/bin, once, and prints the path of the
# binary. The backup agent tests (tests/agent_*.rs) store backups in it.
# Safe to run concurrently (builds are serialised with flock).
# Usage: hack/s3/build.sh   # prints e.g. /root/.cache/servicedb/versitygw-v1.8.0/bin/versitygw
set -euo pipefail
VERSION=v1.8.0
OUT=${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/versitygw-$VERSION/bin
bin=$OUT/versitygw
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
command -v go >/dev/null || { echo "s3/build.sh: go is required (1.25+) to build versitygw" >&2; exit 1; }
mkdir -p "$OUT"
if command -v flock >/dev/null; then
  exec 9>"$OUT/.build.lock"
  flock 9
  if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
fi
echo "building versitygw $VERSION from the Go module proxy" >&2
start=$SECONDS
# versitygw's go.mod has no replace directives, so `go install pkg@version`
# builds it with exactly the versions its go.sum pins. Outside any module:
# the repo's GOFLAGS must not leak in. GOPROXY without `direct`: a module the
# proxy lacks is an error, never a fetch from its VCS host (SERVICEDB_GOPROXY
# names a mirror of the proxy instead). CGO off: the RDMA/GPU extras need
# vendor libraries and are not built into cmd/versitygw without cgo tags.
GOFLAGS=-mod=mod GOPROXY=${SERVICEDB_GOPROXY:-https://proxy.golang.org} CGO_ENABLED=0 GOBIN="$OUT.$$.tmp" \
  go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSION"
mv "$OUT.$$.tmp/versitygw" "$bin"
rmdir "$OUT.$$.tmp"
echo "built versitygw in $((SECONDS - start))s" >&2
echo "$bin"
