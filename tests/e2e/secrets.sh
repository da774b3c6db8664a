#!/usr/bin/env bash
# `k8sd secrets rotate-key` end to end (docs/operations.md, "Rotating the Secrets encryption
# key") on two control-plane nodes, network namespaces on one test bridge (lib.sh's harness):
#   1. n1 `k8sd init`, n2 `k8sd join`; a Secret is stored as k8s:enc:secretbox:v1:<init key>:
#      in the datastore (read raw with etcdctl and the node's datastore client certificate);
#   2. a rotation started on n1 is cut off (n2's k8sd killed -9 once n1 holds the new key): it
#      fails naming n2 and what to do, `k8sd status` shows the rotation under way, a second run
#      is refused the same way while n2 is down, and the Secret still reads back;
#   3. n2 starts again and `rotate-key` on n2 finishes the rotation begun on n1: both nodes hold
#      the same 0600 file with only the new key, every Secret in the datastore is stored with it
#      and none with the old one, the Secret reads back through both apiservers, a new Secret is
#      stored with the new key, `k8sd status` names the key and its age and never its value,
#      and no rotation record is left;
#   4. running rotate-key again is harmless: one more key, every Secret moved to it, all readable;
#      both kube-apiservers load each phase's keys in place (same pids, the rotation says
#      "reloaded"), and a Secret read through each once a second never fails meanwhile;
#   5. a cluster with no key (as a k8sd built before encryption at rest left it) gets its first
#      one: rotate-key stages it, restarts both apiservers with --encryption-provider-config
#      added, and every Secret written in plaintext is then stored encrypted and reads back.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "${runtime_bins[@]}" \
  /usr/bin/etcdctl /usr/bin/python3

# Hosts n1, n2: netns k8sd-skI at 10.216.0.(50+I) on the bridge k8sd-brs.
cluster_setup k8sd-sk k8sd-brs 10.216.0 50
plain="rotate-e2e-$tag-value"
start=$SECONDS

cleanup() {
  [[ -n ${bg:-} ]] && kill "$bg" 2>/dev/null
  ((failed > 0)) && cluster_logs 30
  cluster_teardown
}
trap cleanup EXIT

kc() { k "$1" kubectl --request-timeout=20s "${@:2}"; }
# key_names I: the key names in host I's encryption configuration, the write key first.
key_names() { awk '$1 == "-" && $2 == "name:" {print $3}' "$(data_of "$1")/pki/encryption-config.yaml" | paste -sd, -; }
# raw_prefix NAME: the first bytes of the Secret default/NAME as the datastore holds it.
raw_prefix() { etcdctl_on 1 get "/registry/secrets/default/$1" --print-value-only | head -c 40 | tr -dc '[:print:]'; }
# reads_back I NAME VALUE: the Secret reads back through host I's kube-apiserver.
reads_back() {
  local got; got=$(kc "$1" get secret "$2" -o jsonpath='{.data.v}' | base64 -d)
  [[ $got == "$3" ]] || { log "n$1 read '$got' for $2"; return 1; }
}
same_file_0600() {
  local a=$(data_of 1)/pki/encryption-config.yaml b=$(data_of 2)/pki/encryption-config.yaml
  [[ $(stat -c %a "$a") == 600 && $(stat -c %a "$b") == 600 ]] && cmp -s "$a" "$b"
}
no_record() { [[ -z $(etcdctl_on 1 get /k8sd/secrets-rotation --print-value-only) ]]; }
ready() { k "$1" status -o json > "$work/ready-$1.json" 2>/dev/null && [[ $(json_get "$work/ready-$1.json" "d['ready']") == True ]]; }

log "setup: bridge $CL_BR, hosts n1, n2"
for i in 1 2; do cluster_add_host "$i"; done

log "1. n1 init, n2 join, a Secret"
if k 1 init --node-name n1 --disable dns,metrics,storage >/dev/null; then pass "n1: k8sd init"; else fail "n1: k8sd init"; exit 1; fi
tok=$(k 1 add-node 2>/dev/null)
if [[ -n $tok ]] && k 2 join --name n2 --token-file - <<<"$tok" >/dev/null; then pass "n2: k8sd join (control plane)"; else
  fail "n2: k8sd join"; exit 1; fi
k0=$(key_names 1)
log "init key: $k0"
check "n1 and n2 hold the same 0600 configuration with one key" same_file_0600
check "a Secret is created" kc 1 create secret generic s1 --from-literal=v="$plain"
prefix_is() { local p; p=$(raw_prefix "$1"); [[ $p == "k8s:enc:secretbox:v1:$2:"* ]] || { log "stored as: $p"; return 1; }; }
check "the datastore holds it as k8s:enc:secretbox:v1:$k0:" prefix_is s1 "$k0"

