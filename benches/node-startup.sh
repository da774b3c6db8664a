#!/usr/bin/env bash
# Node startup and idle footprint: `k8sd init` against the same upstream components started by
# hand against Debian's etcd (the flow of tests/e2e/k8s-smoke.sh). Recorded, not asserted.
#
#   a. k8sd: in a fresh network namespace, time `k8sd init` from start until it returns (it
#      returns once the Node is Ready), RUNS times with fresh data dirs. After the last run the
#      node idles IDLE seconds; then the k8sd daemon's CPU (utime+stime delta from /proc/PID/stat
#      over the idle window, as % of one core) and VmRSS, and the same for every supervised
#      component (<run-dir>/pids/*.pid).
#   b. By hand: tests/e2e/k8s-smoke.sh with K8SD_SMOKE_BENCH_OUT set, RUNS times; time from
#      starting etcd until the Node is Ready; after the last run, the same idle sampling of etcd
#      and the components (the smoke test holds the cluster while we sample, then carries on
#      with its pod and teardown checks, which must pass).
#   c. Prints markdown tables and replaces (or appends) the section "Node startup and idle
#      footprint ..." of docs/benchmarks.md, unless --no-docs.
#
# Usage: benches/node-startup.sh [--runs N] [--idle SECONDS] [--no-docs]
# KEEP=1 keeps the raw measurements (a directory under /var/tmp, named at the end); they are
# kept anyway when the benchmark fails.
# Needs root, the release k8sd (K8SD_BIN, default ${CARGO_TARGET_DIR:-target}/release/k8sd),
# kubebin and the image tarballs (scripts/build-kube.sh, scripts/build-images.sh).
#
# Isolation: each k8sd run gets its own network namespace (k8sd-bench-<pid>-<run>) with a veth
# pair kept wholly inside it (as k8s-smoke.sh does, so nothing is added to the root namespace),
# its own data dir under /var/tmp, run dir under /run and kubelet cgroup root; all are removed
# with scripts/teardown-host.sh, also on error or interrupt (trap). Every wait is bounded.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"

runs=3 idle=60 docs=1
while (($#)); do
  case "$1" in
    --runs) runs=$2; shift ;;
    --idle) idle=$2; shift ;;
    --no-docs) docs=0 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
require "$K8SD_BIN" "$K8SD_KUBEBIN" "$K8SD_IMAGES_DIR/pause.tar" "$K8SD_IMAGES_DIR/busybox.tar" "${runtime_bins[@]}" /usr/bin/etcd

out=$(mktemp -d /var/tmp/k8sd-bench-startup.XXXXXX)
hz=$(getconf CLK_TCK)
node_ip=10.214.0.2

# --- one k8sd node at a time; cleanup tears down whichever is up ------------------------------
ns="" work="" data="" run="" smoke_pid=""
k8sd() { in_host "$ns" "$K8SD_BIN" --data-dir "$data" --run-dir "$run" "$@"; }

