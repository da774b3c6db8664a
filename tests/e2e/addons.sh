#!/usr/bin/env bash
# End to end for the cluster add-ons on one node, with real components: `k8sd init` deploys
# CoreDNS, metrics-server and local-path-provisioner; `k8sd status --wait-ready` waits for them;
# DNS answers for Services and pods (and fails fast for an external name: the test host has no
# way out); a PVC binds, keeps its data across pods and its directory goes with it; `kubectl top`
# works; `k8sd disable|enable` remove and restore an add-on; `k8sd status -o json` lists them.
# The node's Prometheus endpoint (:2381) answers a cluster-CA client certificate only and
# carries the datastore's etcd metrics and k8sd's own, whose restart counter moves.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" \
  "$K8SD_IMAGES_DIR/coredns.tar" "$K8SD_IMAGES_DIR/metrics-server.tar" \
  "$K8SD_IMAGES_DIR/local-path-provisioner.tar" "${runtime_bins[@]}"

ns=k8sd-e2e-addons
work=$(mktemp -d /var/tmp/k8sd-e2e-addons.XXXXXX)
data=$work/data run=/run/$(basename "$work")
export K8SD_CGROUP_ROOT=/$(basename "$work")
k8sd() { in_host "$ns" "$K8SD_BIN" --data-dir "$data" --run-dir "$run" "$@"; }
kubectl() { k8sd kubectl "$@"; }
daemon_pid() { cat "$run/k8sd.pid" 2>/dev/null; }
BUSYBOX=docker.io/library/busybox:1.37-local

stop_daemon() {
  local pid; pid=$(daemon_pid) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  log "k8sd did not exit within 60 s"; return 1
}

