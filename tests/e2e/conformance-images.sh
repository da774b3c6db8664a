#!/usr/bin/env bash
# End to end for the images the Kubernetes [Conformance] specs run (scripts/build-conformance-images.sh):
# images.tsv names every image reference that the files holding the specs (and the framework
# packages they import) take from test/utils/image/manifest.go, derived from the kube source;
# every tarball imports under its exact reference; and on a one-node k8sd cluster each image
# does what the specs rely on (agnhost netexec and tools; busybox env, sysctl and ash's exact
# message on a read-only root; nginx on :80; nonewprivs, nonroot, dig in glibc-dns-testing,
# etcd and sample-apiserver start, pause runs).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONFORMANCE_IMAGES_DIR=${CONFORMANCE_IMAGES_DIR:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/conformance/images}
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "${runtime_bins[@]}" \
  "$CONFORMANCE_IMAGES_DIR/images.tsv"

ns=k8sd-e2e-cimages
work=$(mktemp -d /var/tmp/k8sd-e2e-cimages.XXXXXX)
data=$work/data run=/run/$(basename "$work")
export K8SD_CGROUP_ROOT=/$(basename "$work")
k8sd() { in_host "$ns" "$K8SD_BIN" --data-dir "$data" --run-dir "$run" "$@"; }
kubectl() { k8sd kubectl "$@"; }
daemon_pid() { cat "$run/k8sd.pid" 2>/dev/null; }

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
  ip link del k8sd-h7 2>/dev/null
  rm -rf "$work" "$run"
}
trap cleanup EXIT

log "1. images.tsv covers every image the conformance specs use (derived from the kube source)"
kube_src=$(cd "$repo/assets/conformance" && GOMODCACHE=${GOMODCACHE:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/mod} \
  GOFLAGS=-mod=mod GOTOOLCHAIN=local go list -m -f '{{.Dir}}' k8s.io/kubernetes) \
  || { echo "cannot locate k8s.io/kubernetes of assets/conformance in the module cache" >&2; exit 1; }
manifest=$kube_src/test/utils/image/manifest.go
require "$manifest" "$kube_src/test/conformance/testdata/conformance.yaml"
# The files that hold the [Conformance] specs, and the e2e framework packages they import.
mapfile -t spec_files < <(awk '$1 == "file:" { print $2 }' "$kube_src/test/conformance/testdata/conformance.yaml" | sort -u)
mapfile -t fw_dirs < <(cd "$kube_src" && cat "${spec_files[@]}" \
  | grep -oE '"k8s.io/kubernetes/test/e2e/framework[^"]*"' | tr -d '"' | sed 's#^k8s.io/kubernetes/##' | sort -u)
sources=()
for f in "${spec_files[@]}"; do sources+=("$kube_src/$f"); done
for d in "${fw_dirs[@]}"; do
  for f in "$kube_src/$d"/*.go; do [[ $f == *_test.go ]] || sources+=("$f"); done
done
# Image IDs they name; GetPauseImageName() is the Pause ID.
mapfile -t ids < <({ grep -ohE 'imageutils\.[A-Z][A-Za-z0-9]+' "${sources[@]}" | sed 's/^imageutils\.//'
  grep -qh 'GetPauseImageName' "${sources[@]}" && echo Pause; } | sort -u)
# IDs that manifest.go itself says cannot run out of the cloud (private or invalid registry).
cloud_only=$(awk '/func GetMappedImageConfigs/ { f = 1 } f && /case .*:$/ { sub(/^[ \t]*case /, ""); sub(/:$/, ""); gsub(/,/, " "); print; exit }' "$manifest")
# VolumeNFSServer is framework/volume's NFS server, used only by [Feature:NFS] volume specs, none
# of them [Conformance] (persistent_volumes.go imports the package for its other specs).
not_conformance="VolumeNFSServer"
wanted=()
for id in "${ids[@]}"; do
  line=$(grep -E "^\s*configs\[$id\] = Config\{" "$manifest") || continue # a helper, not an image ID
  if [[ " $cloud_only $not_conformance " == *" $id "* ]]; then log "  not needed offline: $id"; continue; fi
  reg_field=$(sed -E 's/.*Config\{list\.([A-Za-z0-9]+), .*/\1/' <<<"$line")
  name=$(sed -E 's/.*Config\{[^,]+, "([^"]+)", "([^"]+)".*/\1/' <<<"$line")
  version=$(sed -E 's/.*Config\{[^,]+, "([^"]+)", "([^"]+)".*/\2/' <<<"$line")
  registry=$(awk -v f="$reg_field:" '$1 == f { gsub(/[",]/, "", $2); print $2; exit }' "$manifest")
  wanted+=("$registry/$name:$version")
