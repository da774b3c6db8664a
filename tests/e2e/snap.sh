#!/usr/bin/env bash
# The snap, end to end without snapd's daemon (it needs systemd as PID 1, which this machine
# lacks): scripts/build-snap.sh builds the .snap; `unsquashfs -l` shows every file the app needs
# with its mode, and meta/snap.yaml is what `snap pack --check-skeleton` accepts (classic, the
# `k8sd` app, the `daemon` service with `daemon: notify`, the hooks) and agrees with
# snap/snapcraft.yaml. The snap is unpacked and run as snapd runs it, in a test-owned network
# namespace: `$SNAP/bin/k8sd run` with snapd's variables (SNAP, SNAP_DATA, SNAP_COMMON,
# SNAP_REVISION, SNAP_NAME, SNAP_INSTANCE_NAME), no K8SD_* variable and no flag, and a
# NOTIFY_SOCKET this test listens on; `k8sd init` reaches Ready, READY=1 arrives, a pod runs on
# the snap's containerd, runc and CNI plugins; the state is under $SNAP_COMMON and the run dir is
# /run/snap.<instance>, with nothing in $SNAP_DATA or /var/lib/k8sd. Then a refresh: the daemon
# stops, a second unpacked copy becomes $SNAP with a new SNAP_REVISION and SNAP_DATA (copied from
# the old, as snapd does), the daemon starts again and the cluster, its ConfigMap and its pod are
# intact, now run from the new revision. `k8sd reset --force` (the remove hook) cleans up.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for b in snap mksquashfs unsquashfs; do
  command -v "$b" >/dev/null || { echo "missing prerequisite: $b (scripts/setup-host.sh installs Debian's snapd and squashfs-tools)" >&2; exit 1; }
done
require "$K8SD_BIN"

ns=k8sd-snap1 veth=k8sd-snap0 node_ip=10.220.0.2
# Two runs of this suite would share the netns and veth names: the second waits.
exec {lock}>/run/k8sd-snap.e2e.lock
flock -w 3600 "$lock" || { echo "gave up waiting for /run/k8sd-snap.e2e.lock" >&2; exit 1; }

work=$(mktemp -d /var/tmp/k8sd-snap.XXXXXX)
tag=$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6 | tr 'A-Z' 'a-z')
# A parallel-install instance name (snapd's k8sd_<key>), so the run dir is this test's own.
instance=k8sd_e2e$tag
common=$work/var/snap/$instance/common
data_dir=$common/var/lib/k8sd run=/run/snap.$instance
export K8SD_CGROUP_ROOT=/k8sd-snap-$tag
started=$work/started   # a file older than anything this test makes
touch "$started"

# snap_env REV: the environment snapd gives the snap's apps at revision REV ($SNAP is that
# revision's unpacked copy), and the host's PATH: no K8SD_* variable and no build cache.
snap_env() {
  echo env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    K8SD_CGROUP_ROOT="$K8SD_CGROUP_ROOT" SNAP="$work/snap/$instance/$1" SNAP_REVISION="$1" \
    SNAP_DATA="$work/var/snap/$instance/$1" SNAP_COMMON="$common" SNAP_NAME=k8sd SNAP_INSTANCE_NAME="$instance"
}
rev=1
# shellcheck disable=SC2046 # snap_env's words are NAME=VALUE pairs without spaces
k8sd() { in_host "$ns" $(snap_env "$rev") "$work/snap/$instance/$rev/bin/k8sd" "$@"; }
kubectl() { k8sd kubectl "$@"; }
daemon_pid() { cat "$run/k8sd.pid" 2>/dev/null; }

