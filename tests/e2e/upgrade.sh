#!/usr/bin/env bash
# A rolling upgrade from the previous release (docs/operations.md, "Upgrades"), with real
# components on three control-plane hosts that are network namespaces on one test bridge
# (lib.sh's cluster harness):
#   1. the cluster is formed by the previous release's k8sd (assets/upgrade/previous.env, built
#      from git history by scripts/build-previous.sh): n1 init, n2 and n3 join with tokens;
#   2. a steady write load starts: one kubectl create of a ConfigMap after another, through
#      HAProxy in front of the three kube-apiservers (as an operator outside the cluster); and a
#      watch of those ConfigMaps' keys through the etcd API with a node's client certificate,
#      resumed from its last revision on another node when its node is about to go down;
#   3. one node at a time: stop its daemon, start it on this build's k8sd, wait until it is
#      Ready and its datastore replica is a voter that has caught up. After the first node,
#      while old and new binaries run side by side: `k8sd status` on the new node shows its
#      own versions and `unknown` for the old nodes, and both kinds of node serve reads and
#      writes (kube-apiserver and the etcd API);
#   4. at the end: no write request failed; every acknowledged write reads back on every
#      node's datastore and through every node's kube-apiserver; the watch saw every
#      acknowledged write exactly once, as a create, in the order of the writes, with
#      revisions strictly increasing; `k8sd status` (text and -o json) on every node shows
#      every node at this build's k8sd version and the Kubernetes pin;
#   5. a whole-cluster restart: every daemon stopped, n1 started alone waits for its datastore's
#      quorum (past the 60 s its start used to allow) without failing, and is Ready once n2 is
#      started;
#      n3 then too, with 3 voters, HA, and every acknowledged write still there.
# Nothing on disk is newer in this build than in the previous release, so the previous binary's
# refusal of newer data is proven by unit tests of each versioned format (docs/testing.md).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck source=../../assets/upgrade/previous.env
. "$repo/assets/upgrade/previous.env"
K8SD_PREVIOUS_BIN=${K8SD_PREVIOUS_BIN:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/previous/$PREVIOUS_COMMIT/k8sd}
[[ -x $K8SD_PREVIOUS_BIN ]] || {
  echo "missing prerequisite: $K8SD_PREVIOUS_BIN, the previous release's k8sd (run scripts/build-previous.sh)" >&2
  exit 1
}
require "$K8SD_BIN" "$K8SD_PREVIOUS_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" \
  "${runtime_bins[@]}" /usr/bin/etcdctl /usr/bin/python3 /usr/sbin/haproxy
new_bin=$K8SD_BIN old_bin=$K8SD_PREVIOUS_BIN
new_version=$("$new_bin" --version | awk '{print $2}')
kube_version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")

# Hosts n1-n3: netns k8sd-upI at 10.215.0.(70+I) on the bridge k8sd-bru.
cluster_setup k8sd-up k8sd-bru 10.215.0 70
lbport=16444

quiet() { "$@" >/dev/null; }
# Which binary each host runs; kb I ARGS is `k` with it.
declare -A bin_of=([1]=$old_bin [2]=$old_bin [3]=$old_bin)
kb() { K8SD_BIN=${bin_of[$1]} k "$@"; }
# kubectl through HAProxy, and against one node's own kube-apiserver.
kc() { "$K8SD_KUBEBIN" kubectl --kubeconfig "$work/admin.conf" --request-timeout=10s "$@"; }
kc_at() { local i=$1; shift; kc --server "https://$(addr_of "$i"):6443" "$@"; }
status_json() { kb "$1" status -o json > "$work/status$1.json"; }
# status_says I EXPR WANT: a field of `k8sd status -o json` on host I.
status_says() {
  status_json "$1" || return 1
  local got; got=$(json_get "$work/status$1.json" "$2" 2>&1)
  [[ $got == "$3" ]] && return 0
  log "status check on n$1: wanted '$3' from $2, got '$got'"
  return 1
}

writer_pid="" watcher_pid=""
cleanup() {
  touch "$work/stop-load"
  [[ -n $writer_pid ]] && kill "$writer_pid" 2>/dev/null
  [[ -n $watcher_pid ]] && kill "$watcher_pid" 2>/dev/null
  [[ -f $work/haproxy.pid ]] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null
  ((failed > 0)) && cluster_logs 25
  cluster_teardown
}
trap cleanup EXIT

log "setup: bridge $CL_BR, hosts n1-n3; previous release $PREVIOUS_VERSION ($PREVIOUS_COMMIT), this build $new_version"
check "the previous release's binary reports k8sd $PREVIOUS_VERSION" test "$("$old_bin" --version)" == "k8sd $PREVIOUS_VERSION"
for i in 1 2 3; do cluster_add_host "$i"; done

