#!/usr/bin/env bash
# The original dqlite HA demo as an automated test (docs/testing.md, "HA demo"), on four hosts
# that are network namespaces on one test bridge:
#   n1 `k8sd init --extra-sans` (a load balancer's name and address, on every control-plane
#   node's API server certificate); n2 (with a SAN of its own), n3 `k8sd join`; n4 `k8sd join --worker`.
# A client in the root namespace drives kubectl through HAProxy (as the demo did) and, inside
# the worker, through the worker's own load balancer. Steps:
#   0. Secrets: n2 and n3 hold n1's encryption key, the worker none; a Secret written through
#      n1's apiserver reads back through n2's and n3's and is in no replica's files in plaintext
#   1. add-ons: a pod on the worker resolves Services (short, full, headless), fetches a page by
#      name, sees an external name fail fast; `kubectl top` shows every node; DNS keeps
#      answering while a node running a CoreDNS replica is cut off; a PVC of a pod pinned to
#      the worker gets its directory under the worker's own data dir and loses it with the
#      claim; then a busybox Deployment
#      is scheduled on the worker
#   2. stop kube-apiserver on the node holding the scheduler lease: zero failed kubectl
#      requests, and the scheduler and controller-manager there keep their leases
#   3. stop scheduler and controller-manager there: leadership moves (timed)
#   4. kill -9 every k8sd process on the datastore leader: the datastore fails over, kubectl
#      keeps working (errors and time recorded), scaling the Deployment still works
#   5. delete the workload: its pods disappear
#   6. bring the killed node back: it catches up and is a voter again
#   7. remove-node a control-plane node; a used, a garbled and a revoked token are refused;
#      a fresh node joins with a new token and HA holds again
#   8. the worker leaves
#   9. quorum loss: 2 of the 3 voters killed and cut off for good; recover's refusals, then
#      `k8sd recover` on n1 (backup first): data kept, writes work; the lost nodes return on
#      their old data together and cannot take n1 over; remove-node, reset, rejoin: 3 voters
# Lines starting with "TIMING" are the figures recorded in docs/benchmarks.md.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" \
  "$K8SD_IMAGES_DIR/coredns.tar" "$K8SD_IMAGES_DIR/metrics-server.tar" "$K8SD_IMAGES_DIR/local-path-provisioner.tar" \
  "${runtime_bins[@]}" /usr/sbin/haproxy

# Hosts n1-n5 (lib.sh's cluster harness): netns k8sd-haI at 10.210.100.(10+I) on k8sd-br0.
cluster_setup k8sd-ha k8sd-br0 10.210.100 10
br=$CL_BR prefix=$CL_PREFIX lbport=16443

# kubectl through HAProxy, as an operator outside the cluster would.
kc() { "$K8SD_KUBEBIN" kubectl --kubeconfig "$work/admin.conf" --request-timeout=10s "$@"; }
# kubectl inside the worker, through its local load balancer.
kw() { nsenter --net="/run/netns/$(ns_of 4)" "$K8SD_KUBEBIN" kubectl --kubeconfig "$work/admin-worker.conf" --request-timeout=10s "$@"; }

cleanup() {
  [[ -f $work/haproxy.pid ]] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null
  ((failed > 0)) && cluster_logs 25
  cluster_teardown
}
trap cleanup EXIT

status_json() { k "$1" status -o json > "$work/status$1.json"; }
# status_says I EXPR WANT: a field of `k8sd status -o json` on host I.
status_says() {
  status_json "$1" || return 1
  local got; got=$(json_get "$work/status$1.json" "$2" 2>&1)
  [[ $got == "$3" ]] && return 0
  log "status check on n$1: wanted '$3' from $2, got '$got'"
  return 1
}
lease_holder() { kc -n kube-system get lease "$1" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | cut -d_ -f1; }
leader_node() { status_json 1 >/dev/null 2>&1 || status_json 2; json_get "$work/status1.json" "[n['name'] for n in d['nodes'] if n['datastore-leader']][0]" 2>/dev/null; }

# loop_kubectl FILE CMD...: run CMD repeatedly until $work/stop-loop exists; one line per try.
loop_kubectl() {
  local out=$1; shift
  : > "$out"
  while [[ ! -e $work/stop-loop ]]; do
    if "$@" >/dev/null 2>>"$work/loop-errors.log"; then echo "ok $(date +%s.%N)" >> "$out"; else echo "fail $(date +%s.%N)" >> "$out"; fi
  done
}
count() { grep -c "^$1 " "$2"; }

log "setup: bridge $br, hosts n1-n4"
for i in 1 2 3 4; do cluster_add_host "$i"; done

# The cluster's extra SANs (a load balancer's name and address, say) go on every control-plane
# node's API server certificate; n2 adds a name of its own at join.
lb_name=api.k8sd-ha.test lb_ip=10.210.100.250
if k 1 init --node-name n1 --extra-sans "$lb_name,$lb_ip" >/dev/null; then pass "n1: k8sd init --extra-sans"; else fail "n1: k8sd init"; exit 1; fi
for i in 2 3; do
  tok=$(k 1 add-node 2>/dev/null) || { fail "add-node for n$i"; exit 1; }
  echo "$tok" > "$work/token-n$i"
  # n2 takes the token as an argument, n3 from a file (kept out of /proc/PID/cmdline).
  if ((i == 2)); then how=("$tok" --extra-sans n2.k8sd-ha.test) what="as an argument"; else how=(--token-file "$work/token-n$i") what="from a file"; fi
  if k "$i" join --name "n$i" "${how[@]}" >/dev/null; then pass "n$i: k8sd join (control plane; token $what)"; else fail "n$i: k8sd join"; exit 1; fi