# start_daemon: as snapd starts the `daemon` service: `bin/k8sd run`, no flags, NOTIFY_SOCKET set;
# a listener records what arrives there in $work/notify-$rev.log.
start_daemon() {
  local sock=$work/notify-$rev.sock
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as log:
    while True:
        log.write(s.recv(4096).decode() + "\n"); log.flush()
' "$sock" "$work/notify-$rev.log" {lock}>&- &
  notify_pid=$!
  for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
  # shellcheck disable=SC2046
  in_host "$ns" $(snap_env "$rev") NOTIFY_SOCKET="$sock" setsid "$work/snap/$instance/$rev/bin/k8sd" run \
    >>"$work/daemon-$rev.log" 2>&1 {lock}>&- &
}
stop_daemon() {
  local pid; pid=$(daemon_pid) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  log "k8sd did not exit within 60 s"; return 1
}
notified_ready() { grep -q '^READY=1' "$work/notify-$rev.log" 2>/dev/null; }

cleanup() {
  [[ -d $data_dir ]] && k8sd reset --force >/dev/null 2>&1
  stop_daemon
  [[ -n ${notify_pid:-} ]] && kill "$notify_pid" 2>/dev/null
  "$repo/scripts/teardown-host.sh" --netns "$ns" --kubelet-root "$data_dir/kubelet" \
    --containerd-address "$run/containerd/containerd.sock" --containerd-root "$data_dir/containerd" \
    --containerd-state "$run/containerd" --cni-ipam-dir "$data_dir/cni/networks" --pod-logs-dir "$data_dir/pod-logs" \
    --cgroup-root "$K8SD_CGROUP_ROOT" >/dev/null 2>&1
  ip link del "$veth" 2>/dev/null
  if ((failed > 0)); then
    for f in "$work"/daemon-*.log "$data_dir"/logs/{k8sd,kubelet,containerd}.log; do
      [[ -f $f ]] && { echo "----- $f (last 30 lines)"; tail -n 30 "$f"; }
    done
  fi
  rm -rf "$work" "$run"
}
trap cleanup EXIT

log "1. build the snap"
t0=$SECONDS
snapfile=$(K8SD_BIN=$K8SD_BIN "$repo/scripts/build-snap.sh" | tail -n 1)
check "scripts/build-snap.sh writes a .snap ($((SECONDS - t0)) s)" test -s "$snapfile"
log "snap: $snapfile ($(du -h "$snapfile" | cut -f1))"
[[ -s $snapfile ]] || { finish; exit 1; }

