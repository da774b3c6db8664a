#!/usr/bin/env bash
# Regenerates the go.mod and go.sum of the add-on wrapper modules (assets/addons/<name>/) from
# the pins in assets/addons/versions.env. Run it after changing a pin, then commit versions.env
# with the regenerated go.mod and go.sum; scripts/build-addons.sh refuses a go.mod that
# disagrees with versions.env.
#
# Each wrapper requires one upstream module at its pin, starting from upstream's `go` line (only
# the main module's `go` line sets the GODEBUG defaults of the binary). Upstream `replace`
# directives would be ignored in a dependency and must be copied here; none of the pinned modules
# has any, and this script stops if that changes.
#
# Every dependency the wrapper shares with kubebin (assets/kube: client-go, apimachinery,
# apiserver, grpc, protobuf, ...) is then required at least at kubebin's version. Go's minimal
# version selection only ever raises a version this way, never lowers one below what upstream
# asks for, so upstream's own constraints still hold. Why: Go's build cache is keyed by a
# package's exact source, so shared packages at the same versions compile once, for kubebin, and
# the add-on builds reuse them; on a cold machine this removes most of the add-ons' build time
# (docs/benchmarks.md, "Cold build"). It also raises the `go` line where those versions need a
# newer Go (k8s.io v0.36 needs 1.26).
#
# Usage: scripts/update-addon-modules.sh [NAME...]   (default: all of coredns metrics-server
#        local-path-provisioner)
set -euo pipefail

die() { echo "update-addon-modules: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
addons="$repo/assets/addons"
# shellcheck source=../assets/addons/versions.env
. "$addons/versions.env"

go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOTOOLCHAIN=local GOFLAGS=-mod=mod

# name -> "upstream module path|version"
declare -A upstream=(
  [coredns]="github.com/coredns/coredns|${COREDNS:-}"
  [metrics-server]="sigs.k8s.io/metrics-server|${METRICS_SERVER:-}"
  [local-path-provisioner]="github.com/rancher/local-path-provisioner|${LOCAL_PATH_PROVISIONER:-}"
)

# kubebin's module graph (path and selected version, replacements resolved), sorted for join.
kube_mods=$(cd "$repo/assets/kube" && GOFLAGS=-mod=readonly "$go" list -m \
  -f '{{if not .Main}}{{.Path}} {{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}{{end}}' all \
  | awk 'NF == 2' | sort) || die "cannot list kubebin's modules in assets/kube (run scripts/update-kube-module.sh)"

names=("$@")
((${#names[@]})) || names=(coredns metrics-server local-path-provisioner)
for name in "${names[@]}"; do
  [[ -n "${upstream[$name]:-}" ]] || die "unknown add-on '$name' (one of: ${!upstream[*]})"
  IFS='|' read -r path version <<<"${upstream[$name]}"
  [[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "versions.env pins $name at '$version', expected vX.Y.Z"
  dir="$addons/$name"
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
    "$go" mod init "k8sd.local/addons/$name" 2>/dev/null
    "$go" mod edit -go="$golang" -require="$path@$version"
    "$go" mod tidy || die "go mod tidy failed in $dir for $path@$version"
    shared=$("$go" list -m -f '{{if not .Main}}{{.Path}}{{end}}' all | sort)
    mapfile -t raise < <(join <(printf '%s\n' "$shared") <(printf '%s\n' "$kube_mods") | awk '{print "-require=" $1 "@" $2}')
    if ((${#raise[@]})); then
      "$go" mod edit "${raise[@]}"
      "$go" mod tidy || die "go mod tidy failed in $dir after raising the dependencies it shares with kubebin to kubebin's versions"
    fi
  )
  echo "update-addon-modules: $name: $path $version (go $(sed -n 's/^go //p' "$dir/go.mod"), upstream's is $golang)" >&2
done