done
# A worker's name comes from its token, never from the joiner.
unnamed_refused() {
  local out rc; out=$(k 1 add-node --worker 2>&1); rc=$?
  ((rc == 2)) && [[ $out == *--name* ]] || { log "rc=$rc: $out"; return 1; }
}
check "add-node --worker without --name exits 2 naming --name" unnamed_refused
tok=$(k 1 add-node --worker --name n4 2>/dev/null) || { fail "add-node --worker"; exit 1; }
other_name_refused() {
  local out; out=$(k 4 join --worker --name other --token-file - <<<"$tok" 2>&1) && return 1
  [[ $out == *'reserved for node name "n4", not "other"'* && ! -e $(data_of 4)/node.yaml ]] || { log "got: $out"; return 1; }
}
check "join --worker --name other with n4's token is refused, naming both, and writes nothing" other_name_refused
sans_refused() {
  local out rc; out=$(k 4 join --worker --extra-sans x.test --token-file - <<<"$tok" 2>&1); rc=$?
  ((rc == 2)) && [[ $out == *--extra-sans* && ! -e $(data_of 4)/node.yaml ]] || { log "rc=$rc: $out"; return 1; }
}
check "join --worker --extra-sans is refused (exit 2, naming the flag) and writes nothing" sans_refused
if k 4 join --worker --token-file - <<<"$tok" >/dev/null; then pass "n4: k8sd join --worker (token on standard input, name from the token)"; else fail "n4: k8sd join --worker"; exit 1; fi

# serves_as I NAME: host I's kube-apiserver presents a certificate the cluster CA verifies for
# NAME (a DNS name or an IP address), as a client of a load balancer in front of it would check.
serves_as() {
  local i=$1 name=$2 verify=(-verify_hostname "$2")
  [[ $name =~ ^[0-9.]+$ ]] && verify=(-verify_ip "$name")
  nsenter --net="/run/netns/$(ns_of "$i")" openssl s_client -connect "$(addr_of "$i"):6443" -servername "$name" \
    -CAfile "$(data_of 1)/pki/ca.crt" -verify_return_error "${verify[@]}" </dev/null >/dev/null 2>&1
}
serves_lb() { serves_as "$1" "$lb_name" && serves_as "$1" "$lb_ip"; }
for i in 1 2 3; do
  check "n$i's kube-apiserver certificate carries init's extra SANs ($lb_name, $lb_ip)" wait_for 60 "n$i SANs" serves_lb "$i"
done
check "n2's also carries its own from join --extra-sans" serves_as 2 n2.k8sd-ha.test
# n3 answers (the check above), so a failed verification here is the name's, not a dead server's.
only_lb() { serves_as 3 "$lb_name" && ! serves_as 3 n2.k8sd-ha.test; }
check "n3's does not carry n2's own SAN" only_lb

three_voters() { status_says 1 "$@"; }
check "status: 3 voters and a worker, HA holds" wait_for 60 "3 voters" three_voters "sorted((n['name'], n['role']) for n in d['nodes']) == [('n1','voter'),('n2','voter'),('n3','voter'),('n4','worker')] and d['ha']" True
check "status on the worker: role worker, 3 healthy API backends" status_says 4 "d['role'] + ' ' + str(sum(b['healthy'] for b in d['api-backends']))" "worker 3"
check "worker holds no CA key" test ! -e "$(data_of 4)/pki/ca.key"
# The control plane signed the worker's kubelet serving certificate at join, for its name and IP.
worker_kubelet_tls() {
  nsenter --net="/run/netns/$(ns_of 4)" openssl s_client -connect "$(addr_of 4):10250" \
    -CAfile "$(data_of 1)/pki/ca.crt" -verify_return_error -verify_ip "$(addr_of 4)" </dev/null >/dev/null 2>&1
}
check "the worker's kubelet serving certificate verifies against the cluster CA" wait_for 30 "worker kubelet TLS" worker_kubelet_tls
log "worker certificate renewal through the cluster API"
# A worker whose kubelet serving certificate is gone (as if expired) gets a new one signed by
# the control plane when k8sd starts, before its kubelet does.
serial4() { openssl x509 -noout -serial -in "$(data_of 4)/pki/kubelet.crt" 2>/dev/null; }
old_serial=$(serial4)
pid=$(daemon_pid 4); kill -TERM "$pid"
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
rm -f "$(data_of 4)/pki/kubelet.crt"
# The worker holds its Kubernetes minor against the control plane's at every start: with n1's
# member record claiming the minor below ours, the restarted worker starts nothing and says why,
# and starts when the user allows one minor change.
kube_version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
lower=$(python3 -c 'import sys; M, m, p = sys.argv[1].lstrip("v").split("."); print(f"v{M}.{int(m) - 1}.{p}")' "$kube_version")
rec1=$(etcdctl_on 1 get /k8sd/members/n1 --print-value-only)
etcdctl_on 1 put /k8sd/members/n1 "$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["versions"]["kubernetes"] = sys.argv[2]; print(json.dumps(r))' "$rec1" "$lower")" >/dev/null
k_start 4 "$work/n4-skew.log"
phase4() { k 4 status -o json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["phase"])'; }
skew_refused() { local p; p=$(phase4); [[ $p == failed:* && $p == *"Kubernetes $kube_version and node n1 runs $lower"* && $p == *--allow-kubernetes-minor-change* ]]; }
check "a worker restarted beside a control plane one minor down refuses to start, naming both versions" wait_for 120 "n4 refused" skew_refused
no_kubelet4() { ! pgrep -f -- "--hostname-override=n4( |$)" >/dev/null; }
check "... and starts no kubelet" no_kubelet4
pid=$(daemon_pid 4); kill -TERM "$pid"
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
K8SD_ALLOW_KUBERNETES_MINOR_CHANGE=1 k_start 4 "$work/n4-restart.log"
check "n4 is ready again after the restart (one minor change allowed)" wait_for 180 "n4 ready" k 4 status --wait-ready --timeout 5
etcdctl_on 1 put /k8sd/members/n1 "$rec1" >/dev/null
check "n4 received a new kubelet serving certificate" bash -c "s=\$(openssl x509 -noout -serial -in '$(data_of 4)/pki/kubelet.crt') && [[ -n \$s && \$s != '$old_serial' ]]"
check "the renewed certificate verifies against the cluster CA" wait_for 30 "worker kubelet TLS" worker_kubelet_tls
check "keys are 0600" bash -c "[[ \$(stat -c %a '$(data_of 2)/pki/ca.key') == 600 && \$(stat -c %a '$(data_of 4)/pki/kubelet-client.key') == 600 && \$(stat -c %a '$(data_of 4)/pki/kubelet.key') == 600 ]]"