log "2. its layout"
unsquashfs -ll "$snapfile" > "$work/listing.txt" 2>&1
# has_file PATH MODE: the listing has squashfs-root/PATH as a regular file with MODE (ls -l style).
has_file() { awk -v p="squashfs-root/$1" -v m="$2" '$NF == p && $1 == m { found = 1 } END { exit !found }' "$work/listing.txt"; }
layout_complete() {
  local dest from name missing=0 mode
  while read -r dest from name; do
    [[ -z $dest || $dest == \#* ]] && continue
    case "$dest" in images/*) mode=-rw-r--r-- ;; *) mode=-rwxr-xr-x ;; esac
    has_file "$dest" "$mode" || { log "not in the snap as $mode: $dest"; missing=1; }
  done < "$repo/snap/contents.txt"
  for f in meta/snap.yaml:-rw-r--r-- meta/hooks/install:-rwxr-xr-x meta/hooks/remove:-rwxr-xr-x; do
    has_file "${f%%:*}" "${f#*:}" || { log "not in the snap: $f"; missing=1; }
  done
  return $missing
}
check "unsquashfs -l lists every file of snap/contents.txt (binaries 0755, images 0644), meta/snap.yaml and both hooks" layout_complete
only_our_cni() { [[ $(grep -c ' squashfs-root/cni/bin/' "$work/listing.txt") == 4 ]]; }
check "the snap carries only the 4 CNI plugins k8sd uses" only_our_cni

# unpack REV: the snap as snapd mounts it at /snap/<instance>/REV.
unpack() {
  mkdir -p "$work/snap/$instance"
  unsquashfs -q -d "$work/snap/$instance/$1" "$snapfile" > "$work/unsquashfs.log" 2>&1 \
    || { cat "$work/unsquashfs.log"; return 1; }
}
check "unsquashfs unpacks it (revision 1)" unpack 1
meta=$work/snap/$instance/1/meta/snap.yaml
check "snap pack --check-skeleton accepts the unpacked snap" snap pack --check-skeleton "$work/snap/$instance/1"
meta_ok() {
  python3 - "$meta" "$repo/snap/snapcraft.yaml" "$(basename "$snapfile")" <<'PY'
import sys, yaml
meta = yaml.safe_load(open(sys.argv[1]))
craft = yaml.safe_load(open(sys.argv[2]))
want = {
    "name": "k8sd", "confinement": "classic",
    "apps.k8sd.command": "bin/k8sd", "apps.daemon.command": "bin/k8sd run",
    "apps.daemon.daemon": "notify",
}
def get(d, k):
    for part in k.split("."):
        d = d[part]
    return d
bad = [f"{k}: {get(meta, k)!r}, want {v!r}" for k, v in want.items() if get(meta, k) != v]
if meta["apps"] != craft["apps"]:
    bad.append(f"apps differ from snap/snapcraft.yaml's: {meta['apps']} vs {craft['apps']}")
if meta["grade"] not in ("devel", "stable"):
    bad.append(f"grade {meta['grade']!r}")
if sys.argv[3] != f"k8sd_{meta['version']}_amd64.snap" or len(str(meta["version"])) > 32:
    bad.append(f"version {meta['version']!r} does not name {sys.argv[3]} or is over 32 characters")
if "k8s" + open(sys.argv[2].replace("snap/snapcraft.yaml", "assets/kube/VERSION")).read().strip().lstrip("v") not in str(meta["version"]):
    bad.append(f"version {meta['version']!r} lacks the pinned Kubernetes version")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
check "meta/snap.yaml: classic, app k8sd, service daemon with daemon: notify, version with the pins, the same apps as snap/snapcraft.yaml" meta_ok
one_list() {
  grep -q 'scripts/build-snap.sh --layout-only' "$repo/snap/snapcraft.yaml" \
    && grep -q '^contents=snap/contents.txt$' "$repo/scripts/build-snap.sh"
}
check "snap/snapcraft.yaml and scripts/build-snap.sh lay out the same snap/contents.txt" one_list

log "3. run it as snapd would (revision 1)"
ip netns del "$ns" 2>/dev/null; ip link del "$veth" 2>/dev/null
ip netns add "$ns"
ip link add "$veth" type veth peer name eth0 netns "$ns"
ip addr add 10.220.0.1/24 dev "$veth"; ip link set "$veth" up
ip -n "$ns" addr add "$node_ip/24" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
mkdir -p "$common" "$work/var/snap/$instance/1"
start_daemon
wait_for 20 "the daemon's control socket" test -S "$run/k8sd.sock"
check "the daemon started with snapd's environment and no flag listens in /run/snap.$instance" test -S "$run/k8sd.sock"
if k8sd init --node-name snap-e2e; then pass "k8sd init from the snap returns once the node is ready"
else fail "k8sd init from the snap"; exit 1; fi
check "the service reported READY=1 on NOTIFY_SOCKET" wait_for 30 "READY=1" notified_ready
node_ready() { [[ $(kubectl get node snap-e2e -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
check "kubectl sees the node Ready" wait_for 60 "node Ready" node_ready
kubectl create configmap snap-e2e --from-literal=kept="before-refresh-$tag" >/dev/null
# make_pod NAME: a busybox pod from the snap's image, on the pod network.
make_pod() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: docker.io/library/busybox:1.37-local, imagePullPolicy: Never, command: [sleep, "3600"]}
YAML
}
make_pod snap-pod
pod_running() { [[ $(kubectl get pod "${1:-snap-pod}" -o jsonpath='{.status.phase}') == Running ]]; }
pod_ip() { [[ $(kubectl get pod "$1" -o jsonpath='{.status.podIP}') == 10.* ]]; }
first_pod() { pod_running snap-pod && pod_ip snap-pod; }
check "a pod runs (image from \$SNAP/images) with a pod IP (from \$SNAP/cni/bin)" wait_for 120 "pod Running" first_pod
# exe_of NAME: the executable of the node's process NAME (from `k8sd status -o json`).
exe_of() {
  k8sd status -o json > "$work/status.json" || return 1
  local pid; pid=$(json_get "$work/status.json" "[c['pid'] for c in d['components'] if c['name']=='$1'][0]") || return 1
  readlink "/proc/$pid/exe"
}
from_snap() {
  local root=$work/snap/$instance/$rev got_c got_a
  got_c=$(exe_of containerd) got_a=$(exe_of kube-apiserver)
  [[ $got_c == "$root/runtime/containerd" && $got_a == "$root/bin/kubebin" ]] \
    && grep -q "bin_dirs = \[\"$root/cni/bin\"\]" "$data_dir/config/containerd.toml" \
    && grep -q "BinaryName = \"$root/runtime/runc\"" "$data_dir/config/containerd.toml" && return 0
  log "containerd: $got_c, kube-apiserver: $got_a"; return 1
}
check "containerd, runc, kubebin and the CNI plugins are the snap's (revision $rev)" from_snap
state_in_common() {
  [[ -s $data_dir/node.yaml && -s $data_dir/datastore/state.db && -d $data_dir/pki ]] \
    && [[ -z $(ls -A "$work/var/snap/$instance/1") ]] \
    && [[ -z $(find /var/lib/k8sd -newer "$started" 2>/dev/null | head -1) ]]
}
check "the state is under \$SNAP_COMMON/var/lib/k8sd; \$SNAP_DATA and /var/lib/k8sd hold nothing of it" state_in_common

log "4. a refresh to revision 2: stop, new \$SNAP and \$SNAP_DATA, same \$SNAP_COMMON, start"
check "the daemon stops on SIGTERM (as snapd stops the service)" stop_daemon
kill "$notify_pid" 2>/dev/null
check "unsquashfs unpacks it again (revision 2)" unpack 2
cp -a "$work/var/snap/$instance/1" "$work/var/snap/$instance/2"   # snapd copies SNAP_DATA forward
rev=2
start_daemon
check "revision 2's service reports READY=1 once the node is back" wait_for 240 "READY=1 (revision 2)" notified_ready
check "the node is Ready again" wait_for 60 "node Ready" node_ready
kept() { [[ $(kubectl get configmap snap-e2e -o jsonpath='{.data.kept}') == "before-refresh-$tag" ]]; }
check "the ConfigMap written before the refresh is still there" kept
check "the pod runs after the refresh" wait_for 120 "pod Running" pod_running
exec_works() { [[ $(kubectl exec snap-pod -- echo alive 2>&1) == alive ]]; }
check "kubectl exec reaches the pod through revision 2's kubelet and containerd" wait_for 60 "exec" exec_works
make_pod snap-pod-2
new_pod() { pod_running snap-pod-2 && pod_ip snap-pod-2; }
check "a new pod gets an IP and runs on revision 2's runtime and CNI plugins" wait_for 120 "new pod Running" new_pod
check "containerd, runc, kubebin and the CNI plugins are now revision 2's" from_snap
check "the state is still only under \$SNAP_COMMON" state_in_common

log "5. the remove hook's reset"
remove_hook() {
  local pid; pid=$(daemon_pid) || { log "no daemon pid before the reset"; return 1; }
  # shellcheck disable=SC2046
  in_host "$ns" $(snap_env "$rev") "$work/snap/$instance/$rev/meta/hooks/remove" > "$work/reset.log" 2>&1 \
    || { cat "$work/reset.log"; return 1; }
  [[ ! -e $data_dir && ! -e $run/k8sd.sock ]] && ! kill -0 "$pid" 2>/dev/null
}
check "meta/hooks/remove (k8sd reset --force) removes the node's data and run dirs and stops it" remove_hook
kill "$notify_pid" 2>/dev/null

finish
