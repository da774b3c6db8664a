#!/usr/bin/env bash
# Backup and restore end to end (issue 14 item 1), with real components on test-owned
# network-namespace hosts on one bridge:
#   1. n1 `k8sd init`; a ConfigMap and a Deployment; `etcdctl snapshot save` through the
#      datastore's mTLS endpoint with a URL endpoint, and `etcdctl snapshot status` on it;
#   2. `k8sd backup` while the cluster serves: mode 0600, manifest with checksums, refused on
#      a bad output path; a damaged copy is refused by restore without touching anything;
#   3. n1 is torn down completely (daemon, containers, netns, data dir);
#   4. `k8sd restore` on a fresh host n2 with a new address: the ConfigMap is back, the cluster
#      CA is the same, the datastore revision is at least the backed-up one;
#   5. `k8sd add-node` + `k8sd join` of n3 works against the restored cluster;
#   6. restore refuses a second time on the initialised n2 and changes nothing.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" \
  /usr/bin/containerd /usr/bin/etcdctl

work=$(mktemp -d /var/tmp/k8sd-e2e-backup.XXXXXX)
tag=$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)
br=k8sd-brb prefix=10.210.110
nodes="1 2 3"
ns_of() { echo "k8sd-bk$1"; }
data_of() { echo "$work/n$1"; }
run_of() { echo "/run/k8sd-bk$1-$tag"; }

# k I ARGS: k8sd on host I, in its own UTS namespace with hostname nI.
k() {
  local i=$1; shift
  K8SD_CGROUP_ROOT=/k8sd-bk$i-$tag nsenter --net="/run/netns/$(ns_of "$i")" unshare --uts \
    sh -c 'hostname "$0"; exec "$@"' "n$i" "$K8SD_BIN" --data-dir "$(data_of "$i")" --run-dir "$(run_of "$i")" "$@"
}
daemon_pid() { cat "$(run_of "$1")/k8sd.pid" 2>/dev/null; }
kc() { k "$1" kubectl --request-timeout=10s "${@:2}"; }

stop_host() {
  local i=$1 pid d
  pid=$(daemon_pid "$i") && kill -TERM "$pid" 2>/dev/null
  if [[ -n ${pid:-} ]]; then
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null
  fi
  d=$(data_of "$i")
  [[ -d $d ]] && "$repo/scripts/teardown-host.sh" --netns "$(ns_of "$i")" --kubelet-root "$d/kubelet" \
    --containerd-address "$(run_of "$i")/containerd/containerd.sock" --containerd-root "$d/containerd" \
    --containerd-state "$(run_of "$i")/containerd" --cni-ipam-dir "$d/cni/networks" --pod-logs-dir "$d/pod-logs" \
    --cgroup-root "/k8sd-bk$i-$tag" >/dev/null 2>&1
  ip netns del "$(ns_of "$i")" 2>/dev/null
  ip link del "k8sd-b$((20 + i))" 2>/dev/null
  return 0
}

cleanup() {
  if ((failed > 0)); then
    for i in $nodes; do
      for f in "$(data_of "$i")"/logs/{k8sd,kube-apiserver}.log; do
        [[ -f $f ]] && { echo "----- $f (last 25 lines)"; tail -n 25 "$f"; }
      done
    done
  fi
  for i in $nodes; do stop_host "$i"; done
  ip link del "$br" 2>/dev/null
  rm -rf "$work" /run/k8sd-bk?-"$tag"
}
trap cleanup EXIT

