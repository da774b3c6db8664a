#!/usr/bin/env bash
# Removes what a kubelet + containerd node leaves on a host, idempotently: every step tolerates
# finding nothing, so it is safe to run on a clean machine, twice, or after a crash.
# Pods live in cgroups and mounts outside k8sd's own process tree, so they outlive k8sd.
#
#   1. pods: kill and remove every container of the CRI namespace (k8s.io) through ctr, kill
#      whatever is left in the kubepods cgroups, then kill this containerd's shims
#   2. mounts under the kubelet root and containerd's root and state (volumes, sandbox shm,
#      overlay rootfs) and the pods' network namespaces (named by their sandboxes, or by the
#      veths on cni0 for a pod whose sandbox is gone), deepest first
#   3. kubepods cgroups in every hierarchy, depth-first
#   4. the cni0 bridge
#   5. CNI-* and KUBE-* iptables chains (legacy and nft backends, IPv4 and IPv6) and
#      kube-proxy's nftables tables
#   6. host-local IPAM leases and libcni's result cache
#   7. the test's network namespace, if one was named
# It does not stop containerd, the kubelet or k8sd, and does not delete data directories.
# It exits 1 if mounts, cgroups or cni0 remain afterwards, naming them.
#
# A k8sd node is cleaned with `k8sd reset` (docs/operations.md), which knows its layout, also
# stops its processes, removes its routes, data and run dirs, and only touches that node. This
# script stays for hosts that run the upstream components without k8sd (tests/e2e/k8s-smoke.sh),
# the snap suite, and the other suites' fallback when their `k8sd reset --force` fails.
#
# Defaults are the system paths; tests pass their private instance's paths:
#   --netns NAME               run network steps inside this netns, then delete it
#   --kubelet-root DIR         default /var/lib/kubelet
#   --containerd-address SOCK  default /run/containerd/containerd.sock
#   --containerd-root DIR      default /var/lib/containerd
#   --containerd-state DIR     default /run/containerd
#   --cgroup-root NAME         kubelet's cgroupRoot; default / (kubepods at the hierarchy roots)
#   --cni-ipam-dir DIR         host-local dataDir; default /var/lib/cni/networks
#   --pod-logs-dir DIR         kubelet's podLogsDir; default /var/log/pods
set -uo pipefail

netns="" kubelet_root=/var/lib/kubelet address=/run/containerd/containerd.sock
ctrd_root=/var/lib/containerd ctrd_state=/run/containerd cgroup_root=/
ipam_dir=/var/lib/cni/networks pod_logs_dir=/var/log/pods
network=k8s-pod-network