log "1. a 3-node control plane on the previous release"
if kb 1 init --node-name n1 >/dev/null; then pass "n1: k8sd init (previous release)"; else fail "n1: k8sd init"; exit 1; fi
for i in 2 3; do
  tok=$(kb 1 add-node 2>/dev/null) || { fail "add-node for n$i"; exit 1; }
  if kb "$i" join --name "n$i" "$tok" >/dev/null; then pass "n$i: k8sd join (previous release)"; else fail "n$i: k8sd join"; exit 1; fi
done
check "status: 3 voters, HA holds" wait_for 120 "3 voters" status_says 1 \
  "sorted((n['name'], n['role']) for n in d['nodes']) == [('n1','voter'),('n2','voter'),('n3','voter')] and d['ha']" True
for i in 1 2 3; do check "n$i is Ready" wait_for 180 "n$i ready" kb "$i" status --wait-ready --timeout 5; done

# The operator's kubeconfig: admin credentials, server = HAProxy in front of the 3 apiservers.
cluster_haproxy "$lbport" 1 2 3 || { fail "haproxy starts"; exit 1; }
check "kubectl through HAProxy sees 3 Ready nodes" wait_for 60 "3 nodes Ready" \
  bash -c "[[ \$('$K8SD_KUBEBIN' kubectl --kubeconfig '$work/admin.conf' get nodes --no-headers | grep -c ' Ready ') == 3 ]]"
check "the namespace of the load is created" quiet kc create namespace upgrade

log "2. a steady write load and a watch"
prefix=/registry/configmaps/upgrade/
# The watch: etcdctl watch through one node's datastore, from the revision after the last event
# it saw. When $work/watch-node names another node, it ends its stream and resumes there (as a
# client fails over before its server goes away). Lines: "REVISION KEY VERSION".
cat > "$work/watch.py" <<'PY'
import base64, json, os, queue, subprocess, sys, threading, time
work, prefix, start_rev = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = open(os.path.join(work, "watch.txt"), "a", buffering=1)
events = open(os.path.join(work, "watch-streams.log"), "a", buffering=1)
def node():
    with open(os.path.join(work, "watch-node")) as f:
        return f.read().strip()
next_rev = start_rev
while not os.path.exists(os.path.join(work, "stop-watch")):
    n = node()
    pki = os.path.join(work, "n" + n, "pki")
    cmd = ["nsenter", "--net=/run/netns/k8sd-up" + n, "etcdctl", "--endpoints=https://127.0.0.1:2379",
           "--dial-timeout=3s", "--cacert", pki + "/datastore-ca.crt", "--cert", pki + "/datastore-client.crt",
           "--key", pki + "/datastore-client.key", "watch", "--prefix", prefix, "--rev", str(next_rev), "-w", "json"]
    events.write(f"{time.time():.3f} watching on n{n} from revision {next_rev}\n")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=events, text=True, env=dict(os.environ, ETCDCTL_API="3"))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in p.stdout] + [lines.put(None)], daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if node() != n or os.path.exists(os.path.join(work, "stop-watch")):
                p.kill()
                break
            continue
        if line is None:
            break
        resp = json.loads(line)
        if resp.get("CompactRevision"):
            events.write(f"compacted at {resp['CompactRevision']}\n")
        for ev in resp.get("Events") or []:
            kv = ev["kv"]
            rev = int(kv["mod_revision"])
            out.write(f"{rev} {base64.b64decode(kv['key']).decode()} {kv.get('version', 0)}{' DELETE' if ev.get('type') else ''}\n")
            next_rev = rev + 1
    p.wait()
    events.write(f"{time.time():.3f} stream on n{n} ended (exit {p.returncode})\n")
    time.sleep(0.2)
PY
# The writer: one create after another, each acknowledged (ok) or not (fail, with the error).
writer() {
  local n=0 name out
  while [[ ! -e $work/stop-load ]]; do
    n=$((n + 1)); name=$(printf 'cm-%06d' "$n")
    if out=$(kc -n upgrade create configmap "$name" --from-literal=n="$n" 2>&1); then
      echo "ok $name $(date +%s.%N)" >> "$work/writes.txt"
    else
      echo "fail $name $(date +%s.%N) ${out//$'\n'/ }" >> "$work/writes.txt"
    fi
  done
}
: > "$work/writes.txt"; : > "$work/watch.txt"
echo 3 > "$work/watch-node"
start_rev=$(revision_on 3) || { fail "the datastore revision on n3"; exit 1; }
python3 "$work/watch.py" "$work" "$prefix" "$((start_rev + 1))" & watcher_pid=$!
writer & writer_pid=$!
acked() { grep -c '^ok ' "$work/writes.txt"; }
failed_writes() { grep -c '^fail ' "$work/writes.txt"; }
some_writes() { (($(acked) >= 20)); }
check "the load is running (20 writes acknowledged)" wait_for 60 "20 writes" some_writes
check "the watch sees the writes" wait_for 30 "watch events" test -s "$work/watch.txt"