# etcdctl against host I's datastore (mTLS on 127.0.0.1:2379), the endpoint written as a URL.
etcdctl_on() {
  local i=$1 p; shift; p=$(data_of "$i")/pki
  ETCDCTL_API=3 nsenter --net="/run/netns/$(ns_of "$i")" etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert "$p/datastore-ca.crt" --cert "$p/datastore-client.crt" --key "$p/datastore-client.key" "$@"
}
revision_on() { etcdctl_on "$1" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'; }

log "setup: bridge $br, hosts n1-n3"
make_bridge "$br" "$prefix.1/24"
for i in $nodes; do make_bridged_host "$(ns_of "$i")" $((20 + i)) "$br" "$prefix"; done

log "1. n1: init, a ConfigMap and a Deployment, etcdctl snapshot"
if k 1 init --node-name n1 >/dev/null; then pass "n1: k8sd init"; else fail "n1: k8sd init"; exit 1; fi
check "a ConfigMap is created" kc 1 create configmap keepme --from-literal=answer=42
check "a Deployment is created" kc 1 create deployment web --image=docker.io/library/busybox:1.36-local --replicas=1 -- sleep 3600
snap=$work/etcd.snap
check "etcdctl snapshot save (https:// URL endpoint, mTLS) works against k8sd" etcdctl_on 1 snapshot save "$snap"
snap_sha() {
  python3 - "$snap" <<'PY'
import hashlib, sys
b = open(sys.argv[1], 'rb').read()
sys.exit(0 if hashlib.sha256(b[:-32]).digest() == b[-32:] and b[:16] == b'SQLite format 3\0' else 1)
PY
}
check "the snapshot is a SQLite database followed by its SHA-256, as etcd frames it" snap_sha
status_out=$(ETCDCTL_API=3 etcdctl snapshot status "$snap" 2>&1); status_rc=$?
log "etcdctl snapshot status: rc=$status_rc: $status_out"
snapshot_status_is_clear() { [[ $status_rc -ne 0 ]]; }
check "etcdctl snapshot status refuses the SQLite snapshot (it reads bbolt only; documented)" snapshot_status_is_clear

log "2. k8sd backup while the cluster serves"
cm_ready() { [[ $(kc 1 get configmap keepme -o jsonpath='{.data.answer}') == 42 ]]; }
check "the ConfigMap reads back" cm_ready
archive=$work/backup.tar.gz
if k 1 backup --output "$archive" > "$work/backup.out"; then pass "k8sd backup"; else fail "k8sd backup"; cat "$work/backup.out"; exit 1; fi
cat "$work/backup.out"
backed_rev=$(sed -n 's/.*datastore revision \([0-9]*\).*/\1/p' "$work/backup.out")
ca_sha=$(sha256sum < "$(data_of 1)/pki/ca.crt")
mode_0600() { [[ $(stat -c %a "$archive") == 600 ]]; }
check "the archive is mode 0600" mode_0600
manifest_ok() {
  tar -xzOf "$archive" manifest.json > "$work/manifest.json" || return 1
  json_get "$work/manifest.json" "d['format'] == 1 and d['revision'] == $backed_rev and 'datastore/state.db' in d['files'] and 'pki/ca.key' in d['files'] and 'node.yaml' in d['files'] and all(len(v) == 64 for v in d['files'].values())" | grep -qx True
}
check "the manifest names the revision and a SHA-256 for the snapshot, the CA key and node.yaml" manifest_ok
exists_refused() { local out; out=$(k 1 backup --output "$archive" 2>&1) && return 1; [[ $out == *"already exists"* ]]; }
check "backup refuses to overwrite an existing file" exists_refused
bad_dir_refused() { local out; out=$(k 1 backup --output /nonexistent/dir/b.tar.gz 2>&1) && return 1; [[ $out == *"/nonexistent/dir"* ]]; }
check "backup to an unwritable path fails naming it" bad_dir_refused

log "3. n1 is torn down completely"
stop_host 1
rm -rf "$(data_of 1)" "$(run_of 1)"
gone() { ! ip netns list | grep -qw "$(ns_of 1)"; }
check "n1's host is gone" gone

log "4. restore on a fresh host n2"
corrupt=$work/corrupt.tar.gz
head -c $(( $(stat -c %s "$archive") / 2 )) "$archive" > "$corrupt"
corrupt_refused() {
  local out; out=$(k 2 restore "$corrupt" 2>&1) && return 1
  [[ $out == *"damaged"* && ! -e $(data_of 2)/node.yaml && ! -e $(data_of 2)/pki ]] || { log "got: $out"; return 1; }
}
check "a truncated archive is refused and nothing is written" corrupt_refused
if k 2 restore --advertise-address "$prefix.22" "$archive" > "$work/restore.out" 2>&1; then pass "n2: k8sd restore"; else fail "n2: k8sd restore"; cat "$work/restore.out"; exit 1; fi
cm_back() { [[ $(kc 2 get configmap keepme -o jsonpath='{.data.answer}' 2>/dev/null) == 42 ]]; }
check "the ConfigMap is back" wait_for 60 "ConfigMap" cm_back
deploy_back() { kc 2 get deployment web >/dev/null 2>&1; }
check "the Deployment is back" deploy_back
same_ca() { [[ $(sha256sum < "$(data_of 2)/pki/ca.crt") == "$ca_sha" ]]; }
check "the cluster CA is the same" same_ca
rev_kept() { local r; r=$(revision_on 2) || return 1; log "revision now $r, backed up $backed_rev"; ((r >= backed_rev)); }
check "the datastore revision is >= the backed-up one" rev_kept

log "5. a second node joins the restored cluster"
tok=$(k 2 add-node 2>/dev/null)
if [[ -n $tok ]] && k 3 join --name n3 "$tok" >/dev/null; then pass "n3: add-node + join"; else fail "n3: add-node + join"; fi
two_nodes() { [[ $(kc 2 get nodes --no-headers 2>/dev/null | awk '$1=="n2"||$1=="n3"{print $2}' | grep -cx Ready) == 2 ]]; }
check "n2 and n3 are Ready" wait_for 180 "two Ready nodes" two_nodes

log "6. restore refuses on the initialised node"
again_refused() {
  local sha out; sha=$(sha256sum < "$(data_of 2)/node.yaml")
  out=$(k 2 restore "$archive" 2>&1) && return 1
  [[ $out == *"already initialised"* && $out == *"$(data_of 2)"* && $(sha256sum < "$(data_of 2)/node.yaml") == "$sha" ]] || { log "got: $out"; return 1; }
}
check "a second restore is refused, naming the data dir, and changes nothing" again_refused

finish
