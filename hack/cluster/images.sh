#!/usr/bin/env bash
# Builds the container images the real cluster runs — no registry is
# involved — as OCI archives cached under ${SERVICEDB_CACHE:-~/.cache/servicedb}/images,
# keyed by their inputs, and prints their paths (one per line, progress on stderr):
#   registry.k8s.io/pause:3.10.1          pause.c from the Kubernetes sources (build.sh)
#   localhost/servicedb/node-helper:1     busybox (Debian busybox-static): local-path's helper pods
#   docker.io/library/postgres:17         Debian trixie postgresql-17, user postgres = 999:999
#   docker.io/library/redis:8.0           Debian trixie redis-server 8.0, user redis = 999:999
#   quay.io/prometheuscommunity/postgres-exporter:<pin>, docker.io/oliver006/redis_exporter:<pin>
#                                         the upstream exporters at the versions src/engine/exporter.rs
#                                         pins, built from their Go modules (build.sh), laid out as
#                                         the upstream images (entrypoint path, user)
#   localhost/servicedb/prometheus:debian Debian trixie prometheus (the scraper of make run's shop
#                                         and of tests/cluster.rs)
#   ghcr.io/servicedb/servicedb:0.1.0     with --operator BIN: the `make static` binary, as the Dockerfile
# The engine images are named as the official ones so the operator's defaults
# work unchanged; they are single-layer images made with mmdebstrap.
# With --import SOCKET it also imports each (if not already there) into that
# containerd's k8s.io namespace.
# Usage: hack/cluster/images.sh [--operator BIN] [--import SOCKET]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${SERVICEDB_CACHE:-$HOME/.cache/servicedb}
OUT=$CACHE/images
MIRROR=${SERVICEDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
operator= socket=
while [ $# -gt 0 ]; do
  case $1 in
    --operator) operator=${2:?--operator BIN}; shift 2 ;;
    --import) socket=${2:?--import SOCKET}; shift 2 ;;
    *) echo "usage: $0 [--operator BIN] [--import SOCKET]" >&2; exit 2 ;;
  esac
done
"$here/packages.sh"
mkdir -p "$OUT"
exec 8>"$OUT/.build.lock"
flock 8

# Image names, kept in one place (the tests and up.sh read them from here).
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
HELPER_IMAGE=localhost/servicedb/node-helper:1
POSTGRES_IMAGE=docker.io/library/postgres:17
REDIS_IMAGE=docker.io/library/redis:8.0
OPERATOR_IMAGE=ghcr.io/servicedb/servicedb:0.1.0
PROMETHEUS_IMAGE=localhost/servicedb/prometheus:debian
source "$here/exporters.sh"
POSTGRES_EXPORTER_IMAGE=$(exporter_image POSTGRES)
REDIS_EXPORTER_IMAGE=$(exporter_image REDIS)

sha() { sha256sum "$1" | cut -d' ' -f1; }
# tar_dir ROOT OUT: a reproducible tar of ROOT's content.
tar_dir() { tar -C "$1" --sort=name --mtime=@0 --numeric-owner -cf "$2" .; }

# oci NAME LAYER_TAR CONFIG_JSON OUT: a single-layer OCI image archive that
# `ctr images import` names NAME. CONFIG_JSON is the image's "config" object.
oci() {
  local name=$1 layer=$2 config=$3 out=$4 dir ldigest lsize cdigest csize mdigest msize
  dir=$(mktemp -d)
  mkdir -p "$dir/blobs/sha256"
  ldigest=$(sha "$layer"); lsize=$(stat -c %s "$layer")
  cp "$layer" "$dir/blobs/sha256/$ldigest"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$ldigest" >"$dir/config.json"
  cdigest=$(sha "$dir/config.json"); csize=$(stat -c %s "$dir/config.json")
  mv "$dir/config.json" "$dir/blobs/sha256/$cdigest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cdigest" "$csize" "$ldigest" "$lsize" >"$dir/manifest.json"
  mdigest=$(sha "$dir/manifest.json"); msize=$(stat -c %s "$dir/manifest.json")
  mv "$dir/manifest.json" "$dir/blobs/sha256/$mdigest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdigest" "$msize" "$name" "${name##*:}" >"$dir/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  tar -C "$dir" --sort=name --mtime=@0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$dir"
}