done
log "  the specs use: ${wanted[*]}"
check "the derivation found the images every conformance run needs (agnhost, busybox, pause)" \
  test "$(printf '%s\n' "${wanted[@]}" | grep -cE '/(agnhost|busybox|pause):')" -ge 3
covered() {
  local ref ok=0
  for ref in "${wanted[@]}"; do
    grep -qP "^\Q$ref\E\t" "$CONFORMANCE_IMAGES_DIR/images.tsv" || { log "images.tsv lacks $ref"; ok=1; }
  done
  return $ok
}
check "images.tsv has every one of the ${#wanted[@]} references" covered
tarballs_exist() {
  local ref tar ok=0
  while IFS=$'\t' read -r ref tar; do
    [[ -s "$CONFORMANCE_IMAGES_DIR/$tar" ]] || { log "$ref: $CONFORMANCE_IMAGES_DIR/$tar missing"; ok=1; }
  done <"$CONFORMANCE_IMAGES_DIR/images.tsv"
  return $ok
}
check "every tarball images.tsv names exists" tarballs_exist

log "2. a one-node cluster imports every tarball under its reference"
make_host "$ns" 7
if k8sd init --node-name e2e-cimages --disable dns,metrics,storage; then pass "k8sd init"; else fail "k8sd init"; exit 1; fi
ready() { k8sd status --wait-ready --timeout 300 >/dev/null; }
check "k8sd status --wait-ready" ready
sock=$run/containerd/containerd.sock
mapfile -t tars < <(cut -f2 "$CONFORMANCE_IMAGES_DIR/images.tsv" | sed "s#^#$CONFORMANCE_IMAGES_DIR/#")
check "k8sd images import takes all ${#tars[@]} tarballs" "$K8SD_BIN" images import --address "$sock" "${tars[@]}"
all_named() {
  local names ref ok=0
  names=$(ctr --address "$sock" --namespace k8s.io images ls -q)
  while IFS=$'\t' read -r ref _; do
    grep -qxF "$ref" <<<"$names" || { log "containerd has no image $ref"; ok=1; }
  done <"$CONFORMANCE_IMAGES_DIR/images.tsv"
  return $ok
}
check "containerd (k8s.io) has every reference of images.tsv" all_named

ref() { awk -F'\t' -v pat="$1" '$1 ~ pat { print $1; exit }' "$CONFORMANCE_IMAGES_DIR/images.tsv"; }
AGNHOST=$(ref '/agnhost:2\\.63') AGNHOST_PREV=$(ref '/agnhost:2\\.55') BUSYBOX=$(ref '/busybox:')
NGINX=$(ref '/nginx:1\\.15') NGINX_NEW=$(ref '/nginx:1\\.27') DNSUTILS=$(ref '/glibc-dns-testing:')
NONEWPRIVS=$(ref '/nonewprivs:') NONROOT=$(ref '/nonroot:') KITTEN=$(ref '/kitten:')
NAUTILUS=$(ref '/nautilus:') SAMPLE_APISERVER=$(ref '/sample-apiserver:') ETCD=$(ref '/etcd:')
PAUSE=$(ref '/pause:')

