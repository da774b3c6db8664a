#!/usr/bin/env bash
# Runs Kubernetes' conformance suite (the [Conformance] specs of e2e.test at assets/kube/VERSION)
# against a k8sd cluster built and brought up on this machine, the way sonobuoy's
# certified-conformance mode runs it: every [Conformance] spec, the parallel ones first, then the
# [Serial] ones one at a time, nothing skipped.
#
# Steps:
#   1. build (unless --no-build): host packages, kubebin, the add-ons, k8sd, the images, the
#      conformance images (scripts/build-conformance-images.sh) and e2e.test + ginkgo
#      (scripts/build-conformance-suite.sh). Nothing is pulled: every image is built here.
#   2. a cluster in test-owned network namespaces on the bridge k8sd-brc (10.212.0.0/24):
#      n1 `k8sd init`, further control-plane nodes and the workers `k8sd join`; every
#      conformance image imported on every node; every node Ready and every add-on ready.
#   3. the suite, with ginkgo; the log, the JUnit and JSON reports go to the output directory.
#   4. a summary: passed, failed, total, each failure; on a full run (no --focus) it also
#      regenerates the results part of docs/conformance.md.
#
# Usage: scripts/conformance.sh [options]
#   --control-planes N   control-plane nodes (default 1; 3 for an HA cluster)
#   --workers N          worker nodes (default 1)
#   --focus REGEX        run only the [Conformance] specs whose name matches (no docs update)
#   --procs N            parallel ginkgo processes for the non-serial specs (default 4)
#   --out DIR            where logs and reports go (default /var/tmp/k8sd-conformance/<time>)
#   --no-build           use what is built; fail if anything is missing
#   --keep               leave the cluster running at the end (tear it down with
#                        scripts/teardown-host.sh, or rerun this script)
# Exit status 0 only when every selected spec passed and at least one ran.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/cargo-target}

die() { echo "conformance: error: $*" >&2; exit 2; }

cps=1 workers=1 focus="" procs=4 out="" build=1 keep=0
while (($#)); do
  case "$1" in
    --control-planes) cps=${2:-}; shift ;;
    --workers) workers=${2:-}; shift ;;
    --focus) focus=${2:-}; shift ;;
    --procs) procs=${2:-}; shift ;;
    --out) out=${2:-}; shift ;;
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see $0 --help)" ;;
  esac
  shift
