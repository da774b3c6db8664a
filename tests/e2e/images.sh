#!/usr/bin/env bash
# The local images, run by a real containerd: every tarball of the catalog imports under its
# name, and the programs inside work in their bare rootfs.
#   - coredns reports the pinned version, links the kubernetes plugin and no cloud plugin, and
#     answers DNS queries from its hosts plugin;
#   - metrics-server and local-path-provisioner report their pinned versions;
#   - busybox's wget, nc and nslookup resolve names through /etc/hosts and through DNS (CoreDNS
#     above) and fetch a page from busybox httpd; an unknown name fails with exit 1, not a crash;
#     `wget -T 2` works (Debian 12's busybox crashed on it);
#   - busybox is the version pinned in assets/busybox/source.env, and its `sh -c env` keeps a
#     variable named `data-1` (Debian's busybox drops such names; Kubernetes' ConfigMap/Secret
#     specs rely on them).
# A private containerd (own root, state and socket under a temporary directory) runs the
# containers with `ctr run`, in a test-owned network namespace; nothing touches the host's.
#
# Prerequisites (built by scripts/test.sh): K8SD_BIN and every tarball in K8SD_IMAGES_DIR
# (scripts/build-addons.sh, then scripts/build-images.sh). A missing tarball fails the test.
# KEEP=1 keeps the work directory. The last line is "N passed, M failed".
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck source=../../assets/addons/versions.env
. "$repo/assets/addons/versions.env"
# Every missing prerequisite is a failure, counted in the closing line.
for p in "$K8SD_BIN" "${runtime_bins[@]}"; do
  [[ -s "$p" ]] || fail "missing prerequisite: $p (run scripts/test.sh, which builds and installs everything; the runtime: scripts/build-runtime.sh)"
done
for t in pause busybox coredns metrics-server local-path-provisioner; do
  [[ -s "$K8SD_IMAGES_DIR/$t.tar" ]] \
    || fail "missing image tarball: $K8SD_IMAGES_DIR/$t.tar (run scripts/build-addons.sh, then scripts/build-images.sh)"
done
if ((failed > 0)); then finish; exit 1; fi

work=$(mktemp -d /tmp/k8sd-images.XXXXXX)
ns=k8sd-images-$$
sock="$work/containerd.sock"
containerd_pid=""
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }

cleanup() {
  local rc=$?
  trap '' INT TERM
  if [[ -n "$containerd_pid" ]]; then
    for c in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1
      ctr_ tasks delete -f "$c" >/dev/null 2>&1
      ctr_ containers delete "$c" >/dev/null 2>&1
    done
    kill -TERM "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
  fi
  ip netns del "$ns" 2>/dev/null
  # Leftover mounts (a container that did not stop) must go before the directory does.
  grep -o " $work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  if ((failed > 0 || rc != 0)); then
    log "containerd log (last lines):"; tail -n 20 "$work/containerd.log" 2>/dev/null
    log "work directory kept: $work"
  elif [[ "${KEEP:-0}" != 1 ]]; then
    rm -rf "$work"
  fi
  ((rc == 0 || failed > 0)) || fail "aborted (exit $rc)"
  # The trap's own status is not the script's: exit with it.
  finish || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- a private containerd --------------------------------------------------------------------
mkdir -p "$work/cni"
sed -e "s|{{containerd_root}}|$work/root|g" -e "s|{{containerd_state}}|$work/state|g" \
  -e "s|{{containerd_address}}|$sock|g" -e "s|{{cni_conf_dir}}|$work/cni|g" \
  -e "s|{{runc}}|$K8SD_RUNTIME_DIR/runc|g" \
  "$repo/assets/containerd/config.toml" >"$work/config.toml"
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
if ! wait_for 30 "containerd at $sock" ctr --address "$sock" version; then
  fail "private containerd answers on its socket"
  exit 1
fi
pass "private containerd answers on its socket"

# --- import every catalog image --------------------------------------------------------------
# Everything below needs the listing: a k8sd without `images list` stops the test here.
if ! list=$("$K8SD_BIN" images list --images-dir "$K8SD_IMAGES_DIR" 2>&1); then
  fail "k8sd images list: $list"
  exit 1
fi
check "k8sd images list shows every image present" \
  bash -c '! grep -q missing <<<"$1" && [[ $(grep -c present <<<"$1") == 5 ]]' _ "$list"
mapfile -t refs < <(awk '{ print $1 }' <<<"$list")
mapfile -t tarballs < <(awk '{ print $4 }' <<<"$list")
check "k8sd images import loads every tarball" \
  "$K8SD_BIN" images import --address "$sock" "${tarballs[@]}"
have=$(ctr_ images ls -q)
for r in "${refs[@]}"; do check "image $r is in containerd's k8s.io namespace" grep -qx "$r" <<<"$have"; done
coredns_ref=$(grep '/coredns:' <<<"$list" | awk '{ print $1 }')
ms_ref=$(grep '/metrics-server:' <<<"$list" | awk '{ print $1 }')
lpp_ref=$(grep '/local-path-provisioner:' <<<"$list" | awk '{ print $1 }')
bb_ref=docker.io/library/busybox:1.37-local

# run NAME IMAGE CMD...: run to completion in the test's network namespace; prints its output,
# and its exit status is the container's.
ip netns add "$ns" && ip -n "$ns" link set lo up
run() {
  local name=$1 image=$2; shift 2
  timeout 60 ctr --address "$sock" --namespace k8s.io run --rm \
    --with-ns "network:/run/netns/$ns" "$image" "t-$name-$$" "$@" 2>&1
}
# expect DESCRIPTION PATTERN NAME IMAGE CMD...: the output matches the extended regex PATTERN
# and the container exits 0.
expect() {
  local d=$1 pattern=$2 out rc; shift 2
  out=$(run "$@"); rc=$?
  if ((rc == 0)) && grep -qE "$pattern" <<<"$out"; then pass "$d"; else fail "$d (exit $rc): ${out:0:400}"; fi
}

# --- the add-on binaries ---------------------------------------------------------------------
expect "coredns -version prints CoreDNS-${COREDNS#v}" "^CoreDNS-${COREDNS#v}\$" \
  coredns-version "$coredns_ref" /coredns -version
plugins=$(run coredns-plugins "$coredns_ref" /coredns -plugins)
check "coredns links the kubernetes, forward and cache plugins" \
  bash -c 'for p in kubernetes forward cache prometheus health ready; do grep -qw "$p" <<<"$1" || exit 1; done' _ "$plugins"
check "coredns links no cloud plugin (route53, azure, clouddns)" \
  bash -c '! grep -qwE "route53|azure|clouddns" <<<"$1"' _ "$plugins"
expect "metrics-server --version prints $METRICS_SERVER" "^$METRICS_SERVER\$" \
  metrics-server "$ms_ref" /metrics-server --version
expect "local-path-provisioner --version prints $LOCAL_PATH_PROVISIONER" "version $LOCAL_PATH_PROVISIONER\$" \
  local-path-provisioner "$lpp_ref" /local-path-provisioner --version

# --- busybox itself -------------------------------------------------------------------------
bb_version=$(awk -F= '$1 == "VERSION" { print $2 }' "$repo/assets/busybox/source.env")
expect "busybox is upstream's $bb_version (assets/busybox/source.env)" "^BusyBox v${bb_version//./\\.} " \
  bb-version "$bb_ref" busybox
out=$(timeout 60 ctr --address "$sock" --namespace k8s.io run --rm --env data-1=value-1 --env PLAIN=plain \
  --with-ns "network:/run/netns/$ns" "$bb_ref" "t-bb-env-$$" sh -c env 2>&1)
check "busybox sh -c env keeps data-1" grep -qx 'data-1=value-1' <<<"$out"
check "busybox sh -c env keeps ordinary variables" grep -qx 'PLAIN=plain' <<<"$out"
grep -qx 'data-1=value-1' <<<"$out" || log "sh -c env printed: ${out//$'\n'/ | }"

# --- CoreDNS serving, busybox resolving --------------------------------------------------------
cat >"$work/Corefile" <<'COREFILE'
.:53 {
    errors
    ready 127.0.0.1:8181
    hosts {
        127.0.0.1 dns.k8sd.test
    }
    cache 30
}
COREFILE
ctr_ run -d --with-ns "network:/run/netns/$ns" \
  --mount "type=bind,src=$work/Corefile,dst=/etc/coredns/Corefile,options=rbind:ro" \
  "$coredns_ref" "t-dns-$$" /coredns -conf /etc/coredns/Corefile >"$work/coredns.out" 2>&1
ready() { run ready "$bb_ref" wget -q -O- http://127.0.0.1:8181/ready | grep -qx OK; }
check "coredns serves DNS in a container and reports ready" wait_for 30 "coredns /ready" ready

# One busybox container: a page behind httpd, one name in /etc/hosts, one only in DNS.
# `timeout` bounds every fetch; `wget -T` is checked once on its own, because Debian 12's
# busybox 1.35, which this image packed before, crashed with SIGSEGV whenever -T was given.
script='
set -e
mkdir -p /www && echo "hello from k8sd" > /www/index.html
httpd -p 127.0.0.1:8000 -h /www
echo "127.0.0.1 files.k8sd.test" >> /etc/hosts
echo "nameserver 127.0.0.1" > /etc/resolv.conf
echo "[hosts] $(wget -q -O- http://files.k8sd.test:8000/)"
echo "[dns] $(wget -q -O- http://dns.k8sd.test:8000/)"
echo "[wget -T] $(timeout 10 wget -T 2 -q -O- http://files.k8sd.test:8000/)"
echo "[nc] $(printf "GET / HTTP/1.0\r\n\r\n" | nc files.k8sd.test 8000 | tail -n 1)"
echo "[nslookup]"; nslookup dns.k8sd.test 127.0.0.1
rc=0; timeout 10 wget -q -O- http://nowhere.k8sd.test:8000/ || rc=$?
echo "[unknown name] exit $rc"
'
out=$(run busybox "$bb_ref" sh -c "$script"); rc=$?
log "busybox output:"; sed 's/^/  | /' <<<"$out"
check "busybox script exits 0 (no segfault; exit $rc)" test "$rc" -eq 0
check "wget fetches a page by a name from /etc/hosts" grep -qx '\[hosts\] hello from k8sd' <<<"$out"
check "wget fetches a page by a name only CoreDNS knows" grep -qx '\[dns\] hello from k8sd' <<<"$out"
check "wget -T 2 fetches the page (no crash)" grep -qx '\[wget -T\] hello from k8sd' <<<"$out"
check "nc connects by name" grep -qx '\[nc\] hello from k8sd' <<<"$out"
check "nslookup gets the address from CoreDNS" \
  bash -c 'sed -n "/^\[nslookup\]/,\$p" <<<"$1" | grep -A3 "dns.k8sd.test" | grep -q "Address: 127.0.0.1"' _ "$out"
check "wget of an unknown name fails cleanly (exit 1, not a crash)" grep -qx '\[unknown name\] exit 1' <<<"$out"
