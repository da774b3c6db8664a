#!/usr/bin/env bash
# Linearizability and watch guarantees of a 3-member `k8sd datastore` cluster under faults
# (kill -9 and network partitions). See main.go for what is checked
# and docs/testing.md for how to read the output.
#
# Topology (all test-owned, removed on exit): a "client" network namespace holding a bridge
# (10.211.0.1/24) and the checker, and one namespace per member (10.211.0.11-13) with a veth
# on that bridge. No default route anywhere: nothing leaves the machine. Partitions are
# iptables DROP rules inside a member's namespace; kill -9 hits the member's process.
#
# Usage: tests/robustness/run.sh [--report] [checker flags, e.g. -seed 42]
#   --report   also write the "Robustness" section of docs/compatibility.md from this run
#   checker flags: tests/robustness/run.sh -h lists them (-seed replays a fault schedule,
#   -kinds and -faults narrow a run down, -hold keeps a stuck cluster up for inspection)
#
# Environment:
#   K8SD_BIN   k8sd binary (default: $CARGO_TARGET_DIR/release/k8sd, else target/release/k8sd)
#   K8SD_ROBUSTNESS_DIR  scratch dir (default /var/tmp/k8sd-robustness): member data, logs,
#              certificates, the checker binary, linearizability.html on a violation
#   GO, GOMODCACHE, GOCACHE, GOFLAGS, GOTOOLCHAIN  as in tests/storage-suite/run.sh
#
# The last line of output is exactly "N passed, N failed"; the exit status is non-zero on any
# violation, on fewer than 100 faults, or on a missing prerequisite (run as root).
set -euo pipefail

die() { echo "robustness: error: $*" >&2; exit 2; }
log() { echo "robustness: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

args=()
for a in "$@"; do
  case "$a" in
    --report) args+=(-report "$repo/docs/compatibility.md") ;;
    *) args+=("$a") ;;
  esac
done

# --- prerequisites: fail loudly ---------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces and iptables need it)"
for b in ip nsenter iptables; do
  command -v "$b" >/dev/null || die "'$b' is not on PATH: run scripts/setup-host.sh"
done
GO=${GO:-$(command -v go || true)}
[[ -n "$GO" ]] || GO=/usr/local/go/bin/go
[[ -x "$GO" ]] || die "no Go toolchain: install Go (see scripts/setup-host.sh) or set GO=/path/to/go"
export GOMODCACHE=${GOMODCACHE:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/mod}
export GOCACHE=${GOCACHE:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/build}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS=${GOFLAGS:--mod=mod}
if [[ -z "${K8SD_BIN:-}" ]]; then
  K8SD_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/k8sd
fi
[[ -x "$K8SD_BIN" ]] || die "no k8sd binary at $K8SD_BIN: run 'cargo build --release --bin k8sd' or set K8SD_BIN"
K8SD_BIN=$(cd "$(dirname "$K8SD_BIN")" && pwd)/$(basename "$K8SD_BIN")
scratch=${K8SD_ROBUSTNESS_DIR:-/var/tmp/k8sd-robustness}

# --- the checker (porcupine and the etcd client come through the module proxy, checked
# against go.sum; nothing fetched is committed) ---------------------------------------------
mkdir -p "$scratch"
checker="$scratch/robustness-checker"
log "building the checker"
(cd "$here" && "$GO" mod verify >/dev/null) || die "module cache does not match go.sum"
(cd "$here" && "$GO" vet ./... && "$GO" test -count=1 ./... >/dev/null) || die "the checker's own tests fail"
(cd "$here" && "$GO" build -o "$checker" .) || die "cannot build the checker"

# --- the network ----------------------------------------------------------------------------
cns=k8sd-rb-c
members=(k8sd-rb-n1 k8sd-rb-n2 k8sd-rb-n3)
cleanup() {
  local ns pid
  for ns in "${members[@]}" "$cns"; do
    [[ -e /run/netns/$ns ]] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  # veths created in the root namespace are moved at once; a half-made one may remain.
  for i in 1 2 3; do ip link del "k8sd-rb$i" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup   # a previous run killed before its trap
ip netns add "$cns"
ip -n "$cns" link set lo up
ip -n "$cns" link add rb0 type bridge
ip -n "$cns" addr add 10.211.0.1/24 dev rb0
ip -n "$cns" link set rb0 up
for i in 1 2 3; do
  ns=${members[$((i - 1))]}
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "k8sd-rb$i" type veth peer name eth0 netns "$ns"
  ip link set "k8sd-rb$i" netns "$cns"
  ip -n "$cns" link set "k8sd-rb$i" master rb0 up
  ip -n "$ns" addr add "10.211.0.1$i/24" dev eth0
  ip -n "$ns" link set eth0 up
done

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  commit="$commit+dirty"
fi
log "running: $K8SD_BIN, members in ${members[*]}, scratch $scratch"
set +e
nsenter --net="/run/netns/$cns" "$checker" -k8sd "$K8SD_BIN" -dir "$scratch/run" \
  -netns "$(IFS=,; echo "${members[*]}")" -ips 10.211.0.11,10.211.0.12,10.211.0.13 -commit "$commit" "${args[@]}"
rc=$?
set -e
exit $rc