log "3. each image does what the specs rely on"
# pod NAME IMAGE CONTAINER-YAML [POD-SPEC-YAML]: a pod with restartPolicy Never.
pod() {
  local name=$1 image=$2 extra=$3 podextra=${4:-}
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
$podextra
  containers:
  - name: c
    image: $image
    imagePullPolicy: Never
$extra
---
YAML
}
{
  pod agnhost "$AGNHOST" '    args: [netexec, --http-port=8080, --udp-port=8081]'
  pod agnhost-prev "$AGNHOST_PREV" '    args: [netexec, --http-port=8080]'
  pod kitten "$KITTEN" ''
  pod nautilus "$NAUTILUS" ''
  pod nginx "$NGINX" ''
  pod nginx-new "$NGINX_NEW" ''
  pod pause "$PAUSE" ''
  # As the ConfigMap/Secret envFrom specs: a variable named data-1 reaches `sh -c env`.
  pod busybox-env "$BUSYBOX" '    command: [sh, -c, env]
    env: [{name: data-1, value: value-1}, {name: PLAIN, value: plain}]'
  # As kubelet.go's read-only busybox spec: /bin/sh is busybox ash, and its message is exact.
  pod busybox-readonly "$BUSYBOX" '    command: [/bin/sh, -c, "echo test > /file; sleep 240"]
    securityContext: {readOnlyRootFilesystem: true}'
  # As sysctl.go: /bin/sysctl reads the value the pod set.
  pod busybox-sysctl "$BUSYBOX" '    command: [/bin/sysctl, kernel.shm_rmid_forced]' \
    '  securityContext: {sysctls: [{name: kernel.shm_rmid_forced, value: "1"}]}'
  # As security_context.go's allowPrivilegeEscalation specs.
  pod nnp-false "$NONEWPRIVS" '    securityContext: {allowPrivilegeEscalation: false, runAsUser: 1000}'
  pod nnp-true "$NONEWPRIVS" '    securityContext: {allowPrivilegeEscalation: true, runAsUser: 1000}'
  pod nonroot "$NONROOT" '    command: [id, -u]'
  pod dnsutils "$DNSUTILS" '    command: [sh, -c, "dig -v && nslookup -version && getent hosts localhost && hostname && /coredns -version"]'
  pod etcd "$ETCD" '    command: [/usr/local/bin/etcd, --version]'
  pod sample-apiserver "$SAMPLE_APISERVER" '    args: [--help]'
} >"$work/pods.yaml"
check "the pods are created" kubectl apply -f "$work/pods.yaml"

phase() { kubectl get pod "$1" -o jsonpath='{.status.phase}'; }
running() { [[ $(phase "$1") == Running ]]; }
succeeded() { [[ $(phase "$1") == Succeeded ]]; }
# The logs are read whole first: `grep -q` stopping early would SIGPIPE kubectl, and pipefail
# would turn a match into a failure.
logs_have() {
  local out; out=$(kubectl logs "$1" 2>&1)
  grep -qE -e "$2" <<<"$out" || { log "$1 logs lack /$2/:"; head -n 20 <<<"$out"; return 1; }
}
for p in agnhost agnhost-prev kitten nautilus nginx nginx-new pause busybox-readonly; do
  check "$p runs ($(kubectl get pod "$p" -o jsonpath='{.spec.containers[0].image}'))" wait_for 120 "$p Running" running "$p"
done
for p in busybox-env busybox-sysctl nnp-false nnp-true nonroot dnsutils etcd sample-apiserver; do
  check "$p completes successfully" wait_for 120 "$p Succeeded" succeeded "$p"
done

in_agnhost() { kubectl exec agnhost -- "$@"; }
check "agnhost netexec answers /hostname with the pod name" \
  test "$(in_agnhost curl -s http://127.0.0.1:8080/hostname)" = agnhost
check "agnhost carries dig, nslookup, curl, nc, ip, ss, iperf, bash, ipcs, wget" \
  in_agnhost sh -c 'for t in dig nslookup curl nc ip ss iperf bash ipcs wget; do command -v $t >/dev/null || { echo missing $t; exit 1; }; done'
