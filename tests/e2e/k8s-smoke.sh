#!/usr/bin/env bash
# Smoke test of the upstream components on this host, with no k8sd daemon involved: Debian's
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler from kubebin, a private
# containerd, the kubelet and kube-proxy. The node must register and turn Ready, a pod from the
# local busybox image must run to completion, and teardown must leave nothing behind. A failure
# here is the kube build's, the images', the runtime's or the host's, not the daemon's.
#
# What k8sd would write and run comes from k8sd itself, so nothing here re-implements it:
# `k8sd debug render` writes a control-plane node's data dir exactly as `k8sd init` does (PKI,
# kubeconfigs, containerd, kubelet and kube-proxy configs, the audit policy, the Secrets key)
# and prints every component's command line and environment; this script runs those command
# lines as they are. Two things the daemon would provide are asked of render instead: the
# kubeconfigs name kube-apiserver itself (--kubeconfig-server; the local API load balancer is
# the daemon's), and the CNI configuration is written for the Node's first /24
# (--node-pod-cidr; the daemon writes it once controller-manager gives the Node its range).
# Debian's etcd stands in for k8sd's datastore at the address and with the TLS files the
# render names (client certificates required, on both the client and the peer port).
# Only `k8sd debug render` and `k8sd images import` run; neither starts anything.
#
# Isolation: everything runs inside a network namespace this test creates (`k8sd-smoke-<pid>`),
# whose node address sits on a veth pair kept wholly inside it (10.213.0.2/30), so nothing
# touches the host's interfaces, routes or iptables, and cni0 lives inside the netns. Only the
# network namespace is entered (nsenter --net), so mounts stay in the host's mount namespace,
# where the kubelet and containerd must share them. The node's data and run dirs live in a
# fresh directory under /var/tmp, so containerd gets its own root, state and socket, and the
# kubelet its own root dir, pod log dir and IPAM dir; the kubelet's cgroup root is private.
#
# Prerequisites (missing ones fail the test, never skip it):
#   scripts/setup-host.sh && scripts/build-kube.sh && scripts/build-runtime.sh &&
#   scripts/build-images.sh   (build-images.sh also builds the k8sd binary)
# Environment: K8SD_CACHE_DIR (default /var/cache/k8sd), K8SD_IMAGES_DIR (default
# $K8SD_CACHE_DIR/images), K8SD_BIN (default $CARGO_TARGET_DIR or target/, then debug/k8sd),
# K8SD_RUNTIME_DIR (default: scripts/build-runtime.sh --check), KEEP=1 keeps the work
# directory even on success.
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
# controller-manager gives the first Node the first /24 of the pod range (--node-cidr-mask-size).
node_pod_cidr=10.88.0.0/24
version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
k8sd=${K8SD_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/k8sd}

passed=0 failed=0
work="" kubebin="" runtime_dir="" rendered=""
# The rendered node's paths, set from the render's report (`layout`).
admin_conf="" kubelet_root="" containerd_sock="" containerd_root="" containerd_state=""
cni_ipam_dir="" pod_logs_dir=""
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
kubectl() { inns "$kubebin" kubectl --kubeconfig "$admin_conf" "$@"; }
# containerd 2's ctr prints the server's deprecations (cgroup v1 on these hosts) on stderr at
# every call; they are in containerd's own log, and here they would read as leftover output.
ctr_() { CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 ctr --address "$containerd_sock" --namespace k8s.io "$@"; }
# Reading the render's report: layout KEY, datastore KEY, and FLAG's value in COMPONENT's
# command line.
layout() { jq -er --arg k "$1" '.layout[$k]' "$rendered"; }
datastore() { jq -er --arg k "$1" '.datastore[$k]' "$rendered"; }
rendered_flag() {
  jq -er --arg c "$1" --arg f "--$2=" \
    'first(.components[] | select(.name == $c) | .argv[] | select(startswith($f)) | ltrimstr($f))' "$rendered"
}

