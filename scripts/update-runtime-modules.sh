#!/usr/bin/env bash
# Regenerates the go.mod and go.sum of the runtime wrapper modules (assets/runtime/containerd/
# and assets/runtime/runc/) from the pins in assets/runtime/versions.env. Run it after changing
# a pin, then commit versions.env with the regenerated go.mod and go.sum;
# scripts/build-runtime.sh refuses a go.mod that disagrees with versions.env.
#
# Each wrapper requires exactly one upstream module at its pin and takes upstream's `go` line:
# only the main module's `go` line sets the GODEBUG defaults of the binary, so copying it keeps
# runtime behaviour the same as upstream's own build. containerd and runc are separate wrappers
# so that each builds with exactly the dependency versions its own release selects (one module
# requiring both would let minimal version selection raise shared dependencies). Upstream
# `replace` directives would be ignored in a dependency and must be copied here; neither pinned
# module has any, and this script stops if that changes.
#
# Usage: scripts/update-runtime-modules.sh [containerd | runc]...   (default: both)
set -euo pipefail

die() { echo "update-runtime-modules: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runtime="$repo/assets/runtime"
# shellcheck source=../assets/runtime/versions.env
. "$runtime/versions.env"

go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOTOOLCHAIN=local GOFLAGS=-mod=mod

# name -> "upstream module path|version"
declare -A upstream=(
  [containerd]="github.com/containerd/containerd/v2|${CONTAINERD:-}"
  [runc]="github.com/opencontainers/runc|${RUNC:-}"
)

names=("$@")
((${#names[@]})) || names=(containerd runc)
for name in "${names[@]}"; do
  [[ -n "${upstream[$name]:-}" ]] || die "unknown runtime part '$name' (one of: ${!upstream[*]})"
  IFS='|' read -r path version <<<"${upstream[$name]}"
  [[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "versions.env pins $name at '$version', expected vX.Y.Z"
  dir="$runtime/$name"
  upstream_mod=$("$go" mod download -json "$path@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p') \
    || die "cannot download $path@$version from $("$go" env GOPROXY); check the pin in versions.env"
  [[ -f "$upstream_mod" ]] || die "no go.mod for $path@$version in $GOMODCACHE"
  if grep -qE '^[[:space:]]*replace\b' "$upstream_mod"; then
    die "$path@$version has replace directives; copy them into $dir/go.mod by hand (dependencies' replaces are ignored)"
  fi
  golang=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream_mod")
  [[ -n "$golang" ]] || die "no go line in $upstream_mod"
  (
    cd "$dir"
    rm -f go.mod go.sum
    "$go" mod init "k8sd.local/runtime/$name" 2>/dev/null
    "$go" mod edit -go="$golang" -require="$path@$version"
    "$go" mod tidy || die "go mod tidy failed in $dir for $path@$version"
  )
  echo "update-runtime-modules: $name: $path $version (go $golang)" >&2
done
