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
K8SD_KUBEBIN=${K8SD_KUBEBIN:-$(ls /var/cache/k8sd/kube/"$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")"/kubebin 2>/dev/null)}
K8SD_IMAGES_DIR=${K8SD_IMAGES_DIR:-/var/cache/k8sd/images}
# The container runtime k8sd runs (scripts/build-runtime.sh): containerd 2, its shim, ctr, runc.
# First on PATH, so the suites' own `ctr` and `containerd` are these, never Debian's 1.x.
K8SD_RUNTIME_DIR=${K8SD_RUNTIME_DIR:-$(. "$repo/assets/runtime/versions.env" && echo "/var/cache/k8sd/runtime/containerd-$CONTAINERD-runc-$RUNC")}
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
# hosts reach each other directly (one L2 segment, as machines on one switch).
make_bridged_host() {
  local ns=$1 i=$2 br=$3 prefix=$4
  ip netns del "$ns" 2>/dev/null || true
  ip link del "k8sd-b$i" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "k8sd-b$i" type veth peer name eth0 netns "$ns"
  ip link set "k8sd-b$i" master "$br" up
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