# start NAME CMD...: run a component in the netns, logging to $work/logs/NAME.log.
# nsenter and env exec the command, so the recorded pid is the component's own.
start() {
  local name=$1; shift
  nsenter --net="/run/netns/$ns" -- "$@" >"$work/logs/$name.log" 2>&1 &
  pids[$name]=$!
}
# run_rendered NAME: start component NAME with the command line and environment k8sd rendered.
run_rendered() {
  local name=$1 argv=() env=()
  mapfile -d '' -t argv < <(jq -j --arg c "$name" \
    '.components[] | select(.name == $c) | .argv[] | (., "\u0000")' "$rendered")
  mapfile -d '' -t env < <(jq -j --arg c "$name" \
    '.components[] | select(.name == $c) | .env | to_entries[] | ("\(.key)=\(.value)", "\u0000")' "$rendered")
  ((${#argv[@]})) || { nok "$name has no command line in $rendered"; return 1; }
  start "$name" env "${env[@]}" "${argv[@]}"
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
    grep -vE '^[IW][0-9]{4} ' "$f" | tail -n 15 | cut -c1-300 | sed 's/^/  | /'
  done
}

# The host teardown of this test's node (scripts/teardown-host.sh with its paths). Before the
# render named them nothing was started: only the netns and the cgroup root are removed, since
# teardown-host.sh's defaults are the machine's own containerd and kubelet.
teardown_host() {
  if [[ -z "$kubelet_root" ]]; then
    ip netns delete "$ns" 2>/dev/null
    rmdir /sys/fs/cgroup/*/"${cgroup_root#/}" 2>/dev/null
    return 0
  fi
  "$repo/scripts/teardown-host.sh" --netns "$ns" --kubelet-root "$kubelet_root" \
    --containerd-address "$containerd_sock" --containerd-root "$containerd_root" \
    --containerd-state "$containerd_state" --cgroup-root "$cgroup_root" \
    --cni-ipam-dir "$cni_ipam_dir" --pod-logs-dir "$pod_logs_dir" >>"$work/logs/teardown.log" 2>&1
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
    teardown_host
  fi
  stage=1
}
teardown_stage2() {
  ((stage < 2)) || return 0
  teardown_stage1
  if [[ -n "$work" ]]; then
    stop containerd kube-apiserver etcd
    teardown_host
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
  for b in etcd etcdctl jq nsenter ip iptables curl; do
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
mkdir -p "$work"/{logs,etcd}
rendered=$work/render.json

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

# --- the node as k8sd renders it -----------------------------------------------------------
render_node() {
  # In the netns: render checks, as init does, that the advertise address is this machine's.
  inns "$k8sd" --data-dir "$work/node" --run-dir "$work/run" debug render \
    --node-name "$node" --advertise-address "$node_ip" --pod-cidr "$pod_cidr" \
    --kubebin "$kubebin" --runtime-dir "$runtime_dir" --images-dir "$images_dir" \
    --cgroup-root "$cgroup_root" --node-pod-cidr "$node_pod_cidr" \
    --kubeconfig-server https://127.0.0.1:6443 >"$rendered" 2>"$work/logs/render.log" || return 1
  admin_conf=$(layout admin-kubeconfig) && kubelet_root=$(layout kubelet-root) &&
    containerd_sock=$(layout containerd-socket) && containerd_root=$(layout containerd-root) &&
    containerd_state=$(layout containerd-state) && cni_ipam_dir=$(layout cni-ipam-dir) &&
    pod_logs_dir=$(layout pod-logs-dir)
}
must "k8sd debug render wrote the node's PKI, kubeconfigs and configs" render_node
in_start_order() {
  jq -e '[.components[].name] == ["kube-apiserver", "kube-controller-manager", "kube-scheduler",
    "containerd", "kubelet", "kube-proxy"]' "$rendered" >/dev/null
}
check "the render names all six components in start order" in_start_order
check "kube-apiserver's rendered --etcd-servers is the datastore address etcd will serve" \
  test "$(rendered_flag kube-apiserver etcd-servers)" = "$(datastore client-url)"

# --- control plane -------------------------------------------------------------------------
bench_mark start
# Debian's etcd in place of k8sd's datastore: its client and peer addresses and TLS files.
start etcd etcd --name smoke --data-dir "$work/etcd" \
  --listen-client-urls "$(datastore client-url)" --advertise-client-urls "$(datastore client-url)" \
  --cert-file "$(datastore cert-file)" --key-file "$(datastore key-file)" \
  --trusted-ca-file "$(datastore trusted-ca-file)" --client-cert-auth \
  --listen-peer-urls "$(datastore peer-url)" --initial-advertise-peer-urls "$(datastore peer-url)" \
  --initial-cluster "smoke=$(datastore peer-url)" \
  --peer-cert-file "$(datastore peer-cert-file)" --peer-key-file "$(datastore peer-key-file)" \
  --peer-trusted-ca-file "$(datastore trusted-ca-file)" --peer-client-cert-auth
# etcdctl with kube-apiserver's own datastore client certificate.
etcd_health() {
  inns env ETCDCTL_API=3 etcdctl --endpoints "$(datastore client-url)" \
    --cacert "$(rendered_flag kube-apiserver etcd-cafile)" \
    --cert "$(rendered_flag kube-apiserver etcd-certfile)" \
    --key "$(rendered_flag kube-apiserver etcd-keyfile)" endpoint health
}
must "etcd healthy on the netns loopback (TLS, kube-apiserver's client certificate)" \
  wait_for 30 etcd_health
bench_mark etcd-healthy

run_rendered kube-apiserver
readyz() { test "$(kubectl get --raw /readyz 2>/dev/null)" = ok; }
must "kube-apiserver /readyz within 120 s" wait_for 120 readyz
bench_mark apiserver-ready
api_version() { kubectl get --raw /version | grep -q "\"gitVersion\": \"$version\""; }
check "apiserver reports gitVersion $version" api_version

run_rendered kube-controller-manager
run_rendered kube-scheduler
must "controller-manager created the default ServiceAccount within 90 s" \
  wait_for 90 kubectl get serviceaccount default -n default
bench_mark default-serviceaccount

# --- node: containerd + kubelet ------------------------------------------------------------
run_rendered containerd
must "private containerd answers on its socket" \
  wait_for 30 ctr --address "$containerd_sock" version
import_images() {  # through k8sd's own import (src/images), twice: it must be idempotent
  for _ in 1 2; do
    "$k8sd" images import --address "$containerd_sock" \
      "$images_dir/pause.tar" "$images_dir/busybox.tar" >>"$work/logs/import.log" 2>&1 || return 1
  done
  local have
  have=$(ctr_ images ls -q)
  grep -qx 'registry.k8s.io/pause:3.10' <<<"$have" && grep -qx 'docker.io/library/busybox:1.37-local' <<<"$have"
}
must "local images imported under normalized names" import_images
bench_mark containerd-ready-images-imported

run_rendered kubelet
must "node $node registers within 120 s" wait_for 120 kubectl get node "$node"
bench_mark node-registered
node_ready() {
  test "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True
}
must "node $node Ready within 180 s" wait_for 180 node_ready
bench_mark node-ready
# kube-proxy is optional for pods but cheap, and this exercises its rendered config.
run_rendered kube-proxy
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
check "node's pod CIDR is $node_pod_cidr, the range its CNI configuration was rendered for" \
  test "$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')" = "$node_pod_cidr"

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