log() { echo "teardown: $*" >&2; }
die() { echo "teardown: error: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --netns) netns=$2 ;;
    --kubelet-root) kubelet_root=$2 ;;
    --containerd-address) address=$2 ;;
    --containerd-root) ctrd_root=$2 ;;
    --containerd-state) ctrd_state=$2 ;;
    --cgroup-root) cgroup_root=$2 ;;
    --cni-ipam-dir) ipam_dir=$2 ;;
    --pod-logs-dir) pod_logs_dir=$2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  [[ $# -ge 2 ]] || die "$1 needs a value"
  shift 2
done
[[ $(id -u) -eq 0 ]] || die "run as root"
cgroup_root=/${cgroup_root#/}; cgroup_root=${cgroup_root%/}   # "/" becomes "", "x/" becomes "/x"

# Runs a command in the named netns (only its network namespace: mounts stay the host's).
in_net() {
  if [[ -n "$netns" ]]; then
    [[ -e /run/netns/$netns ]] || return 1   # gone: nothing of ours can be in it
    nsenter --net="/run/netns/$netns" -- "$@"
  else
    "$@"
  fi
}

# The ctr built with the containerd k8sd runs (scripts/build-runtime.sh), never Debian's 1.x.
runtime_dir=${K8SD_RUNTIME_DIR:-$(. "$(dirname "${BASH_SOURCE[0]}")/../assets/runtime/versions.env" && echo "${K8SD_CACHE_DIR:-/var/cache/k8sd}/runtime/containerd-$CONTAINERD-runc-$RUNC")}
# Without the server's deprecation warnings (cgroup v1), which ctr repeats at every call.
ctr() { CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 "$runtime_dir/ctr" "$@"; }
if [[ -S "$address" && ! -x "$runtime_dir/ctr" ]]; then
  log "WARNING: $runtime_dir/ctr is missing (scripts/build-runtime.sh, or set K8SD_RUNTIME_DIR): containers are not removed through containerd"
fi
ctr_() { ctr --address "$address" --namespace k8s.io "$@"; }

# --- 1. pods -------------------------------------------------------------------------------
pod_netns=()
container_ids=()
if [[ -S "$address" ]] && ctr --address "$address" version >/dev/null 2>&1; then
  mapfile -t container_ids < <(ctr_ containers list -q 2>/dev/null)
  for id in "${container_ids[@]}"; do
    # The CRI records each sandbox's netns path in the container spec.
    while read -r ns; do pod_netns+=("$ns"); done < <(ctr_ containers info "$id" 2>/dev/null \
      | grep -oE '"/(var/)?run/netns/cni-[0-9a-f-]+"' | tr -d '"' | sort -u)
    ctr_ tasks kill --signal SIGKILL "$id" >/dev/null 2>&1
  done
  for id in "${container_ids[@]}"; do
    for _ in 1 2 3 4 5; do ctr_ tasks rm --force "$id" >/dev/null 2>&1 && break; ctr_ tasks ls -q 2>/dev/null | grep -qx "$id" || break; sleep 0.5; done
    ctr_ containers rm "$id" >/dev/null 2>&1
  done
  ((${#container_ids[@]} == 0)) || log "removed ${#container_ids[@]} container(s) from containerd at $address"
fi
# A pod whose sandbox teardown was cut short (its containerd killed) has no container left, but
# its netns file still keeps the namespace, and the veth in it, alive: the bridge names it.
while read -r ns; do pod_netns+=("/run/netns/$ns"); done < <(in_net ip -o link show master cni0 2>/dev/null \
  | grep -oE 'link-netns cni-[0-9a-f-]+' | cut -d' ' -f2 | sort -u)

cgroup_dirs() {  # every kubepods cgroup (or the private root) in every hierarchy, deepest first
  local base
  for base in /sys/fs/cgroup/*/"${cgroup_root#/}" /sys/fs/cgroup/"${cgroup_root#/}"; do
    [[ -d "$base" ]] || continue
    find "$base" -mindepth 1 -maxdepth 1 -type d -name 'kubepods*' -print0 2>/dev/null \
      | xargs -0 -r -I{} find {} -depth -type d 2>/dev/null
  done
}

kill_cgroup_procs() {
  local dir pid n=0
  while read -r dir; do
    [[ -f "$dir/cgroup.procs" ]] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null && n=$((n + 1)); done < "$dir/cgroup.procs"
  done < <(cgroup_dirs)
  ((n == 0)) || log "killed $n process(es) left in kubepods cgroups"
}
kill_cgroup_procs

# containerd-shim-runc-v2 processes started by *this* containerd carry `-address <socket>`.
for p in /proc/[0-9]*; do
  mapfile -d '' -t argv < "$p/cmdline" 2>/dev/null || continue
  [[ ${#argv[@]} -gt 0 && "${argv[0]##*/}" == containerd-shim* ]] || continue
  for ((i = 1; i < ${#argv[@]} - 1; i++)); do
    if [[ "${argv[i]}" == -address && "${argv[i + 1]}" == "$address" ]]; then
      kill -KILL "${p#/proc/}" 2>/dev/null && log "killed shim ${p#/proc/} of $address"
    fi
  done
done

# --- 2. mounts -----------------------------------------------------------------------------
real() { realpath -m "$1"; }
prefixes=("$(real "$kubelet_root")" "$(real "$ctrd_root")" "$(real "$ctrd_state")")
for ns in "${pod_netns[@]}"; do prefixes+=("$(real "$ns")"); done

our_mounts() {  # mount points under our prefixes, deepest first
  local mp p
  # Field 5 of mountinfo is the mount point, with spaces etc. octal-escaped.
  while read -r mp; do
    mp=$(printf '%b' "$mp")
    for p in "${prefixes[@]}"; do
      if [[ "$mp" == "$p" || "$mp" == "$p"/* ]]; then echo "$mp"; break; fi
    done
  done < <(awk '{print $5}' /proc/self/mountinfo) | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}
for _ in 1 2 3; do
  mapfile -t mounts < <(our_mounts)
  ((${#mounts[@]})) || break
  for mp in "${mounts[@]}"; do umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null; done
  log "unmounted ${#mounts[@]} mount(s)"
done
for ns in "${pod_netns[@]}"; do rm -f "$ns"; done

# --- 3. cgroups ----------------------------------------------------------------------------
for _ in 1 2 3 4 5; do
  mapfile -t cgs < <(cgroup_dirs)
  ((${#cgs[@]})) || break
  kill_cgroup_procs
  for cg in "${cgs[@]}"; do rmdir "$cg" 2>/dev/null; done
  mapfile -t cgs < <(cgroup_dirs)
  ((${#cgs[@]})) || { log "removed kubepods cgroups"; break; }
  sleep 1
done
if [[ -n "$cgroup_root" ]]; then  # a private cgroupRoot: remove the subtree itself too
  for base in /sys/fs/cgroup/*/"${cgroup_root#/}" /sys/fs/cgroup/"${cgroup_root#/}"; do
    [[ -d "$base" && "$base" != /sys/fs/cgroup/ ]] && rmdir "$base" 2>/dev/null
  done
fi

# --- 4. cni0 -------------------------------------------------------------------------------
if in_net ip link show cni0 >/dev/null 2>&1; then
  in_net ip link del cni0 && log "deleted cni0${netns:+ in netns $netns}"
fi

# --- 5. iptables and nftables --------------------------------------------------------------
flush_chains() {  # $1: an iptables binary
  local ipt=$1 table chains rule n=0
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    chains=$(in_net "$ipt" -w 5 -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(CNI-|KUBE-)/ {print $2}')
    [[ -n "$chains" ]] || continue
    # First the jumps into them from any chain, then the chains' own rules, then the chains.
    while read -r rule; do
      eval "in_net $ipt -w 5 -t $table ${rule/-A /-D }" 2>/dev/null
    done < <(in_net "$ipt" -w 5 -t "$table" -S 2>/dev/null | grep -E -- '^-A .* -j (CNI-|KUBE-)')
    for c in $chains; do in_net "$ipt" -w 5 -t "$table" -F "$c" 2>/dev/null; done
    for c in $chains; do in_net "$ipt" -w 5 -t "$table" -X "$c" 2>/dev/null && n=$((n + 1)); done
  done
  ((n == 0)) || log "deleted $n chain(s) with $ipt"
}
for ipt in iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft; do flush_chains "$ipt"; done
if command -v nft >/dev/null; then
  for fam in ip ip6; do
    in_net nft delete table "$fam" kube-proxy 2>/dev/null && log "deleted nft table $fam kube-proxy"
  done
fi

# --- 6. CNI state --------------------------------------------------------------------------
if [[ -d "$ipam_dir/$network" ]]; then rm -rf "${ipam_dir:?}/$network" && log "removed $ipam_dir/$network"; fi
# libcni caches each ADD result as <network>-<container id>-<ifname>, for our network and for
# the loopback containerd sets up itself; a sandbox killed without a CNI DEL leaves them.
for id in "${container_ids[@]}"; do rm -f /var/lib/cni/results/*-"$id"-*; done
# The kubelet links /var/log/containers/* to files under its podLogsDir.
for l in /var/log/containers/*.log; do
  [[ -L "$l" ]] || continue
  t=$(readlink "$l")
  if [[ "$t" == "$pod_logs_dir"/* || ! -e "$l" ]]; then rm -f "$l"; fi
done

# --- 7. the netns --------------------------------------------------------------------------
if [[ -n "$netns" && -e /run/netns/$netns ]]; then ip netns del "$netns" && log "deleted netns $netns"; fi

# --- verify --------------------------------------------------------------------------------
left=()
mapfile -t m < <(our_mounts); ((${#m[@]} == 0)) || left+=("mounts: ${m[*]}")
mapfile -t c < <(cgroup_dirs); ((${#c[@]} == 0)) || left+=("cgroups: ${c[*]}")
if in_net ip link show cni0 >/dev/null 2>&1; then left+=("cni0"); fi
if ((${#left[@]})); then
  log "left behind: ${left[*]}"
  exit 1
fi
log "clean"