# upgrade I: stop host I's daemon, start it on this build, wait until it is Ready and its
# datastore replica is a caught-up voter again.
upgrade() {
  local i=$1 pid rev other t0=$SECONDS
  other=$(( i % 3 + 1 ))
  # The watch moves off the node about to go down (to one that stays up).
  if [[ $(cat "$work/watch-node") == "$i" ]]; then echo "$other" > "$work/watch-node"; fi
  rev=$(revision_on "$other") || rev=0
  pid=$(daemon_pid "$i")
  kill -TERM "$pid"
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then fail "n$i's previous daemon stopped within 120 s"; kill -9 "$pid"; fi
  log "n$i stopped after $((SECONDS - t0)) s (writes so far: $(acked) ok, $(failed_writes) failed)"
  bin_of[$i]=$new_bin
  K8SD_BIN=$new_bin k_start "$i" "$work/n$i-upgraded.log"
  check "n$i on this build is Ready" wait_for 300 "n$i ready" kb "$i" status --wait-ready --timeout 5
  check "n$i's datastore is a voter again and HA holds" wait_for 120 "n$i voter" status_says "$i" \
    "[n['role'] for n in d['nodes'] if n['name']=='n$i'][0] + ' ' + str(d['ha'])" "voter True"
  caught_up() { local r; r=$(revision_on "$i") && ((r >= rev)); }
  check "n$i's replica caught up (revision >= $rev, n$other's before the stop)" wait_for 60 "n$i caught up" caught_up
  check "n$i runs this build's binary" test "$(readlink "/proc/$(daemon_pid "$i")/exe")" == "$(readlink -f "$new_bin")"
  log "TIMING upgrade of n$i: $((SECONDS - t0)) s (writes so far: $(acked) ok, $(failed_writes) failed)"
}

# etcd_rw I KEY: a write and a read back through host I's etcd API.
etcd_rw() { etcdctl_on "$1" put "$2" yes >/dev/null && [[ $(etcdctl_on "$1" get "$2" --print-value-only) == yes ]]; }
# serves I WHAT: a read and a write through host I's kube-apiserver and its etcd API.
serves() {
  local i=$1 what=$2
  check "$what n$i: a write through its kube-apiserver" quiet kc_at "$i" -n upgrade create configmap "mixed-n$i-$what"
  check "$what n$i: a read through its kube-apiserver" quiet kc_at "$i" -n upgrade get configmap "mixed-n$i-$what"
  check "$what n$i: a write and a read through its etcd API" etcd_rw "$i" "/upgrade-e2e/n$i-$what"
}

log "3. the rolling upgrade, one node at a time"
upgrade 1
log "3a. a mixed cluster: n1 on this build, n2 and n3 on the previous release"
check "status on n1 shows its own versions" status_says 1 \
  "(d['k8sd-version'], d['kubernetes-version'])" "('$new_version', '$kube_version')"
check "status on n1 lists n1 at this build and the previous n2, n3 as unknown" status_says 1 \
  "sorted((n['name'], n['k8sd-version'], n['kubernetes-version']) for n in d['nodes'])" \
  "[('n1', '$new_version', '$kube_version'), ('n2', 'unknown', 'unknown'), ('n3', 'unknown', 'unknown')]"
text_unknown() { kb 1 status | grep -E "^  n2 .* k8sd unknown Kubernetes unknown$" >/dev/null; }
check "status text on n1 shows n2's versions as unknown" text_unknown
serves 1 new
serves 2 old
check "the previous release's status on n2 still works beside a new node" status_says 2 "d['ha']" True
upgrade 2
serves 3 old
upgrade 3

log "4. after the upgrade"
mixed_ok=$(acked)
check "the load kept writing through the upgrade (at least 100 writes acknowledged)" test "$mixed_ok" -ge 100
touch "$work/stop-load"; wait "$writer_pid"; writer_pid=""
total=$(acked) fails=$(failed_writes)
log "TIMING writes: $total acknowledged, $fails failed"
grep '^fail ' "$work/writes.txt" | head -n 5
check "no write request failed ($total acknowledged)" test "$fails" -eq 0
grep '^ok ' "$work/writes.txt" | awk '{print "'"$prefix"'" $2}' > "$work/acked.txt"
has_all() {
  etcdctl_on "$1" get --prefix "$prefix" --keys-only | grep . | sort > "$work/keys$1.txt" || return 1
  local missing; missing=$(sort "$work/acked.txt" | comm -23 - "$work/keys$1.txt" | wc -l)
  ((missing == 0)) || { log "n$1's datastore lacks $missing acknowledged writes"; return 1; }
}
via_api() { (($(kc_at "$1" -n upgrade get configmaps -o name | grep -c '/cm-') >= total)); }
for i in 1 2 3; do
  check "every acknowledged write is in n$i's datastore" wait_for 30 "n$i has every write" has_all "$i"
  check "and reads back through n$i's kube-apiserver" via_api "$i"
