#!/usr/bin/env bash
# Builds kubebin, k8sd's multi-call build of the upstream Kubernetes components, from the Go
# module in assets/kube/ at the version pinned in assets/kube/VERSION.
#
# Caches live outside the checkout so a reused machine hits them:
#   GOMODCACHE  /var/cache/k8sd/go/mod
#   GOCACHE     /var/cache/k8sd/go/build
#   output      /var/cache/k8sd/kube/<version>/kubebin  (+ kubebin.stamp, per-component symlinks)
# Override the root with K8SD_CACHE_DIR. The binary is reused only while its stamp (version, Go
# version, recipe revision, hash of the module files) matches and it reports the pinned version;
# otherwise it is rebuilt. On success the last line of stdout is the binary's path.
#
# Usage: scripts/build-kube.sh [--force | --check]
#   --force  rebuild even if the cached binary is up to date
#   --check  build nothing: print the path if the cached binary is up to date, else exit 1
set -euo pipefail

# Bump when the build flags below change, so stale binaries are rebuilt.
RECIPE_REV=1
COMPONENTS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"

die() { echo "build-kube: error: $*" >&2; exit 1; }
log() { echo "build-kube: $*" >&2; }

force=0 check=0
case "${1:-}" in
  --force) force=1 ;;
  --check) check=1 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: $0 [--force | --check])" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$repo/assets/kube"
version=$(tr -d '[:space:]' < "$mod/VERSION")
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "$mod/VERSION holds '$version', expected vMAJOR.MINOR.PATCH like v1.36.3"
minor=${BASH_REMATCH[1]}

# VERSION is the single pin; go.mod is derived from it by scripts/update-kube-module.sh.
grep -qE "^[[:space:]]*k8s.io/kubernetes $version\$" "$mod/go.mod" \
  || die "assets/kube/go.mod does not require k8s.io/kubernetes $version (VERSION); run scripts/update-kube-module.sh and commit"

go=${GO:-}
if [[ -z "$go" ]]; then
  if command -v go >/dev/null; then go=$(command -v go); else go=/usr/local/go/bin/go; fi
fi
[[ -x "$go" ]] || die "no Go toolchain at '$go' (install Go >= 1.26 to /usr/local/go or set GO=)"

cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
outdir="$cache/kube/$version"
out="$outdir/kubebin"
stamp="$out.stamp"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$outdir"

# One build at a time per cache (a second caller waits, then finds the fresh stamp).
exec 9>"$cache/kube/.lock"
flock 9

goversion=$("$go" env GOVERSION)
srchash=$(cd "$mod" && cat VERSION go.mod go.sum main.go | sha256sum | cut -d' ' -f1)
want="version=$version go=$goversion recipe=$RECIPE_REV src=$srchash"

if [[ $force -eq 0 && -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  got=$("$out" kube-apiserver --version 2>/dev/null || true)
  if [[ "$got" == "Kubernetes $version" ]]; then
    log "up to date ($want)"
    echo "$out"
    exit 0
  fi
  log "cached binary reports '$got', expected 'Kubernetes $version': rebuilding"
elif [[ -f "$stamp" ]]; then
  log "stamp differs (have '$(cat "$stamp")', want '$want'): rebuilding"
fi
[[ $check -eq 0 ]] || die "$out is missing or stale for $want; build it with: $repo/scripts/build-kube.sh"

cd "$mod"
sum_before=$(cat go.mod go.sum | sha256sum)

log "downloading the module closure for k8s.io/kubernetes $version into $GOMODCACHE"
dl_log=$(mktemp)
trap 'rm -f "$dl_log"' EXIT
if ! "$go" mod download >"$dl_log" 2>&1; then
  cat "$dl_log" >&2
  missing=$(grep -oE '[A-Za-z0-9./_~-]+@v[^: ]+' "$dl_log" | sort -u | tr '\n' ' ' || true)
  die "could not download the Go module closure; failing module(s): ${missing:-see output above}. Check GOPROXY ($("$go" env GOPROXY)) or fall back to v1.35.4 in $mod/VERSION (docs/kubernetes-build.md)"
fi

build_date=$(date -u ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitCommit=0000000 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=$build_date \
 -X k8s.io/client-go/pkg/version.gitVersion=$version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

log "building kubebin $version with $goversion (cold: 15-35 min on 2 cores; warm: ~1-3 min)"
start=$(date +%s)
"$go" build -trimpath -buildvcs=false -o "$out.tmp" -ldflags "$ldflags" . \
  || die "go build failed for $mod (see output above)"
log "built in $(( $(date +%s) - start ))s"

if [[ "$(cat go.mod go.sum | sha256sum)" != "$sum_before" ]]; then
  log "WARNING: the build rewrote assets/kube/go.mod or go.sum; commit the tidy result (go mod tidy)"
fi

got=$("$out.tmp" kube-apiserver --version) || die "fresh binary $out.tmp failed to run"
[[ "$got" == "Kubernetes $version" ]] || die "fresh binary reports '$got', expected 'Kubernetes $version'"

mv -f "$out.tmp" "$out"
for c in $COMPONENTS; do ln -sfn kubebin "$outdir/$c"; done
echo "$want" > "$stamp"
echo "$out"
