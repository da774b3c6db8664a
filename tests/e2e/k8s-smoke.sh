#!/usr/bin/env bash
# Smoke test of the upstream components on this host, with no k8sd daemon logic involved
# (only `k8sd images import`): Debian's etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler from kubebin, a private containerd, the kubelet and kube-proxy. The node must
# register and turn Ready, a pod from the local busybox image must run to completion, and
# teardown must leave nothing behind.
#
# Isolation: everything runs inside a network namespace this test creates (`k8sd-smoke-<pid>`),
# whose node address sits on a veth pair kept wholly inside it (10.213.0.2/30), so nothing
# touches the host's interfaces, routes or iptables, and cni0 lives inside the netns. Only the
# network namespace is entered (nsenter --net), so mounts stay in the host's mount namespace,
# where the kubelet and containerd must share them. Data lives in a fresh directory under
# /var/tmp, containerd gets its own root, state and socket, and the kubelet its own root dir,
# cgroup root, pod log dir and IPAM dir.
#
# Prerequisites (missing ones fail the test, never skip it):
#   scripts/setup-host.sh && scripts/build-kube.sh && scripts/build-images.sh
#   (build-images.sh also builds the k8sd binary, whose `images import` loads the images)
# Environment: K8SD_CACHE_DIR (default /var/cache/k8sd), K8SD_IMAGES_DIR (default
# $K8SD_CACHE_DIR/images), K8SD_BIN (default $CARGO_TARGET_DIR or target/, then debug/k8sd),
# KEEP=1 keeps the work directory even on success.
# K8SD_SMOKE_BENCH_OUT=FILE (used by benches/node-startup.sh; unset, nothing changes): polls every
# 0.2 s instead of 1 s and appends "mark NAME EPOCH" lines from starting etcd to the node turning
# Ready; once kube-proxy is healthy it appends "pid NAME PID" per component and "idle", then holds
# the cluster until FILE.done exists (at most K8SD_SMOKE_BENCH_HOLD seconds, default 180), so the
# benchmark can sample the idle processes before the test goes on.
# Output: one line per check; the last line is exactly "N passed, N failed".
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
images_dir=${K8SD_IMAGES_DIR:-$cache/images}
ns=k8sd-smoke-$$
node="k8sd-smoke"
node_ip=10.213.0.2
cgroup_root=/k8sd-smoke-$$
pod_cidr=10.88.0.0/16
version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
k8sd=${K8SD_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/k8sd}

passed=0 failed=0
work="" kubebin="" runtime_dir=""
declare -A pids=()

say() { echo "$*"; }
ok() { passed=$((passed + 1)); say "ok - $*"; }
nok() { failed=$((failed + 1)); say "FAIL - $*"; }
# check DESC CMD...: one non-fatal check.
check() { local d=$1; shift; if "$@"; then ok "$d"; else nok "$d"; fi; }
# must DESC CMD...: a check the rest depends on; on failure dump logs and stop.
must() { local d=$1; shift; if "$@"; then ok "$d"; else nok "$d"; dump_logs; exit 1; fi; }
# wait_for SECONDS CMD...: poll every second until CMD succeeds or time runs out.
bench_out=${K8SD_SMOKE_BENCH_OUT:-}
poll=1; [[ -z "$bench_out" ]] || poll=0.2
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep "$poll"; done
}
# bench_mark NAME: with K8SD_SMOKE_BENCH_OUT, record when a bring-up step finished.
bench_mark() { [[ -z "$bench_out" ]] || echo "mark $1 $(date +%s.%N)" >> "$bench_out"; }
inns() { nsenter --net="/run/netns/$ns" -- "$@"; }
kubectl() { inns "$kubebin" kubectl --kubeconfig "$work/pki/admin.conf" "$@"; }
# containerd 2's ctr prints the server's deprecations (cgroup v1 on these hosts) on stderr at
# every call; they are in containerd's own log, and here they would read as leftover output.
ctr_() { CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 ctr --address "$work/containerd/containerd.sock" --namespace k8s.io "$@"; }

