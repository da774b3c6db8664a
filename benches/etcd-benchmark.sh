#!/usr/bin/env bash
# A second opinion on the datastore's speed, from a load generator we did not write: etcd's own
# `benchmark` tool (go.etcd.io/etcd/v3/tools/benchmark, built from its Go module at the version
# pinned below) against etcd and k8sd, one member and three, on loopback. Each round starts
# every configuration on a fresh data directory, one after another (never two servers at once),
# runs every load against it and stops it; the table is the median of the rounds, with each
# round's figure, and the CPU the servers spent per operation (user + system time of every
# member, read from /proc before and after the load): on a small machine throughput swings with
# what else runs, the CPU a write costs much less. Nothing is asserted: the figures go into
# docs/benchmarks.md.
#
# Usage (as root or not; nothing is installed): benches/etcd-benchmark.sh [ROUNDS]   (default 3)
#
# Environment:
#   K8SD_BIN          k8sd binary (default: $CARGO_TARGET_DIR/release/k8sd, else target/release/k8sd)
#   K8SD_BENCH_CONFIGS  which configurations, in run order (default "etcd k8sd etcd3 k8sd3"):
#                     etcd / k8sd one member (k8sd as a Raft group of one, what `k8sd init` runs),
#                     etcd3 / k8sd3 three members
#   K8SD_BENCH_DIR    scratch dir for data and logs (default /var/tmp/k8sd-etcd-benchmark); on a
#                     real disk, so fsyncs cost what they cost
#   K8SD_CACHE_DIR    where the benchmark tool is built (default /var/cache/k8sd)
#
# Loads, all with 1 KiB values and 8-byte keys spread over 100,000 keys (the tool's defaults
# elsewhere), each bounded by a request count:
#   put cN            Put, N clients on one connection (as kube-apiserver shares one), N = 1, 16, 256
#   put c256 spread   three members only: the same, with the clients spread over every member
#   txn-put c16       a Txn holding one Put
#   range c16         linearizable Get of one key (each pays the ReadIndex round trip)
# For three members, "to the leader" loads go to the member `etcdctl endpoint status` names leader.
set -euo pipefail

ETCD_BENCHMARK_VERSION=v3.6.8   # go.etcd.io/etcd/v3, whose tools/benchmark is the tool
rounds=${1:-3}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "etcd-benchmark: ROUNDS must be a whole number above 0, got '$rounds'" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="/usr/local/go/bin:$PATH"
die() { echo "etcd-benchmark: error: $*" >&2; exit 2; }
log() { echo "etcd-benchmark: $*" >&2; }

command -v etcd >/dev/null || die "no etcd on PATH: scripts/setup-host.sh installs Debian's etcd-server"
command -v etcdctl >/dev/null || die "no etcdctl on PATH: scripts/setup-host.sh installs Debian's etcd-client"
command -v go >/dev/null || die "no go on PATH (expected /usr/local/go/bin/go)"
configs=(${K8SD_BENCH_CONFIGS:-etcd k8sd etcd3 k8sd3})
for c in "${configs[@]}"; do
  [[ $c =~ ^(etcd|k8sd)3?$ ]] || die "unknown configuration '$c' in K8SD_BENCH_CONFIGS (etcd, k8sd, etcd3, k8sd3)"
done
K8SD_BIN=${K8SD_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/k8sd}
if [[ " ${configs[*]} " == *" k8sd"* ]]; then
  [[ -x $K8SD_BIN ]] || die "no k8sd binary at $K8SD_BIN: run 'cargo build --release --bin k8sd' or set K8SD_BIN"
fi