log "2. a rotation cut off by a node going down"
k 1 secrets rotate-key > "$work/rotate1.out" 2>&1 &
bg=$!
two_keys() { [[ $(key_names 1) == *,* ]]; }
if wait_for 120 "n1 holding a second key" two_keys; then pass "n1 receives the new key as a read key first ($(key_names 1))"; else
  fail "n1 never held a second key"; cat "$work/rotate1.out"; exit 1; fi
kill -9 "$(daemon_pid 2)"
wait "$bg"; rc=$?; bg=
cat "$work/rotate1.out"
names_n2() { [[ $rc != 0 ]] && grep -q 'control-plane node n2 (10.216.0.52:6400) did not answer' "$work/rotate1.out" &&
  grep -q 'k8sd remove-node n2' "$work/rotate1.out" && grep -q 'rotate-key` again' "$work/rotate1.out"; }
check "rotate-key fails naming n2, its address, and what to do (exit $rc)" names_n2
k1=$(key_names 1 | cut -d, -f2)
check "n1 still writes with the init key and reads the new one" test "$(key_names 1)" == "$k0,$k1"
k 1 status > "$work/status-mid.txt"
check "k8sd status shows the rotation under way" grep -q "rotation under way: to $k1, phase 1/4" "$work/status-mid.txt"
again() { ! k 1 secrets rotate-key > "$work/rotate2.out" 2>&1 && grep -q 'resuming the rotation' "$work/rotate2.out" &&
  grep -q 'control-plane node n2 .* did not answer' "$work/rotate2.out"; }
check "a second run while n2 is down resumes, then stops naming n2 again" again
check "the Secret still reads back through n1" reads_back 1 s1 "$plain"

log "3. n2 back; the rotation finishes from n2"
k_start 2 "$work/n2-restart.log"
check "n2 is Ready again" wait_for 300 "n2 ready" ready 2
if k 2 secrets rotate-key > "$work/rotate3.out" 2>&1; then pass "rotate-key on n2 finishes the rotation"; else fail "rotate-key on n2"; fi
cat "$work/rotate3.out"
check "it resumed the rotation begun on n1" grep -q "resuming the rotation to key $k1 begun on n1" "$work/rotate3.out"
check "n1 and n2 hold the same 0600 configuration" same_file_0600
check "both hold only the new key $k1 (the init key is gone)" test "$(key_names 1),$(key_names 2)" == "$k1,$k1"
check "every Secret in the datastore is stored with $k1" stored_with "$k1"
check "the Secret reads back through n1's kube-apiserver" reads_back 1 s1 "$plain"
check "the Secret reads back through n2's kube-apiserver" reads_back 2 s1 "$plain"
check "a new Secret is created" kc 2 create secret generic s2 --from-literal=v="$plain-2"
check "the new Secret is stored with $k1" prefix_is s2 "$k1"
check "no rotation record is left" no_record
k 1 status > "$work/status.txt"; k 1 status -o json > "$work/status.json"
cat "$work/status.txt" | grep -A2 '^secrets:'
status_names_key() {
  local secret; secret=$(awk '$1 == "secret:" {print $2; exit}' "$(data_of 1)/pki/encryption-config.yaml")
  grep -q "^secrets: *encrypted with secretbox key $k1, created .* (0 days ago)" "$work/status.txt" &&
    [[ $(json_get "$work/status.json" "d['secrets-encryption']['key']") == "$k1" ]] &&
    [[ $(json_get "$work/status.json" "d['secrets-encryption']['rotation']") == None ]] &&
    ! grep -qF "$secret" "$work/status.txt" "$work/status.json"
}
check "k8sd status (text and JSON) names the key and its age, never its value" status_names_key

