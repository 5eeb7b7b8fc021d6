# Shared by up.sh and down.sh (sourced, with DIR set): the cluster's fixed
# names and addresses, and its processes, each known by the pid (and start
# time, against pid reuse) that DIR/run/<name>.pid records.

NODE=servicedb-control-plane
BRIDGE=servicedb0
CLUSTER_CIDR=10.244.0.0/16
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
SOCKET=$DIR/containerd/containerd.sock
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
HELPER_IMAGE=localhost/servicedb/node-helper:1
# In start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy
  coredns kube-router local-path-provisioner)
# Set by the kubelet (kernel defaults it insists on), kube-proxy and up.sh;
# up.sh records their values before the first start, down.sh restores them.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.netfilter.nf_conntrack_max)
# Host folders the kubelet, containerd and the CNI plugins create outside
# DIR whatever they are told; down.sh removes those that did not exist before.
HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd
  /opt/containerd /etc/cni /run/netns)

# What up.sh makes in DIR besides logs/ (down.sh removes exactly these).
STATE=(run pki pki.tmp etcd containerd cni kubelet pod-logs volume-plugins volumes local-path
  kubeconfigs kubeconfig kubelet.yaml kube-proxy.yaml Corefile bin-dir node-ip host.orig host.orig.tmp)

start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# start NAME COMMAND...: runs COMMAND detached (own session, so the caller's
# terminal signals do not reach it), output in DIR/logs/NAME.log.
start() {
  local name=$1; shift
  setsid nohup "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_time "$pid")" >"$DIR/run/$name.pid"
}

# pid_of NAME: the recorded pid if that process still runs (not a zombie).
pid_of() {
  local pid t state
  read -r pid t 2>/dev/null <"$DIR/run/$1.pid" || return 1
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  [ "$(start_time "$pid")" = "$t" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] || return 1
  echo "$pid"
}

running_names() { local n; for n in "${COMPONENTS[@]}"; do pid_of "$n" >/dev/null && printf '%s ' "$n"; done; }
stopped_names() { local n; for n in "${COMPONENTS[@]}"; do pid_of "$n" >/dev/null || printf '%s ' "$n"; done; }
any_running() { [ -n "$(running_names)" ]; }
all_running() { [ -z "$(stopped_names)" ]; }

kubectl_admin() { "$(cat "$DIR/bin-dir")/kubectl" --kubeconfig "$DIR/kubeconfigs/admin.kubeconfig" --request-timeout=5s "$@"; }
node_ready() {
  [ "$(kubectl_admin get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
dns_answers() {
  busybox nslookup kubernetes.default.svc.cluster.local "$(cat "$DIR/node-ip" 2>/dev/null || echo "$NODE_IP")" 2>/dev/null | grep "$API_SERVICE_IP" >/dev/null
}

# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds; fails with NAME's
# log tail if NAME's process ends or time runs out.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$name" >/dev/null; then
      echo "up.sh: $name exited; last lines of $DIR/logs/$name.log:" >&2
      tail -n 30 "$DIR/logs/$name.log" | sed 's/^/    /' >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "up.sh: $name not ready after ${timeout}s; last lines of $DIR/logs/$name.log:" >&2
      tail -n 30 "$DIR/logs/$name.log" | sed 's/^/    /' >&2
      return 1
    fi
    sleep 0.5
  done
}
