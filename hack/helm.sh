#!/usr/bin/env bash
# Builds Helm from the Go module proxy (the only source: no release tarballs,
# no get-helm scripts) into ~/.cache/servicedb/helm-<version>/bin, once, and
# prints the path of the binary. Safe to run concurrently.
# Usage: hack/helm.sh        # prints e.g. /root/.cache/servicedb/helm-v3.19.0/bin/helm
set -euo pipefail
HELM_VERSION=v3.19.0
OUT=${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/helm-$HELM_VERSION/bin
helm=$OUT/helm
if [ -x "$helm" ]; then echo "$helm"; exit 0; fi
command -v go >/dev/null || { echo "helm.sh: go is required (1.24+) to build helm" >&2; exit 1; }
mkdir -p "$OUT"
if command -v flock >/dev/null; then
  exec 9>"$OUT/.build.lock"
  flock 9
  if [ -x "$helm" ]; then echo "$helm"; exit 0; fi
fi
echo "building helm $HELM_VERSION from the Go module proxy" >&2
start=$SECONDS
# `go install pkg@version` builds outside any module, so the repo's GOFLAGS
# (-mod=mod for hack/testenv) must not leak in. GOPROXY without `direct`: a
# module the proxy lacks is an error, never a fetch from its VCS host
# (SERVICEDB_GOPROXY names a mirror of the proxy instead).
# The -X flags are what Helm's own Makefile sets: the version `helm version`
# prints and the Kubernetes version `helm template` assumes.
GOFLAGS= GOPROXY=${SERVICEDB_GOPROXY:-https://proxy.golang.org} CGO_ENABLED=0 GOBIN="$OUT.$$.tmp" \
  go install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=34 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$OUT.$$.tmp/helm" "$helm"
rmdir "$OUT.$$.tmp"
echo "built helm in $((SECONDS - start))s" >&2
echo "$helm"
