# Shared helpers for the end-to-end suites: test-owned network namespaces as hosts, bounded
# waits, and a pass/fail tally that ends with the line "N passed, N failed".
# Sourced, not run.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
passed=0 failed=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
# check DESCRIPTION COMMAND...: one assertion.
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
finish() {
  echo "$passed passed, $failed failed"
  ((failed == 0))
}

# Prerequisites fail loudly; nothing is skipped.
require() {
  for b in "$@"; do
    [[ -s "$b" ]] || { echo "missing prerequisite: $b (run scripts/test.sh, which builds and installs everything)" >&2; exit 1; }
  done
}

K8SD_BIN=${K8SD_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/k8sd}
# The build scripts' output root (K8SD_CACHE_DIR moves all of it, as in scripts/build-*.sh).
k8sd_cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
K8SD_KUBEBIN=${K8SD_KUBEBIN:-$(ls "$k8sd_cache"/kube/"$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")"/kubebin 2>/dev/null)}
K8SD_IMAGES_DIR=${K8SD_IMAGES_DIR:-$k8sd_cache/images}
# The container runtime k8sd runs (scripts/build-runtime.sh): containerd 2, its shim, ctr, runc.
# First on PATH, so the suites' own `ctr` and `containerd` are these, never Debian's 1.x.
K8SD_RUNTIME_DIR=${K8SD_RUNTIME_DIR:-$(. "$repo/assets/runtime/versions.env" && echo "$k8sd_cache/runtime/containerd-$CONTAINERD-runc-$RUNC")}
PATH="$K8SD_RUNTIME_DIR:$PATH"
export K8SD_KUBEBIN K8SD_IMAGES_DIR K8SD_RUNTIME_DIR PATH
# Every binary of the runtime, for `require`.
runtime_bins=("$K8SD_RUNTIME_DIR"/{containerd,containerd-shim-runc-v2,ctr,runc})

# make_host NAME INDEX: a network namespace with a veth to the root namespace, addressed
# 10.210.INDEX.2/24 (the root side is 10.210.INDEX.1). No default route: nothing leaves the machine.
make_host() {
  local ns=$1 i=$2
  ip netns del "$ns" 2>/dev/null || true
  ip link del "k8sd-h$i" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "k8sd-h$i" type veth peer name eth0 netns "$ns"
  ip addr add "10.210.$i.1/24" dev "k8sd-h$i"
  ip link set "k8sd-h$i" up
  ip -n "$ns" addr add "10.210.$i.2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# in_host NS CMD...: run in the host's network namespace only (mounts and /sys stay the
# machine's, which the kubelet needs; `ip netns exec` would remount /sys).
in_host() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry until the command succeeds.
wait_for() {
  local t=$1 d=$2; shift 2
  local deadline=$((SECONDS + t))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "timed out after ${t}s waiting for: $d"
  return 1
}

# json_get FILE EXPR: evaluate a Python expression on the parsed JSON document `d`.
json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# make_bridge NAME CIDR: a test-owned bridge in the root namespace (e.g. k8sd-br0 10.210.100.1/24).
make_bridge() {
  ip link del "$1" 2>/dev/null || true
  ip link add "$1" type bridge
  ip addr add "$2" dev "$1"
  ip link set "$1" up
}

# make_bridged_host NS INDEX BRIDGE PREFIX: a host on BRIDGE addressed PREFIX.INDEX/24, so that
# hosts reach each other directly (one L2 segment, as machines on one switch). Its veth's root
# end is named after the netns (`${NS}v`): suites that run side by side have distinct netns
# names, so one suite's setup never deletes another's veth (a name built from INDEX did, when
# two suites used the same host numbers).
make_bridged_host() {
  local ns=$1 i=$2 br=$3 prefix=$4 veth=${1}v
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$veth" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$br" up
  ip -n "$ns" addr add "$prefix.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# web_fixture IMAGE: the YAML of what the DNS checks look up: a busybox httpd Deployment "web"
# (2 replicas serving "hello-from-web" on 8080) in namespace e2e-other, its Service "web" (port
# 80) and the headless Service "web-headless" (per-pod records).
web_fixture() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: e2e-other}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: $1
        imagePullPolicy: Never
        command: [sh, -c, "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e-other}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: e2e-other}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8080}]
YAML
}

# ---- A cluster of hosts on one test bridge ------------------------------------------------------
# cluster_setup NAME BRIDGE PREFIX BASE: host I is the netns NAME$I, addressed PREFIX.(BASE+I) on
# BRIDGE (its veth is `veth_of I`), with its data dir $work/nI, its run dir /run/NAME$I-$tag and
# cgroup root /NAME$I-$tag. Suites that may run beside each other pick different NAME, BRIDGE and
# BASE; two runs of the same suite take turns (a lock in /run). Sets work (a fresh directory) and
# tag; cluster_teardown undoes everything.
cluster_setup() {
  CL_NAME=$1 CL_BR=$2 CL_PREFIX=$3 CL_BASE=$4 CL_HOSTS=""
  # Two runs of one suite would share netns, veth and bridge names: the second waits.
  exec {CL_LOCK}>"/run/$CL_NAME.e2e.lock"
  if ! flock -n "$CL_LOCK"; then
    log "another $CL_NAME cluster is running; waiting for it to finish (up to 1 h)"
    flock -w 3600 "$CL_LOCK" || { echo "gave up waiting for /run/$CL_NAME.e2e.lock" >&2; exit 1; }
  fi
  work=$(mktemp -d "/var/tmp/$CL_NAME.XXXXXX")
  tag=$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)
  make_bridge "$CL_BR" "$CL_PREFIX.1/24"
}
ns_of() { echo "$CL_NAME$1"; }
veth_of() { echo "$CL_NAME${1}v"; }
data_of() { echo "$work/n$1"; }
run_of() { echo "/run/$CL_NAME$1-$tag"; }
addr_of() { echo "$CL_PREFIX.$((CL_BASE + $1))"; }
cgroup_of() { echo "/$CL_NAME$1-$tag"; }
# cluster_add_host I: host I joins the bridge (not yet running k8sd).
cluster_add_host() {
  make_bridged_host "$(ns_of "$1")" $((CL_BASE + $1)) "$CL_BR" "$CL_PREFIX"
  CL_HOSTS="$CL_HOSTS $1"
}
# k I ARGS: k8sd on host I. The first start of the daemon happens through this, inside its own
# UTS namespace with hostname nI, so leader-election identities name the node.
k() {
  local i=$1; shift
  K8SD_CGROUP_ROOT=$(cgroup_of "$i") nsenter --net="/run/netns/$(ns_of "$i")" unshare --uts \
    sh -c 'hostname "$0"; exec "$@"' "n$i" "$K8SD_BIN" --data-dir "$(data_of "$i")" --run-dir "$(run_of "$i")" "$@" \
    {CL_LOCK}>&-   # a daemon started here must not hold the suite's lock
}
# k_start I LOG: start host I's daemon again (`k8sd run`), detached, as `k` started it the first
# time, its output appended to LOG.
k_start() {
  local i=$1 out=$2
  K8SD_CGROUP_ROOT=$(cgroup_of "$i") nsenter --net="/run/netns/$(ns_of "$i")" unshare --uts \
    sh -c 'hostname "$0"; out=$1; shift; setsid "$@" </dev/null >>"$out" 2>&1 &' \
    "n$i" "$out" "$K8SD_BIN" --data-dir "$(data_of "$i")" --run-dir "$(run_of "$i")" run \
    {CL_LOCK}>&-
}
daemon_pid() { cat "$(run_of "$1")/k8sd.pid" 2>/dev/null; }
# k_stop I: stop host I's daemon as systemd would (SIGTERM) and wait up to 120 s for it to exit;
# fails (after a SIGKILL) if it did not.
k_stop() {
  local pid; pid=$(daemon_pid "$1") || return 1
  kill -TERM "$pid"
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  kill -9 "$pid"; return 1
}
containerd_sock() { echo "$(run_of "$1")/containerd/containerd.sock"; }
# reset_or_teardown NS DATA RUN: `k8sd reset --force` of the node with these dirs in netns NS
# (its daemon already stopped; the cgroup root from K8SD_CGROUP_ROOT or its kubelet config);
# should it fail, the reason is logged and scripts/teardown-host.sh cleans up instead. Then
# the netns goes. Single-host suites call it from their cleanup.
reset_or_teardown() {
  local ns=$1 d=$2 r=$3 out
  if [[ -d $d || -d $r ]] && ! out=$(in_host "$ns" "$K8SD_BIN" --data-dir "$d" --run-dir "$r" reset --force 2>&1); then
    log "TEARDOWN: k8sd reset --force in $ns failed; cleaning with teardown-host.sh:"
    printf '%s\n' "$out" | tail -n 15 | sed 's/^/  | /'
    "$repo/scripts/teardown-host.sh" --netns "$ns" --kubelet-root "$d/kubelet" \
      --containerd-address "$r/containerd/containerd.sock" --containerd-root "$d/containerd" \
      --containerd-state "$r/containerd" --cni-ipam-dir "$d/cni/networks" --pod-logs-dir "$d/pod-logs" \
      --cgroup-root "${K8SD_CGROUP_ROOT:-/}" >/dev/null 2>&1
  fi
  ip netns del "$ns" 2>/dev/null
  rm -rf "$d" "$r"
}
# host_reset I: `k8sd reset --force` on host I (its daemon already stopped), what an operator
# runs to clean a host (reset_or_teardown); then its veth goes.
host_reset() {
  K8SD_CGROUP_ROOT=$(cgroup_of "$1") reset_or_teardown "$(ns_of "$1")" "$(data_of "$1")" "$(run_of "$1")"
  ip link del "$(veth_of "$1")" 2>/dev/null
}
# cluster_teardown: stop every daemon (TERM, then KILL after 60 s), reset every host
# (host_reset), remove the bridge, then the work directory.
cluster_teardown() {
  local i pid
  for i in $CL_HOSTS; do pid=$(daemon_pid "$i") && kill -TERM "$pid" 2>/dev/null; done
  for i in $CL_HOSTS; do
    pid=$(daemon_pid "$i") || continue
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null
  done
  for i in $CL_HOSTS; do host_reset "$i"; done
  ip link del "$CL_BR" 2>/dev/null
  rm -rf "$work"
}
# etcdctl_on I ARGS: etcdctl against host I's datastore (mTLS on 127.0.0.1:2379, its
# datastore-client certificate), with timeouts so a node that is down fails the call quickly.
etcdctl_on() {
  local i=$1 p; shift; p=$(data_of "$i")/pki
  ETCDCTL_API=3 nsenter --net="/run/netns/$(ns_of "$i")" etcdctl --endpoints=https://127.0.0.1:2379 \
    --dial-timeout=3s --command-timeout=10s \
    --cacert "$p/datastore-ca.crt" --cert "$p/datastore-client.crt" --key "$p/datastore-client.key" "$@"
}
# revision_on I: the datastore revision host I reports.
revision_on() {
  etcdctl_on "$1" endpoint status -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}
# stored_with KEY: every Secret in n1's replica is stored as k8s:enc:secretbox:v1:KEY:, none
# another way (in plaintext, or with another key), and there is at least one.
stored_with() {
  etcdctl_on 1 get --prefix /registry/secrets/ -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
want = ("k8s:enc:secretbox:v1:" + sys.argv[1] + ":").encode()
bad = [base64.b64decode(kv["key"]).decode() for kv in kvs if not base64.b64decode(kv["value"]).startswith(want)]
print(f"{len(kvs)} Secrets; {len(bad)} not stored with {sys.argv[1]}: {bad[:3]}")
sys.exit(1 if bad or not kvs else 0)' "$1"
}
# cluster_haproxy PORT HOST...: HAProxy on the bridge address PREFIX.1:PORT in front of the
# hosts' kube-apiservers (TCP, /readyz checks with the admin certificate), as an operator's
# external balancer, and $work/admin.conf: host 1's admin kubeconfig pointed at it. Its pid is
# in $work/haproxy.pid for the suite's cleanup.
cluster_haproxy() {
  local port=$1 i; shift
  sed -e "s#server: .*#server: https://$CL_PREFIX.1:$port#" "$(data_of 1)/kubeconfig/admin.conf" > "$work/admin.conf"
  # The apiserver certificates name "kubernetes" on every node; the balancer address is not in them.
  sed -i "s#^\(    server: .*\)#\1\n    tls-server-name: kubernetes#" "$work/admin.conf"
  cat "$(data_of 1)/pki/admin.crt" "$(data_of 1)/pki/admin.key" > "$work/admin.pem"
  {
    cat <<EOF
global
  pidfile $work/haproxy.pid
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend api
  bind $CL_PREFIX.1:$port
  default_backend apiservers
backend apiservers
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 2 check check-ssl verify none crt $work/admin.pem
EOF
    for i in "$@"; do echo "  server n$i $(addr_of "$i"):6443"; done
  } > "$work/haproxy.cfg"
  haproxy -D -f "$work/haproxy.cfg"
}
# cluster_logs N: the last N lines of each host's k8sd, kube-apiserver and kubelet logs, and a
# copy of every host's whole logs/ in /var/tmp/k8sd-e2e-failed/<suite>/nI (the last failure of
# each suite), since the teardown deletes the data dirs and a failure's cause is often minutes
# before its last lines.
cluster_logs() {
  local i f keep=/var/tmp/k8sd-e2e-failed/$CL_NAME
  rm -rf "$keep"
  for i in $CL_HOSTS; do
    mkdir -p "$keep/n$i" && cp -a "$(data_of "$i")/logs/." "$keep/n$i/" 2>/dev/null
    for f in "$(data_of "$i")"/logs/{k8sd,kube-apiserver,kubelet}.log; do
      [[ -f $f ]] && { echo "----- $f (last $1 lines)"; tail -n "$1" "$f"; }
    done
  done
  echo "----- whole logs kept in $keep"
}