done
[[ "$cps" =~ ^[1-9]$ && "$workers" =~ ^[0-9]$ ]] || die "--control-planes must be 1-9 and --workers 0-9 (got $cps and $workers)"
((cps + workers >= 2)) || die "the suite needs at least two nodes (--control-planes $cps --workers $workers)"
[[ "$procs" =~ ^[1-9][0-9]?$ ]] || die "--procs must be a number from 1 to 99 (got '$procs')"
version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
out=${out:-/var/tmp/k8sd-conformance/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" || die "cannot create the output directory $out"
out=$(cd "$out" && pwd)
started=$(date +%s)

# ---- 1. build -------------------------------------------------------------------------------
cd "$repo"
if ((build)); then
  scripts/setup-host.sh || die "scripts/setup-host.sh failed"
  K8SD_KUBEBIN=$(scripts/build-kube.sh | tail -n 1) || die "scripts/build-kube.sh failed"
  scripts/build-addons.sh >/dev/null || die "scripts/build-addons.sh failed"
  cargo build --release --bin k8sd || die "cargo build failed"
  K8SD_BIN="$CARGO_TARGET_DIR/release/k8sd" scripts/build-images.sh >/dev/null || die "scripts/build-images.sh failed"
  suite=$(scripts/build-conformance-suite.sh | tail -n 1) || die "scripts/build-conformance-suite.sh failed"
  images=$(K8SD_BIN="$CARGO_TARGET_DIR/release/k8sd" scripts/build-conformance-images.sh | tail -n 1) \
    || die "scripts/build-conformance-images.sh failed"
else
  K8SD_KUBEBIN=$(scripts/build-kube.sh --check | tail -n 1) || die "kubebin is not built (scripts/build-kube.sh)"
  suite=$(scripts/build-conformance-suite.sh --check | tail -n 1) || die "e2e.test is not built (scripts/build-conformance-suite.sh)"
  images=${K8SD_CONFORMANCE_IMAGES:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/conformance/images}
fi
export K8SD_KUBEBIN
K8SD_BIN=${K8SD_BIN:-$CARGO_TARGET_DIR/release/k8sd}
source "$repo/tests/e2e/lib.sh"
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$suite/e2e.test" "$suite/ginkgo" "$images/images.tsv"
mapfile -t tarballs < <(awk -F'\t' -v d="$images" 'NF == 2 { print d "/" $2 }' "$images/images.tsv")
((${#tarballs[@]})) || die "$images/images.tsv lists no image; rebuild with scripts/build-conformance-images.sh"
require "${tarballs[@]}"

# ---- 2. the cluster -------------------------------------------------------------------------
cluster_setup k8sd-conf k8sd-brc 10.212.0 30
done_up() {
  if ((keep)); then
    log "the cluster stays up (--keep): admin kubeconfig $work/admin.conf; k8sd data under $work"
  else
    cluster_teardown
  fi
}
trap done_up EXIT
all=$(seq 1 $((cps + workers)))
for i in $all; do cluster_add_host "$i"; done

log "cluster: $cps control-plane node(s), $workers worker(s)"
k 1 init --node-name n1 >"$out/init.log" 2>&1 || { cat "$out/init.log"; die "k8sd init failed on n1"; }
for i in $(seq 2 "$cps"); do
  tok=$(k 1 add-node 2>>"$out/init.log") || die "add-node for n$i failed"
  k "$i" join --name "n$i" "$tok" >>"$out/init.log" 2>&1 || { cat "$out/init.log"; die "k8sd join failed on n$i"; }
done
for i in $(seq $((cps + 1)) $((cps + workers))); do
  tok=$(k 1 add-node --worker --name "n$i" 2>>"$out/init.log") || die "add-node --worker for n$i failed"
  k "$i" join --worker "$tok" >>"$out/init.log" 2>&1 || { cat "$out/init.log"; die "k8sd join --worker failed on n$i"; }
done
for i in $all; do
  log "n$i: importing ${#tarballs[@]} conformance images"
  "$K8SD_BIN" images import --address "$(containerd_sock "$i")" "${tarballs[@]}" >>"$out/import.log" 2>&1 \
    || { tail -n 20 "$out/import.log"; die "importing the conformance images on n$i failed"; }
done
# The suite runs in the root namespace: talk to n1's kube-apiserver on its advertise address
# (the kubeconfig k8sd writes names the node-local load balancer, 127.0.0.1:6444).
sed -e "s#server: .*#server: https://$(addr_of 1):6443#" "$(data_of 1)/kubeconfig/admin.conf" > "$work/admin.conf"
kc() { "$K8SD_KUBEBIN" kubectl --kubeconfig "$work/admin.conf" --request-timeout=20s "$@"; }
all_ready() { [[ $(kc get nodes --no-headers 2>/dev/null | grep -c ' Ready ') == $((cps + workers)) ]]; }
wait_for 300 "every node Ready" all_ready || die "not every node became Ready: $(kc get nodes 2>&1)"
k 1 status --wait-ready --timeout 300 >"$out/status.txt" 2>&1 || { cat "$out/status.txt"; die "the cluster or its add-ons did not become ready"; }
kc get nodes -o wide >"$out/nodes.txt" 2>&1
log "cluster ready after $(($(date +%s) - started))s"

# ---- 3. the suite ---------------------------------------------------------------------------
# Flags of e2e.test: the skeleton provider (no cloud), our kubectl, the cluster's DNS domain.
e2e_flags=(--kubeconfig="$work/admin.conf" --provider=skeleton --kubectl-path="$(dirname "$K8SD_KUBEBIN")/kubectl"
  --dns-domain=cluster.local --report-dir="$out" --disable-log-dump --allowed-not-ready-nodes=0)
conf='\[Conformance\]'
serial='\[Serial\]|\[Disruptive\]'
run_pass() { # NAME PROCS FOCUS [SKIP]
  local name=$1 n=$2 f=$3 s=${4:-}
  log "suite pass '$name': focus /$f/${s:+ skip /$s/}, $n process(es)"
  local gflags=(--timeout=6h --output-dir="$out" --junit-report="junit-$name.xml" --json-report="report-$name.json"
    --no-color --focus="$f")
  [[ -n $s ]] && gflags+=(--skip="$s")
  ((n > 1)) && gflags+=(-p --procs="$n")
  # The suite needs `kubectl` and writes temporary files; run it from the output directory.
  (cd "$out" && "$suite/ginkgo" "${gflags[@]}" "$suite/e2e.test" -- "${e2e_flags[@]}") >>"$out/e2e.log" 2>&1
}
if [[ -n $focus ]]; then
  # A subset: the parallel specs of the focus together, then its serial ones alone.
  run_pass subset "$procs" "$conf.*($focus)|($focus).*$conf" "$serial"
  run_pass subset-serial 1 "($serial).*($focus)|($focus).*($serial)" ""
else
  run_pass parallel "$procs" "$conf" "$serial"
  run_pass serial 1 "($serial).*$conf|$conf.*($serial)" ""
fi
wall=$(($(date +%s) - started))

# ---- 4. the summary -------------------------------------------------------------------------
machine="$(nproc) cores, $(awk '/MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
runtime="$("$K8SD_BIN" --version 2>/dev/null | sed -n 1p), checkout $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown), run $(date -u +%Y-%m-%d)"
if [[ -n $focus ]]; then scope=(--subset "$focus"); else scope=(--docs "$repo/docs/conformance.md"); fi
python3 "$repo/scripts/conformance-summary.py" --out "$out" --version "$version" --wall "$wall" \
  --machine "$machine" --cluster "$cps control-plane + $workers worker node(s)" --k8sd "$runtime" \
  --spec-list "${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/mod/k8s.io/kubernetes@$version/test/conformance/testdata/conformance.yaml" \
  "${scope[@]}"
