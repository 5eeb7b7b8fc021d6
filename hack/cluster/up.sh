#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine, as root, with
# its state in DIR (default ~/.cache/servicedb/cluster), and prints the path of
# its admin kubeconfig on stdout once the node is Ready (progress on stderr).
# Idempotent: if DIR's cluster is already up it just prints the path.
# Stop it, and undo everything it did to the host, with down.sh DIR.
#
# What runs (all host processes, detached, pid files in DIR/run):
#   etcd, kube-apiserver (on this machine's own address, :6443),
#   kube-controller-manager, kube-scheduler, containerd (its own config,
#   socket and state under DIR), kubelet (cgroupfs), kube-proxy (iptables),
#   CoreDNS (Service kube-dns 10.96.0.10), kube-router (NetworkPolicy only),
#   local-path-provisioner (default StorageClass `standard`).
# Pods get 10.244.0.0/24 on the CNI bridge `servicedb0`; Services 10.96.0.0/16.
# Images come from images.sh (built here, imported into containerd); pods use
# them with imagePullPolicy IfNotPresent, nothing is pulled.
# The settings each carry a reason: see hack/cluster/README.md.
# Usage: hack/cluster/up.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "cluster: $*" >&2; }
die() { echo "up.sh: $*" >&2; exit 1; }