# image NAME KEY BUILDER: the cached archive for NAME built from inputs KEY;
# BUILDER (a function) is called with the output path when it is missing.
built=()
image() {
  local name=$1 key file
  key=$(printf '%s\n' "$2" "$(declare -f "$3" oci tar_dir)" | sha256sum | cut -c1-16)
  file=$OUT/$(echo "${name##*/}" | tr ':' '-')-$key.tar
  if [ ! -s "$file" ]; then
    echo "building image $name" >&2
    local start=$SECONDS
    "$3" "$file"
    echo "built image $name in $((SECONDS - start))s ($(du -m "$file" | cut -f1) MB)" >&2
  fi
  built+=("$name=$file")
}


# debian_image OUT USER HOME PACKAGE... : Debian trixie minbase with PACKAGEs,
# the engine user USER pre-created as 999:999 (the official images' ids)
# before the packages' postinst scripts would pick another id.
debian_image() {
  local out=$1 user=$2 home=$3; shift 3
  local adduser="echo '$user:x:999:999::$home:/bin/sh' >>\"\$1/etc/passwd\"; echo '$user:x:999:' >>\"\$1/etc/group\""
  local includes; includes=$(IFS=,; echo "$*")
  nice -n 10 mmdebstrap --quiet --mode=root --variant=minbase \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="$includes" \
    --essential-hook="$adduser" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    --customize-hook="${CUSTOMIZE:-true}" \
    trixie "$out" "$MIRROR" >&2
}
postgres_image() {
  CUSTOMIZE='rm -rf "$1"/var/lib/postgresql/17 "$1"/etc/postgresql/17; mkdir -p "$1"/run/postgresql "$1"/var/lib/postgresql/data; chown 999:999 "$1"/run/postgresql "$1"/var/lib/postgresql/data; chmod 3777 "$1"/run/postgresql; test "$(chroot "$1" id -u postgres)" = 999' \
    debian_image "$1.rootfs.tar" postgres /var/lib/postgresql postgresql-17 tzdata
  oci "$POSTGRES_IMAGE" "$1.rootfs.tar" \
    '{"Env":["PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PGDATA=/var/lib/postgresql/data"],"Cmd":["postgres"],"StopSignal":"SIGINT","ExposedPorts":{"5432/tcp":{}}}' "$1"
  rm -f "$1.rootfs.tar"
}
image "$POSTGRES_IMAGE" "trixie postgresql-17 tzdata" postgres_image

redis_image() {
  CUSTOMIZE='mkdir -p "$1"/data; chown 999:999 "$1"/data; test "$(chroot "$1" id -u redis)" = 999' \
    debian_image "$1.rootfs.tar" redis /var/lib/redis redis-server redis-tools
  oci "$REDIS_IMAGE" "$1.rootfs.tar" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["redis-server"],"WorkingDir":"/data","ExposedPorts":{"6379/tcp":{}}}' "$1"
  rm -f "$1.rootfs.tar"
}
image "$REDIS_IMAGE" "trixie redis-server redis-tools" redis_image

prometheus_image() {
  CUSTOMIZE='mkdir -p "$1"/prometheus; chown 999:999 "$1"/prometheus' \
    debian_image "$1.rootfs.tar" prometheus /var/lib/prometheus prometheus
  oci "$PROMETHEUS_IMAGE" "$1.rootfs.tar" \
    '{"User":"999:999","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/usr/bin/prometheus"],"Cmd":["--config.file=/etc/prometheus/prometheus.yml","--storage.tsdb.path=/prometheus"],"WorkingDir":"/prometheus","ExposedPorts":{"9090/tcp":{}}}' "$1"
  rm -f "$1.rootfs.tar"
}
image "$PROMETHEUS_IMAGE" "trixie prometheus" prometheus_image

BIN=$("$here/build.sh")