# start NAME CMD...: run a component in the netns, logging to $work/logs/NAME.log.
# nsenter execs the command, so the recorded pid is the component's own.
start() {
  local name=$1; shift
  nsenter --net="/run/netns/$ns" -- "$@" >"$work/logs/$name.log" 2>&1 &
  pids[$name]=$!
}
stop() {  # stop NAME...: SIGTERM to all, up to 20 s together, then SIGKILL
  local name pid deadline=$((SECONDS + 20))
  for name in "$@"; do
    pid=${pids[$name]:-}
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
  done
  for name in "$@"; do
    pid=${pids[$name]:-}
    [[ -n "$pid" ]] || continue
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    # Forgotten only once dead, so a teardown interrupted here is completed by the exit trap.
    unset "pids[$name]"
  done
}

dumped=0
dump_logs() {
  [[ -n "$work" && -d "$work/logs" && $dumped -eq 0 ]] || return 0
  dumped=1
  say "--- diagnostics (work dir $work)"
  if [[ -n "${pids[kube-apiserver]:-}" ]]; then
    kubectl get nodes -o wide 2>&1 | sed 's/^/  | /'
    kubectl get pods -A -o wide 2>&1 | sed 's/^/  | /'
    kubectl describe pod smoke 2>&1 | tail -n 25 | sed 's/^/  | /'
  fi
  local f
  for f in "$work"/logs/*.log; do
    [[ -s "$f" ]] || continue
    say "--- last lines of $f (klog info and warning lines left out)"
    # Left out too: kcm and scheduler complain until the apiserver publishes requestheader CAs,
    # which this cluster does not configure (no aggregation layer).
    grep -vE '^[IW][0-9]{4} |requestheader-client-ca-file' "$f" | tail -n 15 | cut -c1-300 | sed 's/^/  | /'
  done
}

teardown_args() {
  echo --netns "$ns" --kubelet-root "$work/kubelet" \
    --containerd-address "$work/containerd/containerd.sock" --containerd-root "$work/containerd/root" \
    --containerd-state "$work/containerd/state" --cgroup-root "$cgroup_root" \
    --cni-ipam-dir "$work/cni/ipam" --pod-logs-dir "$work/pod-logs"
}

# Teardown, in two stages. Stage 1 stops the kubelet and the control-plane components that
# act on it and removes containers while containerd still runs; stage 2 stops containerd and
# the API, and runs the host teardown again, which must then be a harmless no-op apart from
# deleting the netns (proving idempotence).
# Each stage is marked done only at its end, so the exit trap re-runs an interrupted one
# (everything in it is idempotent).
stage=0
teardown_stage1() {
  ((stage < 1)) || return 0
  if [[ -n "$work" ]]; then
    stop kube-proxy kubelet kube-scheduler kube-controller-manager
    # shellcheck disable=SC2046
    "$repo/scripts/teardown-host.sh" $(teardown_args) >>"$work/logs/teardown.log" 2>&1
  fi
  stage=1
}
teardown_stage2() {
  ((stage < 2)) || return 0
  teardown_stage1
  if [[ -n "$work" ]]; then
    stop containerd kube-apiserver etcd
    # shellcheck disable=SC2046
    "$repo/scripts/teardown-host.sh" $(teardown_args) >>"$work/logs/teardown.log" 2>&1
  fi
  stage=2
}

on_exit() {
  local rc=$?
  trap '' INT TERM  # finish cleaning up even if interrupted again
  teardown_stage2
  if ((failed > 0 || rc != 0)); then
    ((failed > 0)) || nok "aborted (exit $rc)"
    dump_logs
    [[ -z "$work" ]] || say "work directory kept: $work"
  elif [[ -n "$work" && "${KEEP:-0}" != 1 ]]; then
    rm -rf "$work"
  fi
  say "$passed passed, $failed failed"
  ((failed == 0)) || exit 1
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# --- prerequisites -------------------------------------------------------------------------
prereqs() {
  local missing=() b
  [[ $(id -u) -eq 0 ]] || missing+=("root")
  for b in etcd etcdctl openssl nsenter ip iptables curl; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  for b in bridge host-local portmap loopback; do [[ -x /usr/lib/cni/$b ]] || missing+=("/usr/lib/cni/$b"); done
  for b in pause busybox; do [[ -s "$images_dir/$b.tar" ]] || missing+=("$images_dir/$b.tar (scripts/build-images.sh)"); done
  [[ -x "$k8sd" ]] || missing+=("k8sd binary $k8sd (cargo build, or set K8SD_BIN)")
  if ! kubebin=$("$repo/scripts/build-kube.sh" --check 2>/dev/null); then
    missing+=("kubebin $version (scripts/build-kube.sh)")
  fi
  if [[ -n "${K8SD_RUNTIME_DIR:-}" ]]; then
    runtime_dir=$K8SD_RUNTIME_DIR
    for b in containerd containerd-shim-runc-v2 ctr runc; do [[ -x "$runtime_dir/$b" ]] || missing+=("$runtime_dir/$b"); done
  elif ! runtime_dir=$("$repo/scripts/build-runtime.sh" --check 2>/dev/null | tail -n 1); then
    missing+=("containerd 2 and runc (scripts/build-runtime.sh)")
  fi
  if ((${#missing[@]})); then
    say "missing prerequisites: ${missing[*]}; run scripts/setup-host.sh, scripts/build-kube.sh, scripts/build-runtime.sh, scripts/build-images.sh"
    return 1
  fi
  # containerd 2 finds its shim on PATH; this script's `ctr` and teardown-host.sh use it too.
  export PATH="$runtime_dir:$PATH" K8SD_RUNTIME_DIR=$runtime_dir
}
must "prerequisites present" prereqs
must "kube-apiserver --version is Kubernetes $version" \
  test "$("$kubebin" kube-apiserver --version)" = "Kubernetes $version"

host_cni0_before=0; ip link show cni0 >/dev/null 2>&1 && host_cni0_before=1
# The pod network namespaces of this test's sandboxes, from the CRI's specs in our containerd
# (the machine-wide /run/netns/cni-* list also changes with other clusters running beside us).
our_pod_netns() {
  local id
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers info "$id" 2>/dev/null | grep -oE '"/(var/)?run/netns/cni-[0-9a-f-]+"' | tr -d '"'
  done | sort -u
}

# --- work dir, netns, cgroup root ----------------------------------------------------------
work=$(mktemp -d /var/tmp/k8sd-smoke.XXXXXX)
mkdir -p "$work"/{logs,pki,etcd,kubelet,pod-logs,containerd/root,containerd/state,cni/net.d,cni/ipam}

setup_netns() {
  ip netns add "$ns" &&
    ip -n "$ns" link set lo up &&
    # Both ends of the veth pair stay inside the netns (this kernel has no dummy driver):
    # k8sd0 carries the node IP, k8sd1 the /30's other address as a default gateway, so
    # components that look for a default route find one. Nothing leaves the netns.
    ip -n "$ns" link add k8sd0 type veth peer name k8sd1 &&
    ip -n "$ns" addr add "$node_ip/30" dev k8sd0 &&
    ip -n "$ns" addr add 10.213.0.1/30 dev k8sd1 &&
    ip -n "$ns" link set k8sd0 up &&
    ip -n "$ns" link set k8sd1 up &&
    ip -n "$ns" route add default via 10.213.0.1 dev k8sd0
}
must "network namespace $ns with node IP $node_ip" setup_netns

setup_cgroups() {  # the kubelet requires its cgroupRoot to exist in every hierarchy
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f "$h/cgroup.procs" ]] || continue
    mkdir -p "$h${cgroup_root#/}" || return 1
    if [[ -f "$h/cpuset.cpus" ]]; then  # v1 cpuset children start empty
      cat "$h/cpuset.cpus" > "$h${cgroup_root#/}/cpuset.cpus" && cat "$h/cpuset.mems" > "$h${cgroup_root#/}/cpuset.mems" || return 1
    fi
  done
}
must "private cgroup root $cgroup_root" setup_cgroups

# --- PKI (openssl, ECDSA P-256, kubeadm-shaped names) -----------------------------------------
pki=$work/pki
cert() {  # cert NAME SUBJECT EKU [SANS]
  local name=$1 subj=$2 eku=$3 sans=${4:-}
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null &&
    openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null &&
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$eku"
      [[ -z "$sans" ]] || echo "subjectAltName=$sans"
    } > "$pki/$name.ext" &&
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 2 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}
kubeconfig() {  # kubeconfig FILE CERTNAME
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: user
  user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}
contexts:
- name: smoke
  context: {cluster: smoke, user: user}
current-context: smoke
EOF
}
make_pki() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null &&
    openssl req -x509 -new -key "$pki/ca.key" -subj /CN=kubernetes-ca -days 2 -out "$pki/ca.crt" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null &&
    openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null &&
    openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null &&
    cert apiserver /CN=kube-apiserver serverAuth \
      "DNS:localhost,DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$node_ip,IP:10.96.0.1" &&
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth &&
    cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth &&
    cert controller-manager /CN=system:kube-controller-manager clientAuth &&
    cert scheduler /CN=system:kube-scheduler clientAuth &&
    cert kubelet-client "/O=system:nodes/CN=system:node:$node" clientAuth &&
    cert kubelet "/CN=system:node:$node" serverAuth "DNS:$node,IP:$node_ip" &&
    cert proxy /CN=system:kube-proxy clientAuth &&
    chmod 600 "$pki"/*.key &&
    kubeconfig "$pki/admin.conf" admin &&
    kubeconfig "$pki/controller-manager.conf" controller-manager &&
    kubeconfig "$pki/scheduler.conf" scheduler &&
    kubeconfig "$pki/kubelet.conf" kubelet-client &&
    kubeconfig "$pki/proxy.conf" proxy
}
must "test PKI generated" make_pki

# --- control plane -------------------------------------------------------------------------
bench_mark start
start etcd etcd --name smoke --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster smoke=http://127.0.0.1:2380
must "etcd healthy on the netns loopback" \
  wait_for 30 inns env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 endpoint health
bench_mark etcd-healthy

start kube-apiserver "$kubebin" kube-apiserver \
  --advertise-address="$node_ip" --bind-address=0.0.0.0 --secure-port=6443 \
  --etcd-servers=http://127.0.0.1:2379 --storage-backend=etcd3 --etcd-prefix=/registry \
  --etcd-healthcheck-timeout=10s --etcd-readycheck-timeout=10s \
  --service-cluster-ip-range=10.96.0.0/12 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --api-audiences=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false --anonymous-auth=false
readyz() { test "$(kubectl get --raw /readyz 2>/dev/null)" = ok; }
must "kube-apiserver /readyz within 120 s" wait_for 120 readyz
bench_mark apiserver-ready
api_version() { kubectl get --raw /version | grep -q "\"gitVersion\": \"$version\""; }
check "apiserver reports gitVersion $version" api_version

start kube-controller-manager "$kubebin" kube-controller-manager \
  --kubeconfig="$pki/controller-manager.conf" --authentication-kubeconfig="$pki/controller-manager.conf" \
  --authorization-kubeconfig="$pki/controller-manager.conf" --bind-address=127.0.0.1 \
  --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
  --use-service-account-credentials=true --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" --leader-elect=false --profiling=false
start kube-scheduler "$kubebin" kube-scheduler \
  --kubeconfig="$pki/scheduler.conf" --authentication-kubeconfig="$pki/scheduler.conf" \
  --authorization-kubeconfig="$pki/scheduler.conf" --bind-address=127.0.0.1 --leader-elect=false
must "controller-manager created the default ServiceAccount within 90 s" \
  wait_for 90 kubectl get serviceaccount default -n default
bench_mark default-serviceaccount

# --- node: containerd + kubelet ------------------------------------------------------------
render() {  # render TEMPLATE OUT: replace every {{marker}}; a leftover marker is an error
  sed -e "s|{{containerd_root}}|$work/containerd/root|g" \
    -e "s|{{containerd_state}}|$work/containerd/state|g" \
    -e "s|{{containerd_address}}|$work/containerd/containerd.sock|g" \
    -e "s|{{cni_conf_dir}}|$work/cni/net.d|g" \
    -e "s|{{cni_ipam_dir}}|$work/cni/ipam|g" \
    -e "s|{{cni_bin_dir}}|/usr/lib/cni|g" \
    -e "s|{{pod_cidr}}|$pod_cidr|g" \
    -e "s|{{pki_dir}}|$pki|g" \
    -e "s|{{cgroup_root}}|$cgroup_root|g" \
    -e "s|{{pod_logs_dir}}|$work/pod-logs|g" \
    -e "s|{{kubeconfig}}|$pki/proxy.conf|g" \
    -e "s|{{node_name}}|$node|g" \
    -e "s|{{cluster_dns}}|[\"10.96.0.10\"]|g" \
    -e "s|{{resolv_conf}}|/etc/resolv.conf|g" \
    -e "s|{{tls_min_version}}|VersionTLS12|g" \
    -e "s|{{tls_cipher_suites}}|[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]|g" \
    -e "s|{{runc}}|$runtime_dir/runc|g" \
    -e "s|{{registry_config_dir}}|$work/registry|g" \
    "$repo/assets/$1" > "$2" && ! grep -n '{{' "$2"
}
render_all() {
  render containerd/config.toml "$work/containerd/config.toml" &&
    render cni/10-k8sd.conflist "$work/cni/net.d/10-k8sd.conflist" &&
    render kubelet/config.yaml "$work/kubelet-config.yaml" &&
    render kube-proxy/config.yaml "$work/kube-proxy-config.yaml"
}
must "config templates rendered" render_all

start containerd containerd --config "$work/containerd/config.toml"
must "private containerd answers on its socket" \
  wait_for 30 ctr --address "$work/containerd/containerd.sock" version
import_images() {  # through k8sd's own import (src/images), twice: it must be idempotent
  for _ in 1 2; do
    "$k8sd" images import --address "$work/containerd/containerd.sock" \
      "$images_dir/pause.tar" "$images_dir/busybox.tar" >>"$work/logs/import.log" 2>&1 || return 1
  done
  local have
  have=$(ctr_ images ls -q)
  grep -qx 'registry.k8s.io/pause:3.10' <<<"$have" && grep -qx 'docker.io/library/busybox:1.37-local' <<<"$have"
}
must "local images imported under normalized names" import_images
bench_mark containerd-ready-images-imported

start kubelet "$kubebin" kubelet --config="$work/kubelet-config.yaml" --kubeconfig="$pki/kubelet.conf" \
  --hostname-override="$node" --node-ip="$node_ip" --root-dir="$work/kubelet"
must "node $node registers within 120 s" wait_for 120 kubectl get node "$node"
bench_mark node-registered
node_ready() {
  test "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True
}
must "node $node Ready within 180 s" wait_for 180 node_ready
bench_mark node-ready
# kube-proxy is optional for pods but cheap, and this exercises its config template.
start kube-proxy "$kubebin" kube-proxy --config="$work/kube-proxy-config.yaml"
proxy_healthy() { inns curl -sf http://127.0.0.1:10256/healthz >/dev/null; }
check "kube-proxy healthy within 60 s" wait_for 60 proxy_healthy
bench_hold() {  # hand the running components to the benchmark, and wait until it is done
  local name hold=$((SECONDS + ${K8SD_SMOKE_BENCH_HOLD:-180}))
  for name in "${!pids[@]}"; do echo "pid $name ${pids[$name]}" >> "$bench_out"; done
  echo idle >> "$bench_out"
  while [[ ! -e "$bench_out.done" ]] && ((SECONDS < hold)); do sleep 1; done
}
[[ -z "$bench_out" ]] || bench_hold
check "node reports kubeletVersion $version" \
  test "$(kubectl get node "$node" -o jsonpath='{.status.nodeInfo.kubeletVersion}')" = "$version"
check "node InternalIP is $node_ip" \
  test "$(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" = "$node_ip"

# --- a pod runs to completion --------------------------------------------------------------
kubectl apply -f - >"$work/logs/kubectl.log" 2>&1 <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: default
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: busybox
    image: busybox:1.37-local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello-from-k8sd uid=$(id -u); ls /var/run/secrets/kubernetes.io/serviceaccount/token"]
EOF
check "pod created" test $? -eq 0
phase() { kubectl get pod smoke -o jsonpath='{.status.phase}' 2>/dev/null; }
pod_done() { [[ "$(phase)" == Succeeded || "$(phase)" == Failed ]]; }
wait_for 120 pod_done
must "pod ran to completion (phase Succeeded) within 120 s" test "$(phase)" = Succeeded
pod_log=$(kubectl logs smoke 2>&1)
check "pod log shows the busybox command ran as root (got: ${pod_log//$'\n'/ | })" \
  grep -q '^hello-from-k8sd uid=0$' <<<"$pod_log"
check "service account token was mounted" grep -q 'serviceaccount/token$' <<<"$pod_log"
pod_ip=$(kubectl get pod smoke -o jsonpath='{.status.podIP}')
netns_seen=$(our_pod_netns)
check "the pod's sandbox has a network namespace (${netns_seen:-none})" test -n "$netns_seen"
check "pod IP $pod_ip is from the CNI range $pod_cidr" test "${pod_ip%.*.*}" = "${pod_cidr%.*.*}"
cni0_in_netns() { inns ip link show cni0 >/dev/null 2>&1; }
check "cni0 exists inside the test netns" cni0_in_netns
kubectl delete pod smoke --wait=true --timeout=60s >>"$work/logs/kubectl.log" 2>&1
check "pod deleted through the API" test -z "$(kubectl get pods -n default -o name 2>/dev/null)"

# --- teardown leaves nothing behind ---------------------------------------------------------
teardown_stage1
check "no containers left in the private containerd" test -z "$(ctr_ containers ls -q 2>&1)"
teardown_stage2
check "teardown reported clean twice (idempotent)" \
  test "$(grep -c '^teardown: clean$' "$work/logs/teardown.log")" = 2
check "no mounts left under $work" bash -c "! awk '{print \$5}' /proc/self/mountinfo | grep -q '^$work'"
check "no kubepods cgroups or cgroup root left" bash -c "! ls -d /sys/fs/cgroup/*/${cgroup_root#/} 2>/dev/null | grep -q ."
check "test netns $ns deleted" test ! -e "/run/netns/$ns"
netns_left() { local f; for f in $netns_seen; do [[ ! -e "$f" ]] || return 1; done; }
check "no pod network namespace of this test left ($(echo $netns_seen))" netns_left
host_cni0_after=0; ip link show cni0 >/dev/null 2>&1 && host_cni0_after=1
check "no cni0 created on the host" test "$host_cni0_after" -le "$host_cni0_before"
no_leftover_processes() {  # nothing running whose command line names our work dir
  local p left=()
  for p in /proc/[0-9]*; do
    [[ "${p#/proc/}" != "$$" ]] || continue
    if { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "$work"; then left+=("${p#/proc/}"); fi
  done
  ((${#left[@]} == 0)) || { say "  left running: ${left[*]}"; return 1; }
}
check "no component, shim or pod processes left" no_leftover_processes