stop_daemon() {
  local pid; pid=$(cat "$run/k8sd.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  log "k8sd did not exit within 60 s; killing it"; kill -KILL "$pid" 2>/dev/null
}

teardown_node() {
  [[ -n "$work" ]] || return 0
  stop_daemon
  "$repo/scripts/teardown-host.sh" --netns "$ns" --kubelet-root "$data/kubelet" \
    --containerd-address "$run/containerd/containerd.sock" --containerd-root "$data/containerd" \
    --containerd-state "$run/containerd" --cni-ipam-dir "$data/cni/networks" --pod-logs-dir "$data/pod-logs" \
    --cgroup-root "$K8SD_CGROUP_ROOT" >> "$out/teardown.log" 2>&1 || log "teardown of $ns reported leftovers (see $out/teardown.log)"
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work" "$run"
  work=""
}

stop_smoke() {
  [[ -n "$smoke_pid" ]] || return 0
  if kill -0 "$smoke_pid" 2>/dev/null; then
    touch "$out/smoke.bench.done"
    kill -TERM "$smoke_pid" 2>/dev/null
    for _ in $(seq 120); do kill -0 "$smoke_pid" 2>/dev/null || break; sleep 1; done
  fi
  smoke_pid=""
}

done=0
cleanup() {
  trap '' INT TERM
  stop_smoke
  teardown_node
  if ((done)) && [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$out"; else log "raw output kept in $out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A network namespace whose node address sits on a veth pair kept inside it, with a default
# route to the pair's other end (nothing leaves the namespace).
new_host() {
  ns=$1
  ip netns del "$ns" 2>/dev/null
  ip netns add "$ns" &&
    ip -n "$ns" link set lo up &&
    ip -n "$ns" link add k8sd0 type veth peer name k8sd1 &&
    ip -n "$ns" addr add "$node_ip/30" dev k8sd0 &&
    ip -n "$ns" addr add 10.214.0.1/30 dev k8sd1 &&
    ip -n "$ns" link set k8sd0 up &&
    ip -n "$ns" link set k8sd1 up &&
    ip -n "$ns" route add default via 10.214.0.1 dev k8sd0
}

# --- sampling --------------------------------------------------------------------------------
cpu_ticks() {  # utime+stime of PID, in clock ticks (fields 14 and 15; comm may hold spaces)
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
rss_kib() { awk '/^VmRSS:/ {print $2; f=1} END {if (!f) print -1}' "/proc/$1/status" 2>/dev/null || echo -1; }

# sample_idle FILE NAME=PID...: idle for $idle s, then write "NAME cpu% rss_mib" per process.
sample_idle() {
  local file=$1; shift
  local -A t0=()
  local np name pid w0 w1 t1
  w0=$(date +%s.%N)
  for np in "$@"; do t0[$np]=$(cpu_ticks "${np#*=}"); done
  log "idling ${idle} s, sampling ${#t0[@]} processes"
  sleep "$idle"
  w1=$(date +%s.%N)
  : > "$file"
  for np in "$@"; do
    name=${np%%=*} pid=${np#*=}
    t1=$(cpu_ticks "$pid")
    if ((t1 < 0 || ${t0[$np]} < 0)); then
      echo "$name - -" >> "$file"; log "warning: $name (pid $pid) exited during the idle window"; continue
    fi
    awk -v n="$name" -v a="${t0[$np]}" -v b="$t1" -v hz="$hz" -v w0="$w0" -v w1="$w1" -v r="$(rss_kib "$pid")" \
      'BEGIN { printf "%s %.2f %.1f\n", n, 100 * (b - a) / hz / (w1 - w0), r / 1024 }' >> "$file"
  done
  uptime > "$file.uptime"
}

# --- a. k8sd init ----------------------------------------------------------------------------
k8sd_run() {  # k8sd_run N: one timed init; the last run also samples the idle node
  local i=$1 t0 t1 rc
  new_host "k8sd-bench-$$-$i" || { log "cannot create netns"; return 1; }
  work=$(mktemp -d /var/tmp/k8sd-bench-node.XXXXXX)
  data=$work/data run=/run/$(basename "$work")
  K8SD_CGROUP_ROOT=/$(basename "$work"); export K8SD_CGROUP_ROOT
  uptime > "$out/k8sd.$i.uptime"
  log "k8sd run $i: init in netns $ns"
  t0=$(date +%s.%N)
  # Each progress line the CLI prints is stamped with the time it arrived.
  k8sd init --node-name "bench-$i" --advertise-address "$node_ip" --timeout 300 2>&1 |
    while IFS= read -r line; do echo "$(date +%s.%N) $line"; done > "$out/k8sd.$i.steps"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  if ((rc != 0)); then
    log "k8sd init failed (exit $rc):"; cat "$out/k8sd.$i.steps"; tail -n 30 "$data/logs/k8sd.log"; return 1
  fi
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' > "$out/k8sd.$i.secs"
  awk -v a="$t0" '{ printf "%6.1f s  ", $1 - a; $1 = ""; sub(/ \(log: .*\)$/, ""); print substr($0, 2) }' \
    "$out/k8sd.$i.steps" > "$out/k8sd.$i.phases"
  log "k8sd run $i: $(cat "$out/k8sd.$i.secs") s"
  if ((i == runs)); then
    local procs=("datastore=$(cat "$run/k8sd.pid")") f
    for f in "$run"/pids/*.pid; do procs+=("$(basename "$f" .pid)=$(cat "$f")"); done
    # The add-ons run as pods: wait until they are ready, then find their processes by name
    # inside this node's kubelet cgroup root (so no other node's pods are counted).
    k8sd status --wait-ready --timeout 300 >/dev/null || log "warning: add-ons not ready within 300 s"
    local p comm n=0
    for p in /proc/[0-9]*; do
      comm=$(cat "$p/comm" 2>/dev/null) || continue
      case "$comm" in coredns | metrics-server | local-path-prov) ;; *) continue ;; esac
      grep -q "$K8SD_CGROUP_ROOT/" "$p/cgroup" 2>/dev/null || continue
      n=$((n + 1)); procs+=("addon-$comm#$n=${p#/proc/}")
    done
    sample_idle "$out/k8sd.idle" "${procs[@]}"
    grep '^addon-' "$out/k8sd.idle" | sed 's/^addon-//; s/#[0-9]*//' > "$out/addons.idle"
    sed -i '/^addon-/d' "$out/k8sd.idle"
  fi
  teardown_node
}

# --- b. by hand against etcd (k8s-smoke.sh) --------------------------------------------------
smoke_run() {
  local i=$1 f=$out/smoke.bench deadline
  rm -f "$f" "$f.done"
  ((i == runs)) || touch "$f.done"   # only the last run holds the cluster for sampling
  uptime > "$out/smoke.$i.uptime"
  log "by-hand run $i: tests/e2e/k8s-smoke.sh"
  K8SD_BIN=$K8SD_BIN K8SD_SMOKE_BENCH_OUT=$f K8SD_SMOKE_BENCH_HOLD=$((idle + 120)) \
    bash "$repo/tests/e2e/k8s-smoke.sh" > "$out/smoke.$i.log" 2>&1 &
  smoke_pid=$!
  deadline=$((SECONDS + 600))
  until grep -qx idle "$f" 2>/dev/null; do
    if ! kill -0 "$smoke_pid" 2>/dev/null || ((SECONDS > deadline)); then
      log "k8s-smoke.sh did not bring the node up:"; tail -n 40 "$out/smoke.$i.log"; return 1
    fi
    sleep 0.5
  done
  awk '$1 == "mark" && $2 == "start" {a = $3} $1 == "mark" && $2 == "node-ready" {b = $3}
       END { printf "%.1f\n", b - a }' "$f" > "$out/smoke.$i.secs"
  awk '$1 == "mark" && $2 == "start" {a = $3} $1 == "mark" && $2 != "start" { printf "%6.1f s  %s\n", $3 - a, $2 }' \
    "$f" > "$out/smoke.$i.phases"
  log "by-hand run $i: $(cat "$out/smoke.$i.secs") s"
  if ((i == runs)); then
    local procs=()
    procs+=("datastore=$(awk '$1 == "pid" && $2 == "etcd" {print $3}' "$f")")
    while read -r _ name pid; do [[ $name == etcd ]] || procs+=("$name=$pid"); done < <(grep '^pid ' "$f")
    sample_idle "$out/smoke.idle" "${procs[@]}"
    touch "$f.done"
  fi
  deadline=$((SECONDS + 300))
  while kill -0 "$smoke_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
  if kill -0 "$smoke_pid" 2>/dev/null; then log "k8s-smoke.sh did not finish"; return 1; fi
  wait "$smoke_pid"; smoke_pid=""
  # The bring-up was checked before we got here (the smoke test stops at its first failed
  # must); later checks compare machine-wide state, such as /run/netns/cni-*, which other
  # tests running on the machine change, so their failures are reported, not fatal.
  if ! grep -q '^[0-9]* passed, 0 failed$' "$out/smoke.$i.log"; then
    log "warning: k8s-smoke.sh run $i reported failures after the bring-up:"; grep '^FAIL' "$out/smoke.$i.log"
    local kept; kept=$(sed -n 's/^work directory kept: //p' "$out/smoke.$i.log")
    [[ $kept == /var/tmp/k8sd-smoke.* ]] && rm -rf "$kept"
  fi
}

started=$(date -u +%Y-%m-%d)
uptime_start=$(uptime)
for i in $(seq "$runs"); do k8sd_run "$i" || exit 1; done
for i in $(seq "$runs"); do smoke_run "$i" || exit 1; done

# --- c. report -------------------------------------------------------------------------------
median() { sort -n | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
row_runs() {  # row_runs PREFIX: "| r1 | r2 | ... | median |"
  local i line="" 
  for i in $(seq "$runs"); do line+=" $(cat "$out/$1.$i.secs") |"; done
  echo "$line **$(cat "$out"/"$1".*.secs | median)** |"
}
val() { awk -v n="$2" -v c="$3" '$1 == n { print $c; f = 1 } END { if (!f) print "-" }' "$out/$1.idle"; }
sum() { awk -v c="$2" -v skip="$3" '$1 != skip && $c != "-" { s += $c } END { printf "%.1f\n", s }' "$out/$1.idle"; }

kube_version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
etcd_version=$(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')
commit=$(git -C "$repo" rev-parse --short HEAD)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
header="| setup |"; sep="|---|"
for i in $(seq "$runs"); do header+=" run $i (s) |"; sep+="---:|"; done
header+=" median (s) |"; sep+="---:|"

{
  echo "## Node startup and idle footprint (k8sd init vs. by hand against etcd)"
  echo
  echo "Recorded, not asserted. Reproduce with (as root; about 5 minutes):"
  echo
  echo '```'
  echo 'cargo build --release --bin k8sd && benches/node-startup.sh'
  echo '```'
  echo
  echo "- Machine: $(nproc) vCPU ($cpu), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM; shared with other work, so"
  echo "  load averages are recorded (\`uptime\`): at start \`${uptime_start#*load average: }\`;"
  echo "  during the k8sd idle window \`$(sed 's/.*load average: //' "$out/k8sd.idle.uptime")\`; during the by-hand idle window"
  echo "  \`$(sed 's/.*load average: //' "$out/smoke.idle.uptime")\`."
  echo "- Date: $started; k8sd at \`$commit\`, Kubernetes $kube_version (kubebin), Debian etcd $etcd_version."
  echo "- Each node runs in its own network namespace with fresh data dirs. The runs are sequential."
  echo "- **k8sd init**: wall time of \`k8sd init\` from start until it returns, which it does when the"
  echo "  Node is Ready. Included: starting the daemon, PKI and kubeconfigs, the in-process datastore"
  echo "  (TLS, client-cert auth), image import and all six components."
  echo "- **by hand**: \`tests/e2e/k8s-smoke.sh\` with \`K8SD_SMOKE_BENCH_OUT\` set, timed from starting etcd"
  echo "  (TLS with client certificates; the PKI, configs and command lines already written by"
  echo "  \`k8sd debug render\`) until \`kubectl\` sees the Node Ready. Steps are sequential, each waiting"
  echo "  for the previous one (polled every 0.2 s): etcd healthy, apiserver /readyz, kcm + scheduler"
  echo "  until the default ServiceAccount exists, containerd + image import, kubelet until Ready;"
  echo "  kube-proxy is started after Ready."
  echo "- The components run with the same command lines and configs in both setups (\`k8sd debug"
  echo "  render\` shares \`init\`'s code). What differs: the datastore (the k8sd daemon against Debian's"
  echo "  etcd), the by-hand kubeconfigs name kube-apiserver directly rather than k8sd's local API load"
  echo "  balancer, and the by-hand node runs no add-ons, image mirror or \`/metrics\` listener."
  echo "- Idle: after the last run the node idles ${idle} s; CPU is the utime+stime delta from"
  echo "  \`/proc/PID/stat\` over that window as % of one core, RSS is \`VmRSS\` at its end. The datastore"
  echo "  row is the k8sd daemon itself (datastore + supervisor + control socket) against etcd."
  echo
  echo "$header"
  echo "$sep"
  echo "| \`k8sd init\` (start → returns, node Ready) |$(row_runs k8sd)"
  echo "| by hand against etcd (start etcd → node Ready) |$(row_runs smoke)"
  echo
  echo "| process (idle ${idle} s) | k8sd: CPU (% of a core) | k8sd: RSS (MiB) | by hand: CPU (% of a core) | by hand: RSS (MiB) |"
  echo "|---|---:|---:|---:|---:|"
  echo "| datastore: k8sd daemon / etcd | $(val k8sd datastore 2) | $(val k8sd datastore 3) | $(val smoke datastore 2) | $(val smoke datastore 3) |"
  for c in kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    echo "| $c | $(val k8sd "$c" 2) | $(val k8sd "$c" 3) | $(val smoke "$c" 2) | $(val smoke "$c" 3) |"
  done
  echo "| supervised components (all but the datastore) | $(sum k8sd 2 datastore) | $(sum k8sd 3 datastore) | $(sum smoke 2 datastore) | $(sum smoke 3 datastore) |"
  echo "| everything | $(sum k8sd 2 none) | $(sum k8sd 3 none) | $(sum smoke 2 none) | $(sum smoke 3 none) |"
  echo
  echo "The add-ons (k8sd only: the by-hand setup runs none), idle in the same window, one row per"
  echo "process (CoreDNS runs one replica per node, so one here):"
  echo
  echo "| add-on process (idle ${idle} s) | CPU (% of a core) | RSS (MiB) |"
  echo "|---|---:|---:|"
  awk '{ printf "| %s | %s | %s |\n", ($1 == "local-path-prov" ? "local-path-provisioner" : $1), $2, $3 }' "$out/addons.idle"
  echo "| all add-ons | $(sum addons 2 none) | $(sum addons 3 none) |"
  echo
  echo "Where the time goes (last run; seconds since start when each step was reached):"
  echo
  echo '```'
  echo "k8sd init (progress lines as the CLI printed them):"
  cat "$out/k8sd.$runs.phases"
  echo "by hand (end of each step):"
  cat "$out/smoke.$runs.phases"
  echo '```'
} > "$out/section.md"

cat "$out/section.md"

if ((docs)); then
  python3 - "$repo/docs/benchmarks.md" "$out/section.md" <<'EOF'
import re, sys
doc_path, sec_path = sys.argv[1], sys.argv[2]
doc, sec = open(doc_path).read(), open(sec_path).read().rstrip("\n") + "\n"
title = "## Node startup and idle footprint (k8sd init vs. by hand against etcd)"
start = doc.find(title)
if start < 0:
    doc = doc.rstrip("\n") + "\n\n" + sec
else:
    m = re.search(r"^## ", doc[start + len(title):], re.M)
    end = start + len(title) + m.start() if m else len(doc)
    doc = doc[:start] + sec + ("\n" + doc[end:] if m else "")
open(doc_path, "w").write(doc)
EOF
  log "updated docs/benchmarks.md"
fi
done=1