# static_image NAME BINARY PATH USER: BINARY at PATH (the entrypoint) on an
# empty root with CA certificates, run as USER, as the upstream images are.
static_image() {
  local name=$1 binary=$2 path=$3 user=$4 out=$5 root; root=$(mktemp -d)
  mkdir -p "$root$(dirname "$path")" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$binary" "$root$path"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  tar_dir "$root" "$root.tar"
  oci "$name" "$root.tar" "{\"User\":\"$user\",\"Entrypoint\":[\"$path\"]}" "$out"
  rm -rf "$root" "$root.tar"
}
# Upstream: postgres-exporter's image runs /bin/postgres_exporter as nobody,
# redis_exporter's /redis_exporter as 59000 (the pod's securityContext sets
# the user servicedb runs them as).
postgres_exporter_image() { static_image "$POSTGRES_EXPORTER_IMAGE" "$BIN/postgres_exporter" /bin/postgres_exporter 65534:65534 "$1"; }
image "$POSTGRES_EXPORTER_IMAGE" "$(sha "$BIN/postgres_exporter")" postgres_exporter_image
redis_exporter_image() { static_image "$REDIS_EXPORTER_IMAGE" "$BIN/redis_exporter" /redis_exporter 59000:59000 "$1"; }
image "$REDIS_EXPORTER_IMAGE" "$(sha "$BIN/redis_exporter")" redis_exporter_image

pause_image() {
  local root; root=$(mktemp -d)
  install -m 0755 "$BIN/pause" "$root/pause"
  tar_dir "$root" "$root.tar"
  oci "$PAUSE_IMAGE" "$root.tar" '{"User":"65535:65535","Entrypoint":["/pause"]}' "$1"
  rm -rf "$root" "$root.tar"
}
image "$PAUSE_IMAGE" "$(sha "$BIN/pause")" pause_image

helper_image() {
  local root busybox; root=$(mktemp -d)
  busybox=$(command -v busybox) && file -L "$busybox" | grep 'statically linked' >/dev/null ||
    { echo "images.sh: a static busybox is needed (apt-get install busybox-static)" >&2; exit 1; }
  mkdir -p "$root/bin" "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$busybox" "$root/bin/busybox"
  for cmd in sh mkdir rm rmdir chmod ls cat sleep; do ln -s busybox "$root/bin/$cmd"; done
  tar_dir "$root" "$root.tar"
  oci "$HELPER_IMAGE" "$root.tar" '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}' "$1"
  rm -rf "$root" "$root.tar"
}
image "$HELPER_IMAGE" "$(sha "$(command -v busybox 2>/dev/null || echo /dev/null)")" helper_image

# The operator image, as the Dockerfile describes it: the static binary at
# /usr/local/bin/servicedb (0555) on an empty root with CA certificates and
# the nonroot user 65532, entrypoint the binary, command `operator`.
operator_image() {
  local root; root=$(mktemp -d)
  if readelf -l "$operator" | grep INTERP >/dev/null || readelf -d "$operator" | grep NEEDED >/dev/null; then
    echo "images.sh: $operator is not statically linked (make static)" >&2; exit 1
  fi
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  install -m 0555 "$operator" "$root/usr/local/bin/servicedb"
  strip "$root/usr/local/bin/servicedb"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chown 65532:65532 "$root/home/nonroot"
  tar_dir "$root" "$root.tar"
  oci "$OPERATOR_IMAGE" "$root.tar" \
    '{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":["/usr/local/bin/servicedb"],"Cmd":["operator"],"WorkingDir":"/home/nonroot"}' "$1"
  rm -rf "$root" "$root.tar"
}
if [ -n "$operator" ]; then
  [ -x "$operator" ] || { echo "images.sh: $operator: no such executable (make static)" >&2; exit 1; }
  image "$OPERATOR_IMAGE" "$(sha "$operator")" operator_image
fi

for entry in "${built[@]}"; do
  name=${entry%%=*} file=${entry#*=}
  if [ -n "$socket" ]; then
    # Imported once per archive: containerd labels the image with the archive's key.
    have=$(ctr --address "$socket" -n k8s.io images ls "name==$name" 2>/dev/null | awk 'NR>1{print $NF}' | tr ',' '\n' | sed -n 's/^servicedb.dev\/archive=//p')
    if [ "$have" != "$(basename "$file")" ]; then
      echo "importing $name" >&2
      ctr --address "$socket" -n k8s.io images import --no-unpack=false "$file" >/dev/null
      ctr --address "$socket" -n k8s.io images label "$name" "servicedb.dev/archive=$(basename "$file")" >/dev/null
    fi
  fi
  echo "$file"
done
