#!/usr/bin/env bash
# Builds Kubernetes' end-to-end test binary (e2e.test, the package k8s.io/kubernetes/test/e2e)
# and the ginkgo CLI that runs it in parallel, from the wrapper module in assets/conformance/ at
# the version pinned in assets/kube/VERSION. scripts/conformance.sh runs them.
#
# Caches live outside the checkout, shared with kubebin:
#   GOMODCACHE  /var/cache/k8sd/go/mod
#   GOCACHE     /var/cache/k8sd/go/build
#   output      /var/cache/k8sd/conformance/<version>/{e2e.test,ginkgo}  (+ suite.stamp)
# Override the root with K8SD_CACHE_DIR. The binaries are reused only while the stamp (version,
# Go version, recipe revision, hash of the module files) matches; otherwise both are rebuilt.
# On success the last line of stdout is the output directory.
#
# Usage: scripts/build-conformance-suite.sh [--force | --check]
set -euo pipefail

# Bump when the build flags below change, so stale binaries are rebuilt.
RECIPE_REV=1

die() { echo "build-conformance-suite: error: $*" >&2; exit 1; }
log() { echo "build-conformance-suite: $*" >&2; }

force=0 check=0
case "${1:-}" in
  --force) force=1 ;;
  --check) check=1 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: $0 [--force | --check])" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$repo/assets/conformance"
version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "assets/kube/VERSION holds '$version', expected vMAJOR.MINOR.PATCH"
minor=${BASH_REMATCH[1]}
grep -qE "^[[:space:]]*k8s.io/kubernetes $version( // indirect)?\$" "$mod/go.mod" \
  || die "assets/conformance/go.mod does not require k8s.io/kubernetes $version; run scripts/update-kube-module.sh conformance and commit"

go=${GO:-}
if [[ -z "$go" ]]; then
  if command -v go >/dev/null; then go=$(command -v go); else go=/usr/local/go/bin/go; fi
fi
[[ -x "$go" ]] || die "no Go toolchain at '$go' (install Go >= 1.26 to /usr/local/go or set GO=)"

cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
# -mod=readonly: the committed go.mod and go.sum are complete (update-kube-module.sh records the
# suite's test-only dependencies); a build never rewrites them.
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
outdir="$cache/conformance/$version"
stamp="$outdir/suite.stamp"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$outdir"

exec 9>"$outdir/.suite.lock"
flock 9

goversion=$("$go" env GOVERSION)
srchash=$(cd "$mod" && cat "$repo/assets/kube/VERSION" go.mod go.sum | sha256sum | cut -d' ' -f1)
want="version=$version go=$goversion recipe=$RECIPE_REV src=$srchash"

if [[ $force -eq 0 && -x "$outdir/e2e.test" && -x "$outdir/ginkgo" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  log "up to date ($want)"
  echo "$outdir"
  exit 0
fi
[[ $check -eq 0 ]] || die "$outdir/e2e.test or ginkgo is missing or stale for $want; build them with: $repo/scripts/build-conformance-suite.sh"

cd "$mod"
log "downloading the module closure into $GOMODCACHE"
"$go" mod download || die "could not download the Go modules of $mod; check GOPROXY ($("$go" env GOPROXY))"

# The suite reports the cluster's and its own version; stamp it as kubebin is stamped.
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitCommit=0000000 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$version"

log "building e2e.test $version and ginkgo with $goversion (cold: ~10 min on 2 cores; warm: ~1 min)"
start=$(date +%s)
"$go" test -c -trimpath -buildvcs=false -ldflags "$ldflags" -o "$outdir/e2e.test.tmp" k8s.io/kubernetes/test/e2e \
  || die "go test -c k8s.io/kubernetes/test/e2e failed (see output above)"
"$go" build -trimpath -buildvcs=false -o "$outdir/ginkgo.tmp" github.com/onsi/ginkgo/v2/ginkgo \
  || die "go build of the ginkgo CLI failed (see output above)"
log "built in $(($(date +%s) - start))s"

"$outdir/e2e.test.tmp" --help >/dev/null 2>&1 || die "fresh $outdir/e2e.test.tmp does not run"
"$outdir/ginkgo.tmp" version >/dev/null || die "fresh $outdir/ginkgo.tmp does not run"
mv -f "$outdir/e2e.test.tmp" "$outdir/e2e.test"
mv -f "$outdir/ginkgo.tmp" "$outdir/ginkgo"
echo "$want" > "$stamp"
echo "$outdir"