# The client's kubeconfig: admin credentials, server = HAProxy; the worker's: its balancer.
cluster_haproxy "$lbport" 1 2 3 || { fail "haproxy starts"; exit 1; }
sed -e "s#server: .*#server: https://127.0.0.1:6444#" "$(data_of 1)/kubeconfig/admin.conf" > "$work/admin-worker.conf"
check "kubectl through HAProxy sees 4 Ready nodes" wait_for 60 "4 nodes Ready" bash -c "[[ \$('$K8SD_KUBEBIN' kubectl --kubeconfig '$work/admin.conf' get nodes --no-headers | grep -c ' Ready ') == 4 ]]"
check "kubectl through the worker's balancer works" wait_for 30 "worker kubectl" kw get nodes

log "1-secrets. one Secrets key on every control-plane node, none on the worker"
enc() { echo "$(data_of "$1")/pki/encryption-config.yaml"; }
same_key() { [[ $(sha256sum < "$(enc 1)") == "$(sha256sum < "$(enc 2)")" && $(sha256sum < "$(enc 1)") == "$(sha256sum < "$(enc 3)")" ]]; }
check "n2 and n3 received n1's encryption configuration at join" same_key
check "it is 0600 on every control-plane node" bash -c "[[ \$(stat -c %a '$(enc 1)' '$(enc 2)' '$(enc 3)' | sort -u) == 600 ]]"
check "the worker holds no Secrets key" test ! -e "$(enc 4)"
# kubectl against one node's own kube-apiserver, bypassing HAProxy.
kc_at() { local i=$1; shift; kc --server "https://$(addr_of "$i"):6443" "$@"; }
plain="e2e-ha-plaintext-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
check "a Secret is written through n1's apiserver" kc_at 1 create secret generic e2e-ha-secret --from-literal=token="$plain"
reads_back() { [[ $(kc_at "$1" get secret e2e-ha-secret -o jsonpath='{.data.token}' | base64 -d) == "$plain" ]]; }
check "it reads back through n2's apiserver (a joined control-plane node)" wait_for 30 "n2 reads" reads_back 2
check "and through n3's" wait_for 30 "n3 reads" reads_back 3
no_plaintext() { ! grep -qaF "$plain" "$(data_of "$1")"/datastore/state.db* "$(data_of "$1")"/datastore/raft/log.db*; }
no_plaintext_anywhere() { no_plaintext 1 && no_plaintext 2 && no_plaintext 3; }
check "no replica's datastore files hold the plaintext (n1, n2, n3)" no_plaintext_anywhere

log "1a. add-ons across the cluster: DNS from a pod on the worker, metrics for every node"
bb=docker.io/library/busybox:1.37-local
kc create namespace e2e-other >/dev/null
web_fixture "$bb" | kc apply -f - >/dev/null
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: n4}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: bb, image: $bb, imagePullPolicy: Never, command: [sleep, "3600"]}
YAML
probe_running() { [[ $(kc get pod probe -o jsonpath='{.status.phase} {.spec.nodeName}') == "Running n4" ]]; }
check "a probe pod runs on the worker n4" wait_for 120 "probe on n4" probe_running
web_ready() { [[ $(kc -n e2e-other get deployment web -o jsonpath='{.status.readyReplicas}') == 2 ]]; }
check "the web Deployment is ready" wait_for 120 "web ready" web_ready
# dns_nodes: the nodes of the Ready CoreDNS replicas, one per line.
dns_nodes() {
  kc -n kube-system get pods -l k8s-app=kube-dns \
    -o jsonpath='{range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
    | awk '$2 == "True" {print $1}' | sort -u
}
two_dns_nodes() { [[ $(dns_nodes | wc -l) -eq 2 ]]; }
check "CoreDNS runs 2 ready replicas on 2 different nodes" wait_for 180 "2 CoreDNS nodes" two_dns_nodes
in_probe() { kc exec probe -- "$@"; }
resolves() { in_probe nslookup "$1" 2>&1 | grep -Eq "^Address:[[:space:]]+$2\$"; }
check "on the worker: kubernetes.default.svc.cluster.local resolves" wait_for 60 "kubernetes resolves" \
  resolves kubernetes.default.svc.cluster.local 10.96.0.1