done
last_key=$(tail -n 1 "$work/acked.txt")
check "the watch caught up with the last write" wait_for 60 "watch caught up" grep -q " $last_key " "$work/watch.txt"
touch "$work/stop-watch"; wait "$watcher_pid"; watcher_pid=""
cat "$work/watch-streams.log"
# Every acknowledged write seen once, as a create, in the order written; revisions ascending.
watch_complete() {
  python3 - "$work/watch.txt" "$work/acked.txt" "$prefix" <<'PY'
import sys
events = [l.split() for l in open(sys.argv[1])]
acked = [l.strip() for l in open(sys.argv[2])]
revs = [int(e[0]) for e in events]
bad = [i for i in range(1, len(revs)) if revs[i] <= revs[i - 1]]
if bad:
    sys.exit(f"revisions not strictly increasing at event {bad[0]}: {revs[bad[0] - 1]} then {revs[bad[0]]}")
loads = [e for e in events if e[1].startswith(sys.argv[3] + "cm-")]
seen = [e[1] for e in loads]
if any(e[2] != "1" or len(e) > 3 for e in loads):
    sys.exit("an event of the load is not a create: " + " ".join(next(e for e in loads if e[2] != "1" or len(e) > 3)))
if len(set(seen)) != len(seen):
    sys.exit("a write was seen twice")
if [k for k in seen if k in set(acked)] != acked:
    missing = [k for k in acked if k not in set(seen)]
    sys.exit(f"the watch missed {len(missing)} acknowledged writes (first {missing[:3]}) or saw them out of order")
print(f"{len(events)} events, {len(acked)} acknowledged writes seen once each in order")
PY
}
check "the watch saw every acknowledged write once, as a create, in order" watch_complete
for i in 1 2 3; do
  check "status on n$i shows every node at k8sd $new_version and Kubernetes $kube_version" status_says "$i" \
    "sorted((n['name'], n['k8sd-version'], n['kubernetes-version']) for n in d['nodes'])" \
    "[('n1', '$new_version', '$kube_version'), ('n2', '$new_version', '$kube_version'), ('n3', '$new_version', '$kube_version')]"
done
text_new() { [[ $(kb 3 status | grep -cE "^  n[123] .* k8sd $new_version Kubernetes $kube_version$") == 3 ]]; }
check "status text on n3 shows the three nodes' versions" text_new
version_line() { kb 1 status | grep -qx "version:     k8sd $new_version, Kubernetes $kube_version"; }
check "status text on n1 shows its own version line" version_line

log "5. a whole-cluster restart, one node at a time (as after a power cut)"
touch "$work/stop-load"; kill "$writer_pid" "$watcher_pid" 2>/dev/null; wait "$writer_pid" "$watcher_pid" 2>/dev/null
writer_pid="" watcher_pid=""
for i in 1 2 3; do k_stop "$i" || fail "n$i stopped within 120 s"; done
k_start 1 "$work/n1-alone.log"
# Longer than the 60 s the datastore's start used to wait for its quorum: after it, the daemon
# stayed idle in `failed` for good.
sleep 75
phase_of() { status_json "$1" >/dev/null 2>&1 && json_get "$work/status$1.json" "d['phase']"; }
log "n1 alone after 75 s: $(phase_of 1)"
check "n1 alone says after 75 s that it waits for a quorum, and has not failed" \
  grep -q "^starting: starting the datastore, waiting for a quorum of its members" <<<"$(phase_of 1)"
k_start 2 "$work/n2-second.log"
for i in 1 2; do check "n$i is Ready once a second voter is up" wait_for 300 "n$i ready" kb "$i" status --wait-ready --timeout 5; done
k_start 3 "$work/n3-third.log"
check "n3 is Ready" wait_for 300 "n3 ready" kb 3 status --wait-ready --timeout 5
check "3 voters, HA holds, after the restart" wait_for 120 "3 voters" status_says 1 \
  "sorted((n['name'], n['role']) for n in d['nodes']) == [('n1','voter'),('n2','voter'),('n3','voter')] and d['ha']" True
check "every acknowledged write is still there (through n3's kube-apiserver)" wait_for 60 "writes on n3" via_api 3

finish