log "4. running rotate-key again is harmless, and the API stays up"
# apiserver_pid I: the pid of host I's kube-apiserver, as k8sd status reports it.
apiserver_pid() {
  k "$1" status -o json > "$work/pid-$1.json" &&
    json_get "$work/pid-$1.json" "[c['pid'] for c in d['components'] if c['name'] == 'kube-apiserver'][0]"
}
pids_before="$(apiserver_pid 1) $(apiserver_pid 2)"
# A reader through each apiserver, once a second for the whole rotation; every read must work.
: > "$work/reads.log"
reader() {
  while [[ ! -e $work/reads.stop ]]; do
    if reads_back "$1" s1 "$plain" >/dev/null 2>&1; then echo "ok n$1" >> "$work/reads.log"; else
      echo "FAIL n$1 $(date +%T)" >> "$work/reads.log"; fi
    sleep 1
  done
}
reader 1 & r1=$!
reader 2 & r2=$!
if k 1 secrets rotate-key > "$work/rotate4.out" 2>&1; then pass "rotate-key runs again"; else fail "rotate-key again"; fi
touch "$work/reads.stop"; wait "$r1" "$r2"
cat "$work/rotate4.out"
no_failed_read() {
  local ok; ok=$(grep -c '^ok' "$work/reads.log")
  log "$ok reads during the rotation, $(grep -c '^FAIL' "$work/reads.log") failed"
  ((ok >= 10)) && ! grep -q '^FAIL' "$work/reads.log"
}
check "the Secret read back through both apiservers all through the rotation" no_failed_read
check "neither kube-apiserver was restarted (pids $pids_before)" test "$(apiserver_pid 1) $(apiserver_pid 2)" == "$pids_before"
reloaded() { (($(grep -c 'kube-apiserver reloaded, no restart' "$work/rotate4.out") >= 6)); }
check "each phase's keys were reloaded in place on both nodes" reloaded
k2=$(key_names 1)
check "one more key ($k2), the same on both nodes" test "$k2" != "$k1" -a "$(key_names 2)" == "$k2"
check "every Secret is stored with $k2" stored_with "$k2"
check "both Secrets read back" reads_back 2 s1 "$plain"
check "the second Secret reads back" reads_back 1 s2 "$plain-2"
no_plaintext() { ! grep -qaF "$plain" "$(data_of 1)"/datastore/state.db "$(data_of 2)"/datastore/state.db; }
check "neither node's state.db holds a Secret's value in plaintext" no_plaintext

log "5. a cluster without a key gets its first one"
# The state a cluster made by a k8sd built before encryption at rest is in, made from this one:
# no key file on either node, both kube-apiservers started without --encryption-provider-config,
# and no Secret stored encrypted (the encrypted ones are deleted through the etcd API first;
# an apiserver without the key could not read them).
etcdctl_on 1 del --prefix /registry/secrets/ >/dev/null
rm -f "$(data_of 1)/pki/encryption-config.yaml" "$(data_of 2)/pki/encryption-config.yaml"
for i in 2 1; do k_stop "$i" || fail "n$i stopped within 120 s"; done
for i in 1 2; do k_start "$i" "$work/n$i-keyless.log"; done
for i in 1 2; do check "n$i is Ready without a key" wait_for 300 "n$i ready" ready "$i"; done
# flagged I: whether host I's kube-apiserver runs with --encryption-provider-config.
flagged() {
  k "$1" status -o json > "$work/flag-$1.json" &&
    [[ $(json_get "$work/flag-$1.json" "any(a.startswith('--encryption-provider-config') for c in d['components'] if c['name'] == 'kube-apiserver' for a in c['args'])") == True ]]
}
unflagged() { ! flagged "$1"; }
for i in 1 2; do check "n$i's kube-apiserver runs without a key" unflagged "$i"; done
status_secrets() { k "$1" status | grep '^secrets:' | grep -q "$2" || { log "n$1: $(k "$1" status | grep '^secrets:')"; return 1; }; }
check "status says Secrets are not encrypted, and how to give the cluster a key" \
  status_secrets 1 'NOT encrypted at rest (no key); `k8sd secrets rotate-key` gives the cluster its first key'
check "a Secret is created" kc 1 create secret generic s3 --from-literal=v="$plain-3"
raw_has() { etcdctl_on 1 get "/registry/secrets/default/$1" --print-value-only | grep -qaF "$2"; }
check "the datastore holds it in plaintext" raw_has s3 "$plain-3"
if k 2 secrets rotate-key > "$work/rotate5.out" 2>&1; then pass "rotate-key on n2 gives the cluster its first key"; else
  fail "rotate-key on n2 (no key)"; fi
cat "$work/rotate5.out"
k3=$(key_names 1)
check "n1 and n2 hold the same 0600 configuration with one key ($k3)" test -n "$k3" -a "$k3" == "$(key_names 2)" -a "${k3/,/}" == "$k3"
check "n1 and n2 hold the same 0600 file" same_file_0600
for i in 1 2; do check "n$i's kube-apiserver was restarted with the key" flagged "$i"; done
check "every Secret in the datastore is stored with $k3" stored_with "$k3"
not_raw_has() { ! raw_has "$@"; }
check "the plaintext Secret's value is gone from its current revision" not_raw_has s3 "$plain-3"
check "it reads back through n1's kube-apiserver" reads_back 1 s3 "$plain-3"
check "it reads back through n2's kube-apiserver" reads_back 2 s3 "$plain-3"
check "a new Secret is created" kc 2 create secret generic s4 --from-literal=v="$plain-4"
check "the new Secret is stored with $k3" prefix_is s4 "$k3"
check "status names the key" status_secrets 2 "encrypted with secretbox key $k3"
check "no rotation record is left" no_record
k_stop 1 && k_start 1 "$work/n1-after.log"
ready_flagged() { ready "$1" && flagged "$1"; }
check "n1 restarts Ready, its kube-apiserver with the key" wait_for 300 "n1 ready with the key" ready_flagged 1

log "suite time: $((SECONDS - start)) s"

finish
