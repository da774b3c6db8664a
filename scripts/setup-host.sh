#!/usr/bin/env bash
# Installs what k8sd and its tests need from Debian 12, idempotently: only missing packages
# are installed, and an unfetchable package stops the script naming it (apt resolves and
# downloads everything before it unpacks anything, so a failure never half-installs).
# Also checks the toolchains that do not come from apt (Go >= 1.26 in /usr/local/go, Rust).
#
# Usage: scripts/setup-host.sh   (as root)
set -euo pipefail

die() { echo "setup-host: error: $*" >&2; exit 1; }
log() { echo "setup-host: $*" >&2; }

packages=(
  # Node runtime: k8sd runs containerd 2 and runc built by scripts/build-runtime.sh (not
  # Debian's containerd 1.6 or runc, which Kubernetes 1.36 no longer fully supports), and pods
  # through the CNI plugins. runc is built with cgo and links libseccomp statically.
  containernetworking-plugins iptables nftables conntrack iproute2 libseccomp-dev
  # Images: gcc and libc6-dev build the static pause; with make and bzip2 they build busybox
  # from upstream's source (scripts/build-busybox.sh, fetched with curl), dynamically linked:
  # the images pack it with the loader and libraries of this host's libc6.
  gcc libc6-dev make bzip2
  # Test oracles and tools: Debian's etcd for the smoke test (jq reads the command lines
  # `k8sd debug render` prints for it), haproxy for HA tests.
  etcd-server etcd-client jq haproxy openssl curl ca-certificates util-linux procps
  # Rust build: tonic-prost-build needs protoc; the etcd-client crate (tests) also imports the
  # well-known types (google/protobuf/descriptor.proto), which only libprotobuf-dev ships. It is
  # protoc's "recommends", so --no-install-recommends leaves it out unless named here.
  protobuf-compiler libprotobuf-dev
  # scripts/conformance-summary.py reads the suite's list of [Conformance] specs (YAML).
  python3 python3-yaml
  # scripts/build-snap.sh: `snap pack` (snapd's client; its daemon is never started here) and
  # mksquashfs; tests/e2e/snap.sh reads the snap with unsquashfs.
  snapd squashfs-tools
)

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get install needs it)"

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done

if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed; check /etc/apt/sources.list and the network"
  unfetchable=()
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n "$cand" && "$cand" != "(none)" ]] || unfetchable+=("$p")
  done
  ((${#unfetchable[@]} == 0)) || die "apt has no installation candidate for: ${unfetchable[*]}"
  # policy-rc.d keeps the package scripts from starting a system containerd or etcd next to ours.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created_policy=1; fi
  rc=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  ((created_policy == 0)) || rm -f $policy
  ((rc == 0)) || die "apt-get install failed (exit $rc) for: ${missing[*]}"
fi

still=()
for p in "${packages[@]}"; do installed "$p" || still+=("$p"); done
((${#still[@]} == 0)) || die "packages still not installed: ${still[*]}"

for bin in etcd iptables conntrack ip nsenter gcc make bzip2 protoc openssl ldd dpkg-deb snap mksquashfs unsquashfs; do
  command -v "$bin" >/dev/null || die "'$bin' is not on PATH although its package is installed"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /usr/lib/cni/loopback ]] \
  || die "CNI plugins missing from /usr/lib/cni (package containernetworking-plugins)"

# Toolchains that Debian 12 cannot provide at the needed version.
go=$(command -v go || echo /usr/local/go/bin/go)
[[ -x "$go" ]] || die "Go is not installed; install Go >= 1.26 to /usr/local/go (Debian 12 ships 1.19)"
gov=$("$go" env GOVERSION)
[[ "$gov" =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 26)) || die "$go is $gov; kubebin needs Go >= 1.26"
command -v cargo >/dev/null || die "cargo is not on PATH; install Rust (stable >= 1.88)"
# The test command checks formatting and lints; both ship as rustup components.
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing; install it with: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing; install it with: rustup component add clippy"

log "host ready: ${#packages[@]} Debian packages present, $gov, $(cargo --version)"