# --- the tool -------------------------------------------------------------------------------
# A throwaway module that requires etcd's root module at the pinned version: `go install
# pkg@version` refuses a module whose go.mod has replace directives, as etcd's does (its
# submodules), but as a dependency those are ignored and its require lines pin the submodules.
tool_dir=${K8SD_CACHE_DIR:-/var/cache/k8sd}/etcd-benchmark/$ETCD_BENCHMARK_VERSION
tool=$tool_dir/benchmark
if [[ ! -x $tool ]]; then
  log "building etcd's benchmark tool $ETCD_BENCHMARK_VERSION into $tool_dir"
  mkdir -p "$tool_dir/src"
  (
    cd "$tool_dir/src"
    [[ -f go.mod ]] || go mod init k8sd.local/etcd-benchmark >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "go.etcd.io/etcd/v3@$ETCD_BENCHMARK_VERSION" >/dev/null
    GOFLAGS=-mod=mod go build -o "$tool.tmp" go.etcd.io/etcd/v3/tools/benchmark
  ) || die "building go.etcd.io/etcd/v3/tools/benchmark@$ETCD_BENCHMARK_VERSION failed (output above); the Go module proxy must be reachable"
  mv "$tool.tmp" "$tool"
fi

# --- servers --------------------------------------------------------------------------------
scratch=${K8SD_BENCH_DIR:-/var/tmp/k8sd-etcd-benchmark}
rm -rf "$scratch"
mkdir -p "$scratch"
# Fixed loopback ports, checked free: member i listens for clients on 42379+10i, peers 42380+10i.
client_port() { echo $((42379 + 10 * $1)); }
peer_port() { echo $((42380 + 10 * $1)); }
for i in 0 1 2; do
  for p in "$(client_port "$i")" "$(peer_port "$i")"; do
    ! ss -Hltn "sport = :$p" | grep -q . || die "port $p on loopback is taken; stop what listens there"
  done
done
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}
trap stop_all EXIT

# start CONFIG RUN: start CONFIG's members on fresh data dirs under $scratch/RUN; sets endpoints.
start() {
  local config=$1 run=$2 n=1 i initial="" bin
  [[ $config == *3 ]] && n=3
  for ((i = 0; i < n; i++)); do
    initial+="${initial:+,}m$i=http://127.0.0.1:$(peer_port "$i")"
  done
  endpoints=()
  for ((i = 0; i < n; i++)); do
    local dir=$scratch/$run/m$i url
    url=http://127.0.0.1:$(client_port "$i")
    mkdir -p "$dir"
    endpoints+=("$url")
    local args=(--name="m$i" --data-dir="$dir/data" --listen-client-urls="$url" --advertise-client-urls="$url"
      --listen-peer-urls="http://127.0.0.1:$(peer_port "$i")" --initial-cluster="$initial")
    if [[ $config == etcd* ]]; then
      bin=etcd
      args+=(--initial-advertise-peer-urls="http://127.0.0.1:$(peer_port "$i")" --initial-cluster-state=new
        --initial-cluster-token=bench)
    else
      bin=$K8SD_BIN
      args=(datastore "${args[@]}")
    fi
    "$bin" "${args[@]}" >"$dir/server.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 0; i < n; i++)); do
    local ok=""
    for _ in $(seq 300); do
      if etcdctl --endpoints="${endpoints[$i]}" --dial-timeout=1s --command-timeout=2s put /bench/ready x >/dev/null 2>&1; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [[ -n $ok ]] || die "$config member $i did not serve a write within 30 s; its log: $scratch/$run/m$i/server.log"
  done
}

# leader: the endpoint `etcdctl endpoint status` names leader.
leader() {
  local e
  for e in "${endpoints[@]}"; do
    if etcdctl --endpoints="$e" endpoint status -w json |
      python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)'; then
      echo "$e"
      return
    fi
  done
  die "no member names itself leader"
}