coredns_runs() { [[ $(in_agnhost /coredns -version) == CoreDNS-* ]]; }
check "agnhost's /coredns runs" coredns_runs
check "agnhost has user-defined-in-image (1000) in group-defined-in-image (50000)" \
  test "$(in_agnhost id user-defined-in-image)" = "uid=1000(user-defined-in-image) gid=1000(user-defined-in-image) groups=1000(user-defined-in-image),50000(group-defined-in-image)"
dns_server_list() { [[ $(in_agnhost /agnhost dns-server-list) == 10.96.0.10 ]]; }
check "agnhost dns-server-list reads the pod's resolv.conf (the cluster DNS address)" dns_server_list
agnhost_prev_ip=$(kubectl get pod agnhost-prev -o jsonpath='{.status.podIP}')
check "agnhost dials agnhost:2.55 (netexec /dial, as the networking specs do)" \
  in_agnhost sh -c "curl -s 'http://127.0.0.1:8080/dial?request=hostname&protocol=http&host=$agnhost_prev_ip&port=8080&tries=1' | grep -q agnhost-prev"
images_differ() {
  local a b
  a=$(kubectl get pod agnhost -o jsonpath='{.status.containerStatuses[0].imageID}')
  b=$(kubectl get pod agnhost-prev -o jsonpath='{.status.containerStatuses[0].imageID}')
  [[ -n $a && $a != "$b" ]]
}
check "agnhost 2.55 and 2.63.0 are distinct images (a rolling update changes the image ID)" images_differ
for p in kitten nautilus; do
  ip=$(kubectl get pod "$p" -o jsonpath='{.status.podIP}')
  check "$p serves its data.json on :80 (test-webserver)" \
    in_agnhost sh -c "curl -sf http://$ip:80/data.json | grep -qi $p"
done
# What the ImageVolume spec reads from the kitten image mounted as a volume.
check "kitten holds data.json naming kitten.jpg and an /etc/os-release naming Alpine Linux (the image it stands in for)" \
  kubectl exec kitten -- sh -c 'grep -q kitten.jpg /data.json && grep -q "Alpine Linux" /etc/os-release'
for p in nginx nginx-new; do
  ip=$(kubectl get pod "$p" -o jsonpath='{.status.podIP}')
  check "$p serves on :80" in_agnhost sh -c "curl -sf http://$ip:80/ | grep -q 'Welcome to nginx'"
done
check "busybox sh passes data-1 on to env" logs_have busybox-env '^data-1=value-1$'
check "busybox sh passes ordinary variables too" logs_have busybox-env '^PLAIN=plain$'
# The spec compares the whole log, trailing newline included; $(…) would strip it.
readonly_log_exact() {
  local out; out=$(kubectl logs busybox-readonly 2>&1; echo .)
  [[ ${out%.} == "/bin/sh: can't create /file: Read-only file system"$'\n' ]] \
    || { log "busybox-readonly logs: $(printf %q "${out%.}")"; return 1; }
}
# wait_for is quiet; a last try shows what the log held instead.
readonly_message() { wait_for 60 "the read-only message" readonly_log_exact || readonly_log_exact; }
check "busybox /bin/sh on a read-only root prints exactly \"/bin/sh: can't create /file: Read-only file system\"" \
  readonly_message
check "busybox has /bin/sysctl and it reads the pod's sysctl" logs_have busybox-sysctl '^kernel.shm_rmid_forced = 1$'
check "nonewprivs without privilege escalation stays uid 1000" logs_have nnp-false '^Effective uid: 1000$'
check "nonewprivs with privilege escalation becomes uid 0 (setuid nnp)" logs_have nnp-true '^Effective uid: 0$'
check "nonroot runs as uid 1234" logs_have nonroot '^1234$'
check "glibc-dns-testing has dig, nslookup, getent and /coredns" logs_have dnsutils 'CoreDNS-'
check "etcd is 3.6.8" logs_have etcd '^etcd Version: 3\.6\.8$'
check "sample-apiserver starts and knows its flags" logs_have sample-apiserver '--etcd-servers'

finish