svc_ip=$(kc -n e2e-other get service web -o jsonpath='{.spec.clusterIP}')
check "on the worker: a Service in another namespace by full name" resolves web.e2e-other.svc.cluster.local "$svc_ip"
# The short name goes through the C library resolver (search list, ndots), as wget does.
fetch() { [[ $(in_probe timeout 10 wget -q -O - "http://$1/") == hello-from-web ]]; }
check "on the worker: wget fetches the Service's page by its short name" wait_for 30 "wget short" fetch web.e2e-other
check "on the worker: and by its full name" fetch web.e2e-other.svc.cluster.local
headless_has_every_pod() {
  local out ip
  out=$(in_probe nslookup web-headless.e2e-other.svc.cluster.local 2>&1) || return 1
  for ip in $(kc -n e2e-other get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
    grep -Eq "^Address:[[:space:]]+$ip\$" <<<"$out" || return 1
  done
}
check "on the worker: the headless Service answers with every pod's address" wait_for 30 "headless" headless_has_every_pod
external_fails_fast() {
  local start=$SECONDS rc
  in_probe nslookup example.com >/dev/null 2>&1; rc=$?
  ((rc != 0 && SECONDS - start <= 5))
}
check "on the worker: an external name fails within 5 s" external_fails_fast
top_all() { [[ $(kc top nodes --no-headers 2>/dev/null | grep -cE '^n[1-4] ') -eq 4 ]]; }
check "kubectl top nodes shows all 4 nodes within 2 minutes" wait_for 120 "kubectl top" top_all

log "1a'. storage on the worker: its volumes go under its own data dir, not n1's"
# Every host here has its own data dir (data_of I); n1 applies the add-ons, so before k8sd
# recorded each node's storage dir, a volume on n4 landed under n1's.
n4_storage=$(data_of 4)/storage
n4_recorded() { [[ $(kc get node n4 -o jsonpath='{.metadata.annotations.k8sd\.io/storage-dir}') == "$n4_storage" ]]; }
check "n4 recorded its storage dir on its Node (k8sd.io/storage-dir)" wait_for 60 "n4 annotated" n4_recorded
# n4's entry in the config the provisioner reads: the ConfigMap, then the file the kubelet
# mounts in the provisioner's pod (hosts share this filesystem, so it is readable here).
n4_entry='"node":"n4","paths":["'$n4_storage'"]'
cm_maps_n4() { kc -n kube-system get configmap local-path-config -o jsonpath='{.data.config\.json}' | grep -qF "$n4_entry"; }
check "the local-path ConfigMap maps n4 to its own storage dir" wait_for 90 "ConfigMap has n4" cm_maps_n4
mounted_maps_n4() {
  local uid
  uid=$(kc -n kube-system get pods -l app=local-path-provisioner -o jsonpath='{.items[0].metadata.uid}') || return 1
  cat "$work"/n[1-4]/kubelet/pods/"$uid"/volumes/kubernetes.io~configmap/config-volume/config.json 2>/dev/null | grep -qF "$n4_entry"
}
if wait_for 180 "provisioner's config file has n4" mounted_maps_n4; then
  sleep 31 # local-path-provisioner re-reads its config file every 30 s
  pass "the provisioner's mounted config has n4's entry"
else
  fail "the provisioner's mounted config has n4's entry"
fi
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: worker-data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: worker-writer, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: n4}
  terminationGracePeriodSeconds: 1
  containers:
  - name: bb
    image: $bb
    imagePullPolicy: Never
    command: [sh, -c, "echo written-on-n4 > /data/marker; sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: worker-data}}]
YAML
ww_running() { [[ $(kc get pod worker-writer -o jsonpath='{.status.phase} {.spec.nodeName}') == "Running n4" ]]; }
check "a pod with a PVC, pinned to the worker n4, runs there" wait_for 150 "worker-writer on n4" ww_running
ww_reads() { [[ $(kc exec worker-writer -- cat /data/marker) == written-on-n4 ]]; }
check "the pod writes a file on its volume and reads it back" wait_for 30 "marker read back" ww_reads
vol_dirs() { find "$(data_of "$1")/storage" -mindepth 1 -maxdepth 1 -name 'pvc-*' 2>/dev/null; }
one_dir_on_n4() { [[ $(vol_dirs 4 | wc -l) -eq 1 ]] && grep -qx written-on-n4 "$(vol_dirs 4)/marker"; }
check "the volume is a directory under n4's own data dir (storage/pvc-*) holding the file" one_dir_on_n4
none_elsewhere() { [[ -z "$(vol_dirs 1)$(vol_dirs 2)$(vol_dirs 3)" ]]; }
check "and not under n1's, n2's or n3's data dir" none_elsewhere
kc delete pod worker-writer --wait=false >/dev/null
pod_gone() { ! kc get pod worker-writer >/dev/null 2>&1; }
wait_for 60 "worker-writer deleted" pod_gone
kc delete pvc worker-data --wait=false >/dev/null
no_dir_on_n4() { [[ -z $(vol_dirs 4) ]] && ! kc get pvc worker-data >/dev/null 2>&1; }
check "deleting the PVC removes the directory on n4" wait_for 120 "n4 volume removed" no_dir_on_n4

log "1b. DNS keeps answering when a node running a CoreDNS replica is cut off"
# Cut a control-plane node that runs a replica off the network (as a power loss looks to its
# peers); the probe on the worker keeps resolving through the other replica. Until the lost
# node is declared NotReady and its replica leaves the Service, kube-proxy still sends about
# half the lookups to it, so the check asks for 15 answers in a row: by chance alone (one
# healthy replica of two) that happens about once in 30,000 tries.
d=$(dns_nodes | grep -m 1 -E '^n[123]$'); d=${d#n}
[[ $d =~ ^[123]$ ]] || { fail "a CoreDNS replica on a control-plane node (got '$(dns_nodes | tr '\n' ' ')')"; d=1; }
ip link set "$(veth_of "$d")" down
t0=$SECONDS tries=0 misses=0 streak=0
while ((SECONDS - t0 < 180 && streak < 15)); do
  tries=$((tries + 1))
  if in_probe timeout 4 nslookup kubernetes.default.svc.cluster.local >/dev/null 2>&1; then
    streak=$((streak + 1))
  else
    misses=$((misses + 1)) streak=0
  fi
  sleep 1
done
log "TIMING dns-replica-loss: n$d cut off; $tries lookups from the worker, $misses unanswered, 15 in a row answered after $((SECONDS - t0))s"
check "DNS answers 15 lookups in a row within 180 s of n$d being cut off" test "$streak" -ge 15
ip link set "$(veth_of "$d")" up
node_ready() { [[ $(kc get node "n$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
check "n$d is Ready again once reconnected" wait_for 180 "n$d Ready" node_ready "$d"
check "HA holds again (3 voters)" wait_for 90 "3 voters" three_voters \
  "sorted(n['name'] for n in d['nodes'] if n['role']=='voter') == ['n1','n2','n3'] and d['ha']" True
kc delete pod probe --wait=false >/dev/null
kc delete namespace e2e-other --wait=false >/dev/null

log "1. a workload on the worker"
kc apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec:
      nodeSelector: {kubernetes.io/hostname: n4}
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: docker.io/library/busybox:1.37-local, imagePullPolicy: Never, command: [sleep, "3600"]}
EOF
pods_running() { [[ $(kc get pods -l app=demo --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c '^n4$') == "$1" ]]; }
check "the demo pod runs on the worker n4" wait_for 120 "pod on n4" pods_running 1
# kube-apiserver verifies the worker kubelet's certificate (--kubelet-certificate-authority).
check "kubectl exec into the pod on the worker works" wait_for 30 "exec on n4" kc exec deploy/demo -- true

log "2. stop kube-apiserver on the scheduler's leader node"
h=$(lease_holder kube-scheduler); h=${h#n}
[[ $h =~ ^[123]$ ]] || { fail "scheduler lease holder is a control-plane node (got '$h')"; h=1; }
kcm_before=$(lease_holder kube-controller-manager)
rm -f "$work/stop-loop"
loop_kubectl "$work/loop-lb.txt" kc get nodes & lp1=$!
loop_kubectl "$work/loop-worker.txt" kw get pods & lp2=$!
sleep 3
k "$h" stop kube-apiserver >/dev/null
sleep 15
sched_after=$(lease_holder kube-scheduler); kcm_after=$(lease_holder kube-controller-manager)
touch "$work/stop-loop"; wait $lp1 $lp2
log "TIMING apiserver-loss: through HAProxy $(count ok "$work/loop-lb.txt") ok / $(count fail "$work/loop-lb.txt") failed; through the worker's balancer $(count ok "$work/loop-worker.txt") ok / $(count fail "$work/loop-worker.txt") failed"
check "zero failed kubectl requests through HAProxy while n$h's apiserver is down" test "$(count fail "$work/loop-lb.txt")" -eq 0
check "zero failed kubectl requests through the worker's balancer" test "$(count fail "$work/loop-worker.txt")" -eq 0
check "kubectl kept answering (at least 5 requests each)" test "$(count ok "$work/loop-lb.txt")" -ge 5 -a "$(count ok "$work/loop-worker.txt")" -ge 5
check "the scheduler on n$h keeps its lease" test "$sched_after" == "n$h"
check "the controller-manager keeps its lease holder ($kcm_before)" test "$kcm_after" == "$kcm_before"

log "3. stop the scheduler and controller-manager on n$h"
# Both stop at once; each lease is timed from that moment until another node holds it. With
# the default 15 s lease and 2 s retry period (jittered up to 2.4 s), a holder that stops without
# releasing its lease (the controller-manager does not release it) is replaced at most one lease
# duration after a candidate last saw it renew: the candidate sees a renewal up to one retry
# period late and retries up to one retry period after expiry, so the bound is 15 + 2 x 2.4 s.
t0=$(date +%s.%N)
k "$h" stop kube-scheduler >/dev/null & k "$h" stop kube-controller-manager >/dev/null & wait
declare -A moved_at=()
deadline=$((SECONDS + 40))
while ((SECONDS < deadline)) && ((${#moved_at[@]} < 2)); do
  for lease in kube-scheduler kube-controller-manager; do
    [[ -n ${moved_at[$lease]:-} ]] && continue
    holder=$(lease_holder "$lease")
    [[ -n $holder && $holder != "n$h" ]] && moved_at[$lease]="$(echo "$(date +%s.%N) - $t0" | bc) $holder"
  done
  sleep 0.5
done
for lease in kube-scheduler kube-controller-manager; do
  if [[ -n ${moved_at[$lease]:-} ]]; then
    read -r t holder <<< "${moved_at[$lease]}"
    log "TIMING leader-election handover $lease: ${t}s (n$h -> $holder)"
    check "$lease leadership moved to $holder within the lease duration + 2 retry periods (19.8 s)" test "$(echo "$t < 19.8" | bc)" -eq 1
  else
    fail "$lease leadership moved off n$h within 40 s"
  fi
done
for c in kube-apiserver kube-scheduler kube-controller-manager; do k "$h" start "$c" >/dev/null || fail "start $c on n$h"; done

log "4. kill -9 every k8sd process on the datastore leader"
l=$(leader_node); l=${l#n}
[[ $l =~ ^[123]$ ]] || { fail "a datastore leader among n1-n3 (got '$l')"; l=1; }
survivor=$(( l % 3 + 1 ))
rm -f "$work/stop-loop"
write_probe() { kc create configmap "probe-$RANDOM$RANDOM" -o name; }
loop_kubectl "$work/loop-kill.txt" write_probe & lp=$!
sleep 2
pid=$(daemon_pid "$l")
kids=$(pgrep -P "$pid" | tr '\n' ' ')
t0=$(date +%s.%N)
kill -9 "$pid" $kids
# The first write acknowledged after the kill, through HAProxy.
first_ok() { awk -v t="$t0" '$1=="ok" && $2>t {print $2; exit}' "$work/loop-kill.txt" | grep -q .; }
wait_for 60 "a write after the kill" first_ok
sleep 5
touch "$work/stop-loop"; wait $lp
first=$(awk -v t="$t0" '$1=="ok" && $2>t {print $2; exit}' "$work/loop-kill.txt")
errs=$(awk -v t="$t0" '$1=="fail" && $2>t' "$work/loop-kill.txt" | wc -l)
if [[ -n $first ]]; then
  log "TIMING datastore failover (kill -9 of n$l's k8sd and children -> first acknowledged write via HAProxy): $(echo "$first - $t0" | bc)s, $errs failed requests"
  pass "writes continue after kill -9 of the datastore leader n$l"
else
  fail "writes continue after kill -9 of the datastore leader n$l"
fi
new_leader() { status_json "$survivor" && [[ $(json_get "$work/status$survivor.json" "[n['name'] for n in d['nodes'] if n['datastore-leader']]") != "[]" && $(json_get "$work/status$survivor.json" "[n['name'] for n in d['nodes'] if n['datastore-leader']][0]") != "n$l" ]]; }
check "the datastore elected a new leader" wait_for 30 "new leader" new_leader
kc scale deployment demo --replicas=3 >/dev/null
check "scaled to 3: the new pods run (controllers still reconcile)" wait_for 120 "3 pods" pods_running 3

log "5. delete the workload"
kc delete deployment demo --wait=false >/dev/null
no_pods() { [[ -z $(kc get pods -l app=demo -o name) ]]; }
check "its pods terminate and disappear" wait_for 120 "pods gone" no_pods

log "6. bring n$l back"
k_start "$l" "$work/n$l-restart.log"
check "n$l is ready again" wait_for 180 "n$l ready" k "$l" status --wait-ready --timeout 5
voter_again() { status_says "$l" "[n['role'] for n in d['nodes'] if n['name']=='n$l'][0] + ' ' + str(d['ha'])" "voter True"; }
check "n$l is a datastore voter again and HA holds" wait_for 60 "voter" voter_again
status_json "$survivor"; rev=$(json_get "$work/status$survivor.json" "d['datastore']['revision']")
caught_up() { status_json "$l" && [[ $(json_get "$work/status$l.json" "d['datastore']['revision']") -ge $rev ]]; }
check "n$l caught up (its replica reaches the survivor's revision)" wait_for 60 "caught up" caught_up

log "7. remove a node, refuse old tokens, join a fresh node"
# Remove n2 or n3, never n1 nor the node killed in step 4: the checks below use n1's tokens
# (they name n1's address only, as n1 was alone when it made them) and its taken name. Which
# node leads the datastore by now depends on the earlier steps (step 1b cuts a node off).
if ((l == 2)); then r=3; else r=2; fi
keep=1
if k "$keep" remove-node "n$r" >/dev/null; then pass "k8sd remove-node n$r"; else fail "k8sd remove-node n$r"; fi
gone() { ! kc get node "n$r" >/dev/null 2>&1 && status_says "$keep" "'n$r' not in [n['name'] for n in d['nodes']] and len([n for n in d['nodes'] if n['role']=='voter'])" 2; }
check "n$r is gone from the Node list and the datastore voters" wait_for 60 "n$r removed" gone
stopped() { status_json "$r"; json_get "$work/status$r.json" "d['phase']" | grep -q removed; }
check "the removed node noticed and stopped its services" wait_for 60 "n$r stopped" stopped
cluster_add_host 5
refused() { local want=$1; shift; local out; out=$(k 5 join --name n5 "$@" 2>&1) && return 1; grep -q "$want" <<< "$out" || { log "wanted '$want', got: $out"; return 1; }; }
check "a used token is refused" refused "already used" "$(cat "$work/token-n2")"
check "a garbled token is refused" refused "garbled" "not-a-token"
rt=$(k "$keep" add-node 2>/dev/null); rid=$(python3 -c "import base64,json,sys; t=sys.argv[1]; print(json.loads(base64.urlsafe_b64decode(t+'='*(-len(t)%4)))['id'])" "$rt")
k "$keep" tokens revoke "$rid" >/dev/null
check "a revoked token is refused" refused "revoked" "$rt"
# retoken TOKEN FIELD VALUE: the same token with one field changed (a forgery or a stale copy).
retoken() { python3 -c "
import base64,json,sys
t=sys.argv[1]; d=json.loads(base64.urlsafe_b64decode(t+'='*(-len(t)%4)))
d[sys.argv[2]]=json.loads(sys.argv[3])
print(base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip('='))" "$@"; }
ft=$(k "$keep" add-node 2>/dev/null)
check "a token pinning another CA is refused (fingerprint mismatch)" refused "does not match" "$(retoken "$ft" ca "\"$(printf 'ab%.0s' $(seq 32))\"")"
check "a token whose addresses are all unreachable is refused" refused "unreachable" "$(retoken "$ft" addrs '["10.210.100.99:6400"]')"
refused_as() { local name=$1 want=$2 tok=$3 out; out=$(k 5 join --name "$name" "$tok" 2>&1) && return 1; grep -q "$want" <<< "$out" || { log "wanted '$want', got: $out"; return 1; }; }
check "a node name already in the cluster is refused" refused_as n1 "already taken" "$ft"
et=$(k "$keep" add-node --ttl 1s 2>/dev/null); sleep 2
check "an expired token is refused" refused "expired" "$et"
check "a refused join left no state and consumed nothing" test ! -e "$(data_of 5)/node.yaml" -a ! -e "$(data_of 5)/pki/ca.key"
refusal_logged() { grep 'refused a join' "$(data_of "$keep")/logs/k8sd.log" | grep -F "source=$(addr_of 5)" | grep -q 'revoked'; }
check "n$keep logged the refused joins with the caller's address and the reason" refusal_logged
tok=$(k "$keep" add-node 2>/dev/null)
if k 5 join --name n5 "$tok" >/dev/null; then pass "n5 joins with a new token"; else fail "n5 joins with a new token"; fi
ha_again() { status_says "$keep" "sorted(n['name'] for n in d['nodes'] if n['role']=='voter') == sorted(['n5'] + [n for n in ['n1','n2','n3'] if n != 'n$r']) and d['ha']" True; }
check "HA holds again with n5 as the third voter" wait_for 90 "n5 voter" ha_again
k "$keep" tokens list > "$work/tokens.txt"
fid=$(python3 -c "import base64,json,sys; t=sys.argv[1]; print(json.loads(base64.urlsafe_b64decode(t+'='*(-len(t)%4)))['id'])" "$ft")
check "tokens list: the n5 token is used, the revoked one revoked" bash -c "grep -q 'used by n5' '$work/tokens.txt' && grep -q revoked '$work/tokens.txt'"
check "tokens list: the token of the refused joins is still active (nothing consumed it)" bash -c "grep '^$fid ' '$work/tokens.txt' | grep -q active"
init_refused() { local out; out=$(k 4 join --worker "$ft" 2>&1) && return 1; grep -q "already initialised" <<< "$out" || { log "got: $out"; return 1; }; }
check "join on an initialised node is refused" init_refused

# k8sd recover refuses on a worker (its quorum-loss test is step 9).
refused_on() { local i=$1 want=$2 out; shift 2; out=$(k "$i" recover "$@" </dev/null 2>&1) && return 1; grep -q "$want" <<< "$out" || { log "recover on n$i: wanted '$want', got: $out"; return 1; }; }
check "k8sd recover on the worker is refused (it holds no datastore)" refused_on 4 "is a worker" --yes

log "8. the worker leaves"
if k 4 leave >/dev/null; then pass "k8sd leave on the worker"; else fail "k8sd leave on the worker"; fi
left() { ! kc get node n4 >/dev/null 2>&1 && status_says "$keep" "'n4' in [n['name'] for n in d['nodes']]" False && status_says 4 "d['initialised']" False; }
check "n4 is gone from the Node list and the members, and forgot the cluster" wait_for 60 "n4 left" left


log "9. quorum loss: 2 of 3 control-plane nodes gone for good, k8sd recover on the survivor"
o=$((5 - r))   # the control-plane node of n2/n3 that stayed; n1 and n5 are the other voters
check "recover is refused on an uninitialised machine (n4 left)" refused_on 4 "not a k8sd node" --yes
nobody_recover() { local out; out=$(nsenter --net="/run/netns/$(ns_of 1)" setpriv --reuid=65534 --regid=65534 --clear-groups "$K8SD_BIN" --data-dir "$(data_of 1)" --run-dir "$(run_of 1)" recover --yes 2>&1) && return 1; grep -q "must run as root" <<< "$out" || { log "as nobody: $out"; return 1; }; }
check "recover as a non-root user is refused, saying it needs root" nobody_recover
check "recover with the quorum intact is refused, saying 3 of 3 voters are reachable" refused_on 1 "3 of 3 datastore voters are reachable" --yes
check "the cluster is unchanged: 3 voters, HA holds" three_voters "sorted(n['name'] for n in d['nodes'] if n['role']=='voter') == sorted(['n1','n$o','n5']) and d['ha']" True
kc_at 1 create configmap e2e-before-loss --from-literal=k=kept-across-recover >/dev/null || fail "a ConfigMap written before the loss"
t9=$SECONDS
for i in "$o" 5; do
  pid=$(daemon_pid "$i"); kids=$(pgrep -P "$pid" | tr '\n' ' ')
  kill -9 "$pid" $kids
  ip link set "$(veth_of "$i")" down   # gone for good: not even its address answers
done
write_fails() { ! kc_at 1 --request-timeout=5s create configmap e2e-during-loss >/dev/null 2>&1; }
check "with n$o and n5 gone, writes through n1 fail" write_fails
check "recover with the daemon running is refused (it must be stopped)" refused_on 1 "needs it stopped" --yes
pid=$(daemon_pid 1); kill -TERM "$pid"
for _ in $(seq 90); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
ds_sums() { sha256sum "$(data_of 1)"/datastore/raft/log.db* "$(data_of 1)"/datastore/state.db* 2>/dev/null; }
sums=$(ds_sums)
check "recover without confirmation (no terminal, no --yes) is refused" refused_on 1 "pass --yes to confirm"
check "and changed nothing: the datastore files are byte-identical, no backup was written" \
  bash -c "[[ \"\$(sha256sum '$(data_of 1)'/datastore/raft/log.db* '$(data_of 1)'/datastore/state.db* 2>/dev/null)\" == '$sums' ]] && ! ls k8sd-recover-backup-* '$work'/recover.tar.gz 2>/dev/null"
out=$(k 1 recover --yes --backup "$work/recover.tar.gz" 2>&1); rc=$?
log "recover: rc=$rc: $out"
# Exactly the members in force: n$r, removed in step 7, is in older memberships of the log
# (fenced too) but must not be named, or the operator would be told to remove it again.
recovered() { ((rc == 0)) && grep -q 'n1 is now the only datastore voter' <<< "$out" \
  && [[ $(grep -o 'removed: .*' <<< "$out" | cut -c10- | tr -d ' ' | tr ',' '\n' | sort | tr '\n' ' ') == "$(printf '%s\n' "n$o" n5 | sort | tr '\n' ' ')" ]]; }
check "k8sd recover --yes makes n1 the only voter, naming exactly the removed members n$o and n5" recovered
check "it took a backup first: $work/recover.tar.gz, 0600" bash -c "[[ \$(stat -c %a '$work/recover.tar.gz') == 600 ]]"
k_start 1 "$work/n1-recover.log"
check "n1 is ready again after recover" wait_for 180 "n1 ready" k 1 status --wait-ready --timeout 5
sole_voter() { status_says 1 "[(m['name'], m['role']) for m in d['datastore']['members']]" "[('n1', 'voter')]"; }
check "the datastore has one member, n1, a voter" wait_for 30 "sole voter" sole_voter
kept() { [[ $(kc_at 1 get configmap e2e-before-loss -o jsonpath='{.data.k}') == kept-across-recover ]]; }
check "the ConfigMap written before the loss is there" wait_for 30 "data kept" kept
check "writes work again" wait_for 30 "writes" kc_at 1 create configmap e2e-after-recover
check "kubectl works: n1 is a Ready node" wait_for 60 "n1 Ready" node_ready 1
log "TIMING recover: $((SECONDS - t9))s from the loss of n$o and n5 to writes through n1 again (incl. the checks)"
log "9a. the lost nodes come back on their old data, together: they must not take n1 over"
for i in "$o" 5; do
  ip link set "$(veth_of "$i")" up
  k_start "$i" "$work/n$i-return.log"
done
zombie_leader() { timeout 10 "$K8SD_BIN" --data-dir "$(data_of 5)" --run-dir "$(run_of 5)" status -o json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['datastore']['leader'])"; }
has_zombie_leader() { [[ $(zombie_leader) == n[0-9] ]]; }
wait_for 60 "the returning nodes elect" has_zombie_leader
log "after 60 s at most, n5 names datastore leader '$(zombie_leader)' (a quorum of the old configuration, if not 'none')"
sleep 10
check "n1 is still the only voter" sole_voter
after_return() { kc_at 1 get configmap e2e-after-recover >/dev/null && kc_at 1 create configmap e2e-after-return >/dev/null; }
check "n1 still has the data written after recover, and takes writes" after_return
for i in "$o" 5; do pid=$(daemon_pid "$i"); kids=$(pgrep -P "$pid" | tr '\n' ' '); kill -9 "$pid" $kids; done
for i in "$o" 5; do
  if k 1 remove-node "n$i" >/dev/null; then pass "k8sd remove-node n$i (no datastore member any more)"; else fail "k8sd remove-node n$i"; fi
done
log "9b. the lost nodes are reset and join again with new tokens"
for i in "$o" 5; do
  out=$(k "$i" reset --force 2>&1) || log "reset n$i: $out"
  check "n$i is reset" test ! -e "$(data_of "$i")/node.yaml"
done
for i in "$o" 5; do
  tok=$(k 1 add-node 2>/dev/null) || fail "add-node for n$i"
  k "$i" join --name "n$i" "$tok" > "$work/rejoin-n$i.log" 2>&1 & eval "jp$i=\$!"
done
jo=jp$o; if wait "${!jo}"; then pass "n$o joins again with a new token"; else log "$(tail -5 "$work/rejoin-n$o.log")"; fail "n$o joins again with a new token"; fi
if wait "$jp5"; then pass "n5 joins again with a new token"; else log "$(tail -5 "$work/rejoin-n5.log")"; fail "n5 joins again with a new token"; fi
check "3 voters again (n1, n$o, n5) and HA holds" wait_for 120 "3 voters" three_voters \
  "sorted(n['name'] for n in d['nodes'] if n['role']=='voter') == sorted(['n1','n$o','n5']) and d['ha']" True
reads_after() { [[ $(kc_at "$1" get configmap e2e-before-loss -o jsonpath='{.data.k}') == kept-across-recover ]]; }
check "a rejoined node's apiserver serves the data from before the loss" wait_for 60 "n5 reads" reads_after 5

finish
