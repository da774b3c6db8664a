#!/usr/bin/env bash
# Backup and restore end to end (docs/operations.md), with real components on three hosts that are
# network namespaces on one test bridge (lib.sh's cluster harness):
#   0. `k8sd init` refuses a malformed backup schedule and a retention of 0 (exit 2), saying what
#      to write, with nothing written;
#   1. n1 `k8sd init --quota-backend-bytes` (256 MiB) with a config file setting scheduled backups
#      to every 20 s keeping 2; a ConfigMap, a Secret and a Deployment; a join token never used;
#   1b. scheduled archives appear in <data dir>/backups (0700, archives 0600), pass the manifest
#      checks below, only the 2 newest are kept, and `k8sd status` (text, -o json) shows the last
#      one and the next due time, still right after n1's daemon restarts;
#   2. `k8sd backup` while the cluster serves: the archive is 0600 and its manifest names the
#      revision, the versions and a SHA-256 per file; an existing output, a missing directory
#      and a full disk are refused, naming the path and leaving no partial file;
#   3. n1 is torn down completely (daemon, containers, mounts, netns, data and run dirs), after
#      `k8sd backup` is refused with the daemon stopped;
#   4. on the fresh host n2: a truncated and a tampered archive are refused with nothing
#      written; `k8sd restore` brings back the ConfigMap, the Secret's value (same encryption
#      key), the running Deployment, the byte-identical cluster CA, a revision >= the backed-up
#      one, the archived datastore quota (node.yaml and the running datastore), and none of the
#      old cluster's tokens;
#   5. n3 joins the restored cluster with a new token from `k8sd add-node` and
#      `--quota-backend-bytes`, both are Ready, n3's datastore replica holds the restored data
#      (it came as a Raft snapshot), and n3 runs with the quota it was given (node.yaml, status);
#   6. restore refuses a second time on the initialised n2, naming its data dir, and changes
#      nothing.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" \
  "${runtime_bins[@]}" /usr/bin/etcdctl /usr/bin/python3

# Hosts n1-n3: netns k8sd-bkI at 10.214.0.(50+I) on the bridge k8sd-brk.
cluster_setup k8sd-bk k8sd-brk 10.214.0 50
bb=docker.io/library/busybox:1.37-local
plain="backup-e2e-$tag-secret"
quota=268435456 # 256 MiB: not the default 2 GiB, so a restore that dropped it shows

cleanup() {
  mountpoint -q "$work/full" && umount "$work/full"
  ((failed > 0)) && cluster_logs 25
  cluster_teardown
}
trap cleanup EXIT