# cpu_ticks: user + system clock ticks of every running member, summed.
cpu_ticks() {
  local p t=0
  for p in "${pids[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

# --- loads ----------------------------------------------------------------------------------
# load NAME: the tool's arguments for load NAME, after the endpoints.
load_args() {
  local common=(--key-size=8 --key-space-size=100000 --val-size=1024)
  case $1 in
    "put c1") echo --conns=1 --clients=1 put "${common[@]}" --total=3000 ;;
    "put c16") echo --conns=1 --clients=16 put "${common[@]}" --total=20000 ;;
    "put c256"|"put c256 spread") echo --conns=1 --clients=256 put "${common[@]}" --total=60000 ;;
    "txn-put c16") echo --conns=1 --clients=16 txn-put --txn-ops=1 "${common[@]}" --total=20000 ;;
    "range c16") echo --conns=1 --clients=16 range /bench/ready --consistency=l --total=20000 ;;
  esac
}
loads_one=("put c1" "put c16" "put c256" "txn-put c16" "range c16")
loads_three=("put c1" "put c16" "put c256" "put c256 spread" "txn-put c16" "range c16")

results=$scratch/results.tsv   # round, config, load, ops/s, p99 ms, server CPU us per op
: >"$results"
for ((round = 1; round <= rounds; round++)); do
  for config in "${configs[@]}"; do
    log "round $round/$rounds: $config"
    start "$config" "r$round-$config"
    loads=("${loads_one[@]}")
    target=${endpoints[0]}
    if [[ $config == *3 ]]; then
      loads=("${loads_three[@]}")
      target=$(leader)
    fi
    for l in "${loads[@]}"; do
      ep=$target
      [[ $l == *spread ]] && ep=$(IFS=,; echo "${endpoints[*]}")
      out=$scratch/r$round-$config/$(tr ' ' '-' <<<"$l").out
      before=$(cpu_ticks)
      # shellcheck disable=SC2046
      "$tool" --endpoints="$ep" $(load_args "$l") >"$out" 2>&1 ||
        die "$config, $l: the tool failed; its output: $out"
      ticks=$(($(cpu_ticks) - before))
      python3 - "$out" "$round" "$config" "$l" "$ticks" "$(getconf CLK_TCK)" >>"$results" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = re.search(r'Requests/sec:\s+([0-9.]+)', text)
p99 = re.search(r'99% in ([0-9.]+) secs', text)
total = re.search(r'Total:\s+([0-9.]+) secs', text)
if not rps or not p99 or not total:
    sys.exit(f'{sys.argv[1]}: no Requests/sec, Total or 99% line in the tool output')
ops = float(rps.group(1)) * float(total.group(1))
cpu_us = int(sys.argv[5]) / int(sys.argv[6]) * 1e6 / ops
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{float(rps.group(1)):.0f}\t{float(p99.group(1)) * 1000:.1f}\t{cpu_us:.0f}')
EOF
    done
    stop_all
    du -sm "$scratch/r$round-$config" | awk -v c="$config" -v r="$round" '{ printf "etcd-benchmark: round %s, %s: data dirs %s MiB after the load\n", r, c, $1 }' >&2
  done
done

# --- the table --------------------------------------------------------------------------------
python3 - "$results" "${configs[@]}" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
configs = sys.argv[2:]
ops, p99, cpu = defaultdict(list), defaultdict(list), defaultdict(list)
loads = []
for rnd, cfg, load, o, p, c in rows:
    ops[cfg, load].append(int(o)); p99[cfg, load].append(float(p)); cpu[cfg, load].append(int(c))
    if load not in loads:
        loads.append(load)
print('| load | ' + ' | '.join(f'{c} ops/s (rounds) | p99 ms | CPU us/op' for c in configs) + ' |')
print('|---|' + '---:|---:|---:|' * len(configs))
for load in loads:
    cells = []
    for c in configs:
        if (c, load) not in ops:
            cells += ['', '', '']
            continue
        o = ops[c, load]
        cells += [f'{statistics.median(o):.0f} ({", ".join(map(str, o))})', f'{statistics.median(p99[c, load]):.1f}',
                  f'{statistics.median(cpu[c, load]):.0f}']
    print(f'| {load} | ' + ' | '.join(cells) + ' |')
EOF