cleanup() {
  if ((failed > 0)); then
    kubectl get pods -A -o wide 2>&1 | sed 's/^/  | /'
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 | sed 's/^/  | /'
    for f in "$data"/logs/*.log; do echo "----- $f (last 30 lines)"; tail -n 30 "$f"; done
  fi
  stop_daemon
  reset_or_teardown "$ns" "$data" "$run"
  ip link del k8sd-h5 2>/dev/null
  rm -rf "$work" "$run"
}
trap cleanup EXIT

status_json() { k8sd status -o json > "$work/status.json"; }
status_says() {
  status_json || return 1
  local got; got=$(json_get "$work/status.json" "$1" 2>&1)
  [[ $got == "$2" ]] && return 0
  log "status check: wanted '$2' from $1, got '$got'; status was:"; cat "$work/status.json"
  return 1
}

make_host "$ns" 5

log "1. k8sd init deploys the add-ons; status --wait-ready waits for them"
if k8sd init --node-name e2e-addons; then pass "k8sd init"; else fail "k8sd init"; exit 1; fi
check "k8sd status --wait-ready returns once every add-on is ready" k8sd status --wait-ready --timeout 300
check "status -o json lists dns, metrics and storage, all enabled and ready" status_says \
  "' '.join(a['name'] + ':' + str(a['enabled'] and a['ready']) for a in d['addons'])" \
  "dns:True metrics:True storage:True"
has_addons_section() { k8sd status | grep -q '^add-ons:'; }
check "status text has an add-ons section" has_addons_section
dns_ip() { kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}'; }
check "kube-dns has the cluster DNS address (10th of the service CIDR)" test "$(dns_ip)" = 10.96.0.10
managed_by_k8sd() {
  kubectl -n kube-system get deployment coredns --show-managed-fields -o jsonpath='{.metadata.managedFields[*].manager}' \
    | grep -qw k8sd
}
check "the add-ons are applied with field manager k8sd" managed_by_k8sd

log "2. DNS"
kubectl create namespace e2e-other >/dev/null
cat > "$work/dns.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: bb, image: $BUSYBOX, imagePullPolicy: Never, command: [sleep, "3600"]}
---
YAML
web_fixture "$BUSYBOX" >> "$work/dns.yaml"
kubectl apply -f "$work/dns.yaml" >/dev/null
probe_running() { [[ $(kubectl get pod probe -o jsonpath='{.status.phase}') == Running ]]; }
web_ready() { [[ $(kubectl -n e2e-other get deployment web -o jsonpath='{.status.readyReplicas}') == 2 ]]; }
check "the probe pod runs" wait_for 120 "probe Running" probe_running
check "the web Deployment is ready" wait_for 120 "web ready" web_ready
in_probe() { kubectl exec probe -- "$@"; }
# resolves NAME IP: NAME's answer holds IP (the "Address:" line of the server is IP:53).
resolves() { in_probe nslookup "$1" 2>&1 | grep -Eq "^Address:[[:space:]]+$2\$"; }
svc_ip=$(kubectl -n e2e-other get service web -o jsonpath='{.spec.clusterIP}')
check "kubernetes.default.svc.cluster.local resolves to 10.96.0.1" wait_for 60 "kubernetes resolves" \
  resolves kubernetes.default.svc.cluster.local 10.96.0.1
# busybox nslookup applies the search list only to names without a dot, so the short name goes
# through the C library resolver (search list and ndots from the pod's resolv.conf) via wget.
fetch() { [[ $(in_probe timeout 10 wget -q -O - "http://$1/") == hello-from-web ]]; }
check "a Service in another namespace resolves by short name (wget http://web.e2e-other/)" \
  wait_for 30 "wget web.e2e-other" fetch web.e2e-other
check "and by full name (web.e2e-other.svc.cluster.local)" resolves web.e2e-other.svc.cluster.local "$svc_ip"
headless_has_every_pod() {
  local out ip
  out=$(in_probe nslookup web-headless.e2e-other.svc.cluster.local 2>&1) || return 1
  for ip in $(kubectl -n e2e-other get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
    grep -Eq "^Address:[[:space:]]+$ip\$" <<<"$out" || { log "headless answer lacks $ip: $out"; return 1; }
  done
}
check "the headless Service answers with every pod's address" wait_for 30 "headless records" headless_has_every_pod
check "wget fetches the Service's page by its full name" \
  wait_for 30 "wget web.e2e-other.svc.cluster.local" fetch web.e2e-other.svc.cluster.local
external_fails_fast() {
  local start=$SECONDS rc
  in_probe nslookup example.com >/dev/null 2>&1; rc=$?
  local took=$((SECONDS - start))
  log "external lookup: exit $rc after ${took}s"
  ((rc != 0 && took <= 5))
}
check "an external name fails within 5 s (no upstream is reachable)" external_fails_fast

log "3. storage: a PVC binds on the default class and keeps its data"
cat > "$work/pvc.yaml" <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
YAML
cat > "$work/writer.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: bb
    image: $BUSYBOX
    imagePullPolicy: Never
    command: [sh, -c, "[ -f /data/marker ] || echo persisted-\$(date +%s) > /data/marker; sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
YAML
kubectl apply -f "$work/pvc.yaml" -f "$work/writer.yaml" >/dev/null
pvc_bound() { [[ $(kubectl get pvc data -o jsonpath='{.status.phase}') == Bound ]]; }
writer_running() { [[ $(kubectl get pod writer -o jsonpath='{.status.phase}') == Running ]]; }
check "the PVC binds (default StorageClass local-path)" wait_for 120 "PVC Bound" pvc_bound
check "the pod using it runs" wait_for 120 "writer Running" writer_running
marker() { kubectl exec writer -- cat /data/marker; }
wait_for 30 "marker written" marker
first=$(marker 2>/dev/null)
check "the pod wrote its file" test -n "$first"
volume_dirs() { find "$data/storage" -mindepth 1 -maxdepth 1 -name 'pvc-*' 2>/dev/null | wc -l; }
check "the volume is a directory under the data dir's storage/" test "$(volume_dirs)" -eq 1
kubectl delete pod writer --wait=true >/dev/null
kubectl apply -f "$work/writer.yaml" >/dev/null
check "the recreated pod runs" wait_for 120 "writer Running" writer_running
same_data() { [[ -n $first && $(marker) == "$first" ]]; }
check "the data is still there" wait_for 30 "same marker" same_data
kubectl delete pod writer --wait=true >/dev/null
kubectl delete pvc data --wait=true >/dev/null
no_volume_dir() { [[ $(volume_dirs) -eq 0 ]]; }
check "deleting the PVC removes the volume directory" wait_for 120 "volume dir removed" no_volume_dir

log "4. metrics"
top_shows_node() { kubectl top nodes 2>/dev/null | grep -q '^e2e-addons '; }
check "kubectl top nodes shows the node within 2 minutes" wait_for 120 "kubectl top nodes" top_shows_node
# kube-apiserver verifies metrics-server: the APIService carries the cluster CA as its caBundle
# and no insecureSkipTLSVerify, and it is Available (it would not be if verification failed).
apiservice_verifies() {
  local spec; spec=$(kubectl get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.spec.insecureSkipTLSVerify}|{.spec.caBundle}|{.status.conditions[?(@.type=="Available")].status}')
  [[ $spec == "|$(base64 -w0 < "$data/pki/ca.crt")|True" ]] && return 0
  log "APIService v1beta1.metrics.k8s.io: insecureSkipTLSVerify|caBundle|Available = ${spec:0:40}..."
  return 1
}
check "the metrics APIService verifies metrics-server against the cluster CA, and is Available" \
  apiservice_verifies
serving_cert_verifies() {
  kubectl -n kube-system get secret metrics-server-tls -o jsonpath='{.data.tls\.crt}' | base64 -d > "$work/ms.crt" &&
    openssl verify -CAfile "$data/pki/ca.crt" -verify_hostname metrics-server.kube-system.svc "$work/ms.crt" >/dev/null
}
check "metrics-server's serving certificate is from the cluster CA, for metrics-server.kube-system.svc" \
  serving_cert_verifies
eviction_on() {
  local got; got=$(kubectl get --raw /api/v1/nodes/e2e-addons/proxy/configz |
    python3 -c 'import json,sys; e=json.load(sys.stdin)["kubeletconfig"]["evictionHard"]; print(" ".join(k + "=" + e[k] for k in sorted(e)))')
  [[ $got == "imagefs.available=5% imagefs.inodesFree=5% memory.available=100Mi nodefs.available=5% nodefs.inodesFree=5%" ]] && return 0
  log "the kubelet's evictionHard: $got"; return 1
}
check "the kubelet evicts under disk pressure (5 % free on nodefs and imagefs)" eviction_on

log "5. toggling: k8sd disable dns / k8sd enable dns"
check "k8sd disable dns" k8sd disable dns
dns_gone() {
  ! kubectl -n kube-system get deployment coredns >/dev/null 2>&1 &&
    ! kubectl -n kube-system get service kube-dns >/dev/null 2>&1
}
check "the coredns Deployment and the kube-dns Service are gone" wait_for 60 "dns objects gone" dns_gone
check "status: dns disabled, the others enabled" status_says \
  "' '.join(a['name'] + ':' + str(a['enabled']) for a in d['addons'])" "dns:False metrics:True storage:True"
check "a disabled add-on does not hold --wait-ready" k8sd status --wait-ready --timeout 30
unknown_refused() {
  local out; out=$(k8sd disable ingress 2>&1)
  [[ $? -ne 0 && $out == *"valid add-ons are: dns, metrics, storage"* ]]
}
check "an unknown add-on is refused with the valid names" unknown_refused
check "k8sd enable dns" k8sd enable dns
dns_back() {
  kubectl -n kube-system get deployment coredns >/dev/null 2>&1 && [[ $(dns_ip) == 10.96.0.10 ]]
}
check "the coredns Deployment and the kube-dns Service are back" wait_for 60 "dns objects back" dns_back
check "status --wait-ready waits for dns again" k8sd status --wait-ready --timeout 180
check "DNS resolves again" wait_for 60 "kubernetes resolves" resolves kubernetes.default.svc.cluster.local 10.96.0.1
check "k8sd disable metrics" k8sd disable metrics
metrics_gone() {
  ! kubectl get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1 &&
    ! kubectl -n kube-system get secret metrics-server-tls >/dev/null 2>&1
}
check "the metrics APIService and its certificate's Secret are gone" wait_for 60 "metrics objects gone" metrics_gone
check "k8sd enable metrics" k8sd enable metrics
check "the metrics APIService is back, verified and Available" wait_for 120 "metrics APIService available" \
  apiservice_verifies

log "6. a restart re-applies the add-ons and keeps a user's own changes"
kubectl -n kube-system annotate deployment coredns e2e.k8sd.io/note=kept >/dev/null
kubectl -n kube-system delete configmap local-path-config >/dev/null
check "k8sd stops on SIGTERM" stop_daemon
in_host "$ns" "$K8SD_BIN" --data-dir "$data" --run-dir "$run" run >> "$data/logs/k8sd.log" 2>&1 &
check "k8sd run resumes the node with its add-ons" k8sd status --wait-ready --timeout 300
config_back() { kubectl -n kube-system get configmap local-path-config >/dev/null 2>&1; }
check "the deleted local-path-config is re-created" wait_for 60 "local-path-config back" config_back
note_kept() {
  [[ $(kubectl -n kube-system get deployment coredns -o jsonpath='{.metadata.annotations.e2e\.k8sd\.io/note}') == kept ]]
}
check "a user's annotation on the coredns Deployment survives the re-apply" note_kept

log "7. Prometheus metrics on :2381 (docs/metrics.md), with a client certificate from the cluster CA"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=k8sd-metrics \
  -keyout "$work/prom.key" -out "$work/prom.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > "$work/prom.ext"
openssl x509 -req -in "$work/prom.csr" -CA "$data/pki/ca.crt" -CAkey "$data/pki/ca.key" -days 1 \
  -out "$work/prom.crt" -extfile "$work/prom.ext" 2>/dev/null
metrics_url=https://10.210.5.2:2381/metrics
scrape() {
  in_host "$ns" curl -sS --fail --max-time 10 --cacert "$data/pki/ca.crt" \
    --cert "$work/prom.crt" --key "$work/prom.key" "$metrics_url" > "$work/metrics.txt"
}
sample() { awk -v s="$1" 'index($0, s " ") == 1 { print $2 }' "$work/metrics.txt"; }
check "a scrape with a cluster-CA client certificate is answered" scrape
refused_without_cert() { ! in_host "$ns" curl -sS --fail --max-time 10 --cacert "$data/pki/ca.crt" "$metrics_url" >/dev/null 2>&1; }
check "a scrape without a client certificate is refused" refused_without_cert
types_ok() {
  local want
  for want in 'etcd_server_has_leader gauge' 'etcd_disk_wal_fsync_duration_seconds histogram' \
    'etcd_disk_backend_commit_duration_seconds histogram' 'grpc_server_handled_total counter' \
    'k8sd_certificate_expiration_seconds gauge' 'k8sd_component_restarts_total counter' \
    'k8sd_component_state gauge' 'k8sd_lb_backend_healthy gauge'; do
    grep -qx "# TYPE $want" "$work/metrics.txt" || { log "missing: # TYPE $want"; return 1; }
  done
}
check "the datastore's etcd metrics and k8sd's own are there with their types" types_ok
check "etcd_server_has_leader is 1" test "$(sample etcd_server_has_leader)" = 1
check "kube-apiserver is in state ready" \
  test "$(sample 'k8sd_component_state{component="kube-apiserver",state="ready"}')" = 1
cert_days() { local s; s=$(sample 'k8sd_certificate_expiration_seconds{file="apiserver.crt",subject="kube-apiserver"}'); [[ -n $s ]] && ((s > 300 * 86400)); }
check "apiserver.crt expires in more than 300 days" cert_days
check "the load balancer's backend is healthy" \
  test "$(sample 'k8sd_lb_backend_healthy{backend="10.210.5.2:6443"}')" = 1
before=$(sample 'k8sd_component_restarts_total{component="kube-proxy"}')
kill -9 "$(cat "$run/pids/kube-proxy.pid")"
restart_counted() { scrape && [[ $(sample 'k8sd_component_restarts_total{component="kube-proxy"}') == $((before + 1)) ]]; }
check "kill -9 of kube-proxy shows as one restart" wait_for 60 "kube-proxy restart counted" restart_counted

finish