kc() { k "$1" kubectl --request-timeout=10s "${@:2}"; }
# host_down I: stop host I's daemon and reset the host (as cluster_teardown does).
host_down() {
  local i=$1 pid
  if pid=$(daemon_pid "$i"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null
  fi
  host_reset "$i"
}
# untouched DIR: restore wrote nothing lasting into DIR (no node, PKI, datastore or scratch).
untouched() {
  local d=$1 left
  left=$(find "$d" -mindepth 1 -maxdepth 1 ! -name logs 2>/dev/null)
  [[ -z $left ]] || { log "left in $d: $left"; return 1; }
}

log "setup: bridge $CL_BR, hosts n1-n3"
for i in 1 2 3; do cluster_add_host "$i"; done

log "0. init refuses malformed backup settings"
bad_init() {
  local want=$1 out rc; shift
  out=$(k 1 init --node-name n1 "$@" 2>&1); rc=$?
  [[ $rc == 2 && $out == *"$want"* ]] || { log "rc=$rc, got: $out"; return 1; }
  [[ ! -e $(data_of 1)/node.yaml && ! -e $(data_of 1)/pki/ca.key ]] || { log "init wrote into the data dir"; return 1; }
}
check "init --backup-schedule 'every 6' exits 2 saying the unit is missing and what to write" \
  bad_init 'needs a unit, s, m or h. Write `off`, `every N`' --backup-schedule 'every 6'
check "init --backup-retention 0 exits 2 saying to keep at least 1 or write backup-schedule: off" \
  bad_init 'keep at least 1 archive' --backup-retention 0

log "1. n1: init, a ConfigMap, a Secret, a Deployment and an unused token"
printf 'backup-schedule: every 20s\nbackup-retention: 2\n' > "$work/init.yaml"
if k 1 init --node-name n1 --quota-backend-bytes "$quota" --config "$work/init.yaml" >/dev/null; then pass "n1: k8sd init"; else
  fail "n1: k8sd init"; exit 1; fi
# quota_is I: host I's node.yaml and its running datastore (k8sd status) have the quota.
quota_is() {
  local y; y=$(grep '^quota-backend-bytes:' "$(data_of "$1")/node.yaml")
  k "$1" status -o json > "$work/status-$1.json" || return 1
  [[ $y == "quota-backend-bytes: $quota" && $(json_get "$work/status-$1.json" "d['datastore']['quota-bytes']") == "$quota" ]] ||
    { log "node.yaml: '$y', status: $(json_get "$work/status-$1.json" "d['datastore']['quota-bytes']")"; return 1; }
}
check "n1 runs with the quota given to init (node.yaml, k8sd status)" quota_is 1
check "a ConfigMap is created" kc 1 create configmap keepme --from-literal=answer=42
check "a Secret is created" kc 1 create secret generic keepsecret --from-literal=token="$plain"
check "a Deployment is created" kc 1 create deployment web --image="$bb" --replicas=1 -- sleep 3600
check "the Deployment's pod runs" kc 1 rollout status deployment/web --timeout=180s
check "a join token is minted (and never used)" k 1 add-node --name n9
cp "$(data_of 1)/pki/ca.crt" "$work/ca.crt.orig"
cp "$(data_of 1)/pki/encryption-config.yaml" "$work/encryption.orig"

log "1b. scheduled backups every 20 s, keeping 2"
bdir=$(data_of 1)/backups
sched() { ls "$bdir" 2>/dev/null | grep -E '^k8sd-scheduled-backup-n1-[0-9]{8}T[0-9]{6}Z\.tar\.gz$'; }
first_sched() { first=$(sched | head -1); [[ -n $first ]]; }
check "a scheduled archive appears in <data dir>/backups" wait_for 90 "a scheduled backup" first_sched
sched_modes() {
  local bad; bad=$(find "$bdir" -maxdepth 1 -name 'k8sd-scheduled-backup-*.tar.gz' ! -perm 600)
  [[ $(stat -c %a "$bdir") == 700 && -z $bad ]] || { log "dir $(stat -c %a "$bdir"), not 0600: $bad"; return 1; }
}
check "the backups dir is 0700 and each scheduled archive 0600" sched_modes
# Retention: the first archive goes once two newer ones exist, and 2 are left.
rotated() { [[ ! -e $bdir/$first && $(sched | wc -l) == 2 ]]; }
check "retention keeps only the 2 newest scheduled archives" wait_for 120 "retention" rotated
# A copy of the newest one: the schedule goes on every 20 s and retention deletes the archive
# it replaces, so the checks below (about 40 s of them on a busy machine) must not read it in
# place (a CI run on a loaded machine found it gone half-way).
latest=$work/scheduled.tar.gz
cp "$bdir/$(sched | tail -1)" "$latest"
tar -xzOf "$latest" manifest.json > "$work/sched-manifest.json"
archive=$work/backup.tar.gz
if k 1 backup --output "$archive" > "$work/backup.out" 2>&1; then pass "k8sd backup"; else
  fail "k8sd backup"; cat "$work/backup.out"; exit 1; fi
cat "$work/backup.out"
mode_0600() { [[ $(stat -c %a "$archive") == 600 ]]; }
check "the archive is mode 0600" mode_0600
no_plain_in_archive() { ! tar -xzOf "$archive" | grep -qaF "$plain"; }
check "no file in the archive holds the Secret's value in plaintext (state.db holds it encrypted)" no_plain_in_archive
tar -xzOf "$archive" manifest.json > "$work/manifest.json"
backed_rev=$(json_get "$work/manifest.json" "d['revision']")
log "backed-up revision: $backed_rev"
manifest_ok() {
  local want m=${1:-$work/manifest.json}; want=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
  json_get "$m" "d['format'] == 1 and d['kubernetes-version'] == '$want' and d['k8sd-version'] != '' \
and d['cluster-id'] != '' and d['revision'] > 1 and d['node-name'] == 'n1' \
and {'datastore/state.db', 'node.yaml', 'pki/ca.crt', 'pki/ca.key', 'pki/encryption-config.yaml'} <= set(d['files']) \
and all(len(v) == 64 for v in d['files'].values())" | grep -qx True
}
check "the manifest names versions, cluster id, revision and a SHA-256 for every file (CA key, Secrets key)" manifest_ok
sums_ok() {
  local a=${1:-$archive} m=${2:-$work/manifest.json} x=$work/x${3:-}
  mkdir -p "$x" && tar -xzf "$a" -C "$x" &&
    json_get "$m" "all(__import__('hashlib').sha256(open('$x/'+f,'rb').read()).hexdigest() == s for f, s in d['files'].items())" | grep -qx True
}
check "every file of the archive matches its manifest SHA-256" sums_ok
check "a scheduled archive passes the same manifest checks" manifest_ok "$work/sched-manifest.json"
check "every file of a scheduled archive matches its manifest SHA-256" sums_ok "$latest" "$work/sched-manifest.json" -sched
sched_status() {
  local j=$work/status-sched.json txt p
  k 1 status -o json > "$j" && txt=$(k 1 status) || return 1
  p=$(json_get "$j" "d['scheduled-backups']['last']['path']") || return 1
  [[ $(json_get "$j" "(lambda b: b['schedule'] == 'every 20s' and b['retention'] == 2 and b['last']['ok'] and b['next-due'] > b['last']['time'])(d['scheduled-backups'])") == True \
    && $p == "$bdir/k8sd-scheduled-backup-n1-"* && -e $p \
    && $txt == *"backups:     schedule every 20s keeping 2; next "* && $txt == *"last: "*" ok $bdir/"* ]] ||
    { log "status: $(cat "$j")"; log "$txt"; return 1; }
}
check "k8sd status (text and -o json) shows the schedule, the last scheduled backup ok with its path, and the next due time" sched_status
# The last result outlives the daemon: right after a restart, status shows it (without the record
# it would say none has run until the first one after the start, 20 s later).
last0=$(json_get "$work/status-sched.json" "d['scheduled-backups']['last']['time']")
pid=$(daemon_pid 1); kill -TERM "$pid"
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
k_start 1 "$work/n1-restart.log"
# The first status that shows the schedule at all: the loop fills it in once it starts, with
# whatever the record says, 20 s before its own first backup could.
schedule_shown() {
  k 1 status -o json > "$work/status-restart.json" 2>/dev/null &&
    [[ $(json_get "$work/status-restart.json" "d.get('scheduled-backups') is not None") == True ]]
}
last_kept() {
  wait_for 90 "n1's status to show its backup schedule after the restart" schedule_shown || return 1
  [[ $(json_get "$work/status-restart.json" "(lambda l: l is not None and l['ok'] and l['time'] >= '$last0')(d['scheduled-backups']['last'])") == True \
    && $(stat -c %a "$bdir/last-scheduled.json") == 600 ]] ||
    { log "status: $(cat "$work/status-restart.json")"; ls -l "$bdir"; return 1; }
}
check "after a restart, status still shows the last scheduled backup (backups/last-scheduled.json, 0600)" last_kept
wait_for 120 "n1 Ready again after its restart" k 1 status --wait-ready >/dev/null
exists_refused() {
  local out sum; sum=$(sha256sum < "$archive")
  out=$(k 1 backup --output "$archive" 2>&1) && return 1
  [[ $out == *"$archive already exists"* && $(sha256sum < "$archive") == "$sum" ]] || { log "got: $out"; return 1; }
}
check "backup refuses to overwrite an existing file, naming it" exists_refused
no_dir_refused() {
  local out; out=$(k 1 backup --output /nonexistent-k8sd-dir/b.tar.gz 2>&1) && return 1
  [[ $out == *"/nonexistent-k8sd-dir/b.tar.gz"* ]] || { log "got: $out"; return 1; }
}
check "backup into a missing directory fails naming the path" no_dir_refused
disk_full() {
  local out; mkdir -p "$work/full" && mount -t tmpfs -o size=64k tmpfs "$work/full" || return 1
  out=$(k 1 backup --output "$work/full/b.tar.gz" 2>&1); local rc=$?
  local left; left=$(ls -A "$work/full"); umount "$work/full"
  ((rc != 0)) && [[ $out == *"$work/full"* && ($out == *"No space left"* || $out == *"disk is full"*) && -z $left ]] ||
    { log "rc=$rc, left: '$left', got: $out"; return 1; }
}
check "backup onto a full disk fails naming the path, and leaves no partial file" disk_full

log "3. n1 is torn down completely"
pid=$(daemon_pid 1); kill -TERM "$pid"
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
no_daemon_refused() {
  local out; out=$(k 1 backup --output "$work/late.tar.gz" 2>&1) && return 1
  [[ $out == *"daemon is not running"* && ! -e $work/late.tar.gz ]] || { log "got: $out"; return 1; }
}
check "backup with the daemon stopped is refused, saying so" no_daemon_refused
host_down 1
gone() { [[ ! -e $(data_of 1) ]] && ! ip netns list | grep -qw "$(ns_of 1)" && ! pgrep -f "$(data_of 1)" >/dev/null; }
check "n1's processes, netns and data dir are gone" gone

log "4. restore on the fresh host n2"
corrupt=$work/truncated.tar.gz
head -c $(($(stat -c %s "$archive") / 2)) "$archive" > "$corrupt"
truncated_refused() {
  local out; out=$(k 2 restore "$corrupt" 2>&1) && return 1
  [[ $out == *"$corrupt"*"damaged"*"nothing was changed"* ]] || { log "got: $out"; return 1; }
  untouched "$(data_of 2)"
}
check "a truncated archive is refused, naming it, and nothing is written" truncated_refused
tampered=$work/tampered.tar.gz
python3 - "$archive" "$tampered" <<'PY'
import io, sys, tarfile
src, dst = tarfile.open(sys.argv[1], "r:gz"), tarfile.open(sys.argv[2], "w:gz")
for m in src.getmembers():
    data = src.extractfile(m).read()
    if m.name == "datastore/state.db":
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        data = bytes(data)
    dst.addfile(m, io.BytesIO(data))
dst.close()
PY
tampered_refused() {
  local out; out=$(k 2 restore "$tampered" 2>&1) && return 1
  [[ $out == *"$tampered"*"datastore/state.db fails its checksum"*"nothing was changed"* ]] || { log "got: $out"; return 1; }
  untouched "$(data_of 2)"
}
check "a tampered archive is refused (checksum), and nothing is written" tampered_refused
restore_started=$(date -u +%s)
if k 2 restore "$archive" > "$work/restore.out" 2>&1; then pass "n2: k8sd restore"; else
  fail "n2: k8sd restore"; cat "$work/restore.out"; exit 1; fi
cat "$work/restore.out"
cm_back() { [[ $(kc 2 get configmap keepme -o jsonpath='{.data.answer}') == 42 ]]; }
check "the ConfigMap is back" wait_for 60 "the ConfigMap" cm_back
secret_back() { [[ $(kc 2 get secret keepsecret -o jsonpath='{.data.token}' | base64 -d) == "$plain" ]]; }
check "the Secret's value is back (it decrypts with the restored key)" wait_for 60 "the Secret" secret_back
check "the cluster CA is byte-identical" cmp "$work/ca.crt.orig" "$(data_of 2)/pki/ca.crt"
check "the Secrets encryption configuration is byte-identical" cmp "$work/encryption.orig" "$(data_of 2)/pki/encryption-config.yaml"
rev_kept() {
  local r; r=$(revision_on 2) || return 1
  log "revision now $r, backed up $backed_rev"; ((r >= backed_rev))
}
check "the datastore revision is >= the backed-up one" rev_kept
check "the restored node keeps the archived datastore quota (node.yaml, k8sd status)" quota_is 2
sched_kept() { grep -qx 'backup-schedule: every 20s' "$(data_of 2)/node.yaml"; }
check "the restored node keeps the archived backup schedule (node.yaml)" sched_kept
# The restored objects still carry the old host's status; these read what the new host did.
node_is_new_host() {
  local ip beat
  ip=$(kc 2 get node n1 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}') || return 1
  beat=$(kc 2 get node n1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}') || return 1
  [[ $ip == "$(addr_of 2)" ]] && (($(date -u -d "$beat" +%s) >= restore_started))
}
check "the Node n1 is now n2's host (its address), with a fresh Ready heartbeat" wait_for 120 "node n1 on n2's host" node_is_new_host
check "the Deployment's pod runs again on the new host (kubectl exec)" wait_for 180 "exec into web" kc 2 exec deploy/web -- true
no_old_tokens() {
  local out; out=$(k 2 tokens list) || return 1
  [[ $(printf '%s\n' "$out" | sed 1d | grep -c .) == 0 ]] || { log "tokens: $out"; return 1; }
}
check "the old cluster's join token is gone" no_old_tokens

log "5. n3 joins the restored cluster with a new token"
tok=$(k 2 add-node 2>/dev/null)
if [[ -n $tok ]] && k 3 join --name n3 --quota-backend-bytes "$quota" "$tok" >/dev/null; then pass "n3: add-node + join"; else fail "n3: add-node + join"; fi
both_ready() {
  [[ $(kc 2 get nodes --no-headers | awk '($1=="n1"||$1=="n3") && $2=="Ready"' | wc -l) == 2 ]]
}
check "n1 (restored on n2's host) and n3 are Ready" wait_for 180 "two Ready nodes" both_ready

# The restored data is not in the new Raft log: n3 must have received it as a snapshot.
replica_has_data() {
  local r; r=$(revision_on 3) || return 1
  etcdctl_on 3 get /registry/configmaps/default/keepme --print-value-only | grep -qa answer && ((r >= backed_rev))
}
check "n3's datastore replica holds the restored data and revisions" wait_for 60 "n3's replica" replica_has_data
check "n3 runs with the quota given to join (node.yaml, k8sd status)" quota_is 3

log "6. restore refuses on the initialised node"
again_refused() {
  local d sum out; d=$(data_of 2)
  sum=$(cat "$d/node.yaml" "$d/pki/ca.key" | sha256sum)
  out=$(k 2 restore "$archive" 2>&1) && return 1
  [[ $out == *"data dir $d already holds an initialised node"* ]] || { log "got: $out"; return 1; }
  [[ $(cat "$d/node.yaml" "$d/pki/ca.key" | sha256sum) == "$sum" ]]
}
check "a second restore is refused, naming the data dir, and changes nothing" again_refused

finish
