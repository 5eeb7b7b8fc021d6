#!/usr/bin/env bash
# The Debian packages the cluster (up.sh) and its images (images.sh) need:
# installed when missing (as root), named otherwise. Debian's containerd
# package must not start the system's own daemon (policy-rc.d while it
# installs).
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables ipset conntrack socat ethtool
  mmdebstrap busybox-static openssl gcc libc6-dev iproute2 kmod file binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "cluster: missing Debian packages: ${missing[*]} (run as root, which installs them)" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "cluster: missing packages ${missing[*]} and no apt-get to install them with" >&2; exit 1; }
echo "cluster: installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