[ $# -le 1 ] || { echo "usage: $0 [DIR]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] ||
  die "the real cluster needs root (it runs containerd and the kubelet, and sets up a bridge, iptables rules and cgroups): run it as root, e.g. sudo $0 $*"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (the images are built for amd64)"

DIR=${1:-${SERVICEDB_CACHE:-$HOME/.cache/servicedb}/cluster}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
. "$here/lib.sh"

# --- already up? -----------------------------------------------------------
if [ -s "$DIR/kubeconfig" ] && all_running && node_ready; then
  echo "$DIR/kubeconfig"
  exit 0
fi
if any_running; then
  die "a cluster in $DIR is partly running ($(running_names)); run hack/cluster/down.sh $DIR first"
fi

# --- host prerequisites ------------------------------------------------------
"$(dirname "$0")/packages.sh"
command -v go >/dev/null || die "go 1.24+ is needed to build the cluster's programs (https://go.dev/dl)"
[ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
[ -d /proc/sys/net/bridge ] ||
  die "the kernel has no br_netfilter (/proc/sys/net/bridge): kube-proxy and NetworkPolicy need it (modprobe br_netfilter)"
[ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no memory cgroup controller under /sys/fs/cgroup"
iptables -w -L -n >/dev/null 2>&1 || die "iptables does not work here: $(iptables -w -L -n 2>&1 | head -1)"
NODE_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$NODE_IP" ] || die "no IPv4 default route: the API server and pods need this machine's own address"
for port in $NODE_IP:6443 127.0.0.1:2379 127.0.0.1:2380 127.0.0.1:10257 127.0.0.1:10259 :10250 $NODE_IP:53; do
  if ss -Hltn "sport = :${port##*:}" | awk '{print $4}' | grep -E "^(\*|0\.0\.0\.0|\[::\]|${port%:*}):${port##*:}$" >/dev/null; then
    die "port $port is already in use on this machine (another cluster?)"
  fi
done
ip link show "$BRIDGE" >/dev/null 2>&1 && die "the bridge $BRIDGE already exists (another cluster, or left over: hack/cluster/down.sh $DIR)"

# --- programs and images -----------------------------------------------------
log "building the cluster's programs (cached)"
BIN=$("$here/build.sh")
echo "$BIN" >"$DIR/bin-dir"
KUBECTL=$BIN/kubectl

# --- what this run changes on the host, so that down.sh can undo it ----------
mkdir -p "$DIR/run" "$DIR/logs"
echo "$NODE_IP" >"$DIR/node-ip"
if [ ! -f "$DIR/host.orig" ]; then
  {
    for s in "${SYSCTLS[@]}"; do
      v=$(sysctl -n "$s" 2>/dev/null) && echo "sysctl $s $v"
    done
    for d in "${HOST_DIRS[@]}"; do [ -e "$d" ] || echo "dir $d"; done
    for c in /sys/fs/cgroup/*/kubepods; do [ -d "$c" ] && echo "cgroup-existed $c"; done
    ipset list -n 2>/dev/null | sed 's/^/ipset /'
  } >"$DIR/host.orig.tmp"
  mv "$DIR/host.orig.tmp" "$DIR/host.orig"
fi
# From here on a failed start undoes itself (SERVICEDB_CLUSTER_KEEP=1 keeps it to look at).
undo_on_failure() {
  local rc=$?
  [ "$rc" -eq 0 ] || [ "${SERVICEDB_CLUSTER_KEEP:-0}" = 1 ] && return
  log "start-up failed: stopping what was started (logs stay in $DIR/logs)"
  "$here/down.sh" "$DIR" >&2 || true
}
trap undo_on_failure EXIT
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1

# --- certificates and kubeconfigs --------------------------------------------
PKI=$DIR/pki
if [ ! -s "$PKI/ca.crt" ]; then
  log "making certificates"
  mkdir -p "$PKI.tmp"
  ( cd "$PKI.tmp"
    ossl() { openssl "$@" 2>/dev/null; }
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 3650 -subj "/CN=servicedb-cluster-ca"
    # cert NAME SUBJECT [SANS]: a key and a certificate signed by the CA.
    cert() {
      ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s\n' \
        "${3:+serverAuth,}clientAuth" "${3:+subjectAltName=$3}" >"$1.ext"
      ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    cert apiserver "/CN=kube-apiserver" \
      "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE,IP:$API_SERVICE_IP,IP:$NODE_IP,IP:127.0.0.1"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    cert kubelet "/CN=$NODE" "DNS:$NODE,IP:$NODE_IP"
    cert node "/O=system:nodes/CN=system:node:$NODE"
    cert admin "/O=system:masters/CN=servicedb-cluster-admin"
    cert kube-controller-manager "/CN=system:kube-controller-manager"
    cert kube-scheduler "/CN=system:kube-scheduler"
    cert kube-proxy "/CN=system:kube-proxy"
    # CoreDNS, kube-router and local-path-provisioner run on the host as
    # trusted parts of the node, like the kubelet.
    cert addons "/O=system:masters/CN=servicedb-cluster-addons"
    ossl genrsa -out sa.key 2048
    ossl rsa -in sa.key -pubout -out sa.pub
    chmod 600 ./*.key )
  mv "$PKI.tmp" "$PKI"
fi
kubeconfig() { # NAME CERT: DIR/kubeconfigs/NAME.kubeconfig
  mkdir -p "$DIR/kubeconfigs"
  cat >"$DIR/kubeconfigs/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: servicedb
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: servicedb
  context: {cluster: servicedb, user: $2}
current-context: servicedb
EOF
}
for c in node kube-controller-manager kube-scheduler kube-proxy addons; do kubeconfig "$c" "$c"; done
KC=$DIR/kubeconfigs

# --- etcd and kube-apiserver ------------------------------------------------
log "starting etcd and kube-apiserver on $NODE_IP:6443"
start etcd "$BIN/etcd" --name=servicedb --data-dir="$DIR/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=servicedb=http://127.0.0.1:2380 --unsafe-no-fsync=true
wait_for etcd 60 curl -fsS http://127.0.0.1:2379/health
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false
# The admin kubeconfig is written once the API answers: its existence means "up".
kubeconfig admin admin
ADMIN=$KC/admin.kubeconfig
k() { "$KUBECTL" --kubeconfig "$ADMIN" "$@"; }
wait_for kube-apiserver 120 k --request-timeout=5s get --raw /readyz

# --- containerd ---------------------------------------------------------------
log "starting containerd"
mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/pod-logs" "$DIR/volume-plugins" "$DIR/volumes"
cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$SOCKET"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The VM's bounding set lacks CAP_SYS_RESOURCE: even root cannot lower
  # oom_score_adj, and runc fails every sandbox unless the CRI keeps the
  # kubelet's -998 at the current value.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
cat >"$DIR/cni/net.d/10-servicedb.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "servicedb",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd /usr/bin/containerd --config "$DIR/containerd/config.toml"
wait_for containerd 60 ctr --address "$SOCKET" version
log "loading images into containerd"
"$here/images.sh" --import "$SOCKET" >/dev/null

# --- controllers -----------------------------------------------------------------
log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$KC/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$KC/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$KC/kube-controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
  --service-cluster-ip-range="$SERVICE_CIDR"
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$KC/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$KC/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$KC/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false

# --- the node -------------------------------------------------------------------
log "starting kubelet and kube-proxy (node $NODE)"
cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCKET
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
readOnlyPort: 0
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podCIDR: $POD_CIDR
podLogsDir: $DIR/pod-logs
volumePluginDir: $DIR/volume-plugins
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No eviction for disk space ("0%" turns a signal off): this machine's disk
# is shared with builds that fill and free gigabytes in minutes, and a
# momentary low evicted database pods and tainted the node (disk-pressure).
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%"}
EOF
start kubelet "$BIN/kubelet" --config="$DIR/kubelet.yaml" --kubeconfig="$KC/node.kubeconfig" \
  --root-dir="$DIR/kubelet" --hostname-override="$NODE" --node-ip="$NODE_IP"
cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KC/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $CLUSTER_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Touch no sysctl that cannot be set here (or would have to be restored).
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
start kube-proxy "$BIN/kube-proxy" --config="$DIR/kube-proxy.yaml"
wait_for kubelet 120 node_ready

# --- add-ons ------------------------------------------------------------------------
log "starting CoreDNS, kube-router (NetworkPolicy) and local-path-provisioner"
cat >"$DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KC/addons.kubeconfig servicedb
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
    loop
}
EOF
start coredns "$BIN/coredns" -conf "$DIR/Corefile"
start kube-router "$BIN/kube-router" --kubeconfig="$KC/addons.kubeconfig" \
  --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
  --hostname-override="$NODE" --metrics-port=0 --health-port=0
mkdir -p "$DIR/local-path"
cat >"$DIR/local-path/config.json" <<EOF
{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$DIR/volumes"]}]}
EOF
cat >"$DIR/local-path/setup" <<'EOF'
#!/bin/sh
set -eu
mkdir -m 0777 -p "$VOL_DIR"
EOF
cat >"$DIR/local-path/teardown" <<'EOF'
#!/bin/sh
set -eu
rm -rf "$VOL_DIR"
EOF
cat >"$DIR/local-path/helper-pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  containers:
  - name: helper-pod
    image: $HELPER_IMAGE
    imagePullPolicy: IfNotPresent
EOF
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $DNS_SERVICE_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
# CoreDNS runs on the host: its endpoint is the node's address.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: servicedb.dev-cluster}
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Namespace
metadata:
  name: local-path-storage
  labels: {pod-security.kubernetes.io/enforce: privileged}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
k -n local-path-storage create configmap local-path-config --dry-run=client -o yaml \
  --from-file=config.json="$DIR/local-path/config.json" --from-file=setup="$DIR/local-path/setup" \
  --from-file=teardown="$DIR/local-path/teardown" --from-file=helperPod.yaml="$DIR/local-path/helper-pod.yaml" |
  k apply -f - >/dev/null
start local-path-provisioner "$BIN/local-path-provisioner" --debug start \
  --kubeconfig="$KC/addons.kubeconfig" --namespace=local-path-storage \
  --configmap-name=local-path-config --config="$DIR/local-path/config.json" \
  --provisioner-name=rancher.io/local-path --service-account-name=default \
  --helper-image="$HELPER_IMAGE"
wait_for coredns 60 dns_answers
wait_for kube-controller-manager 120 k -n default get serviceaccount default
sleep 1
all_running || die "a component stopped during start-up: $(stopped_names) (logs in $DIR/logs)"

# The admin kubeconfig: the usual place for a user to look.
cp "$ADMIN" "$DIR/kubeconfig"
trap - EXIT
log "up: kubectl --kubeconfig $DIR/kubeconfig (kubectl is $KUBECTL)"
echo "$DIR/kubeconfig"
