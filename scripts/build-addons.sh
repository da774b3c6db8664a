#!/usr/bin/env bash
# Builds the add-on binaries (CoreDNS, metrics-server, local-path-provisioner) as static Go
# binaries from the wrapper modules in assets/addons/<name>/, at the versions pinned in
# assets/addons/versions.env. `k8sd images build --addons-dir` packs them into images.
#
# Caches live outside the checkout so a reused machine hits them:
#   GOMODCACHE  /var/cache/k8sd/go/mod
#   GOCACHE     /var/cache/k8sd/go/build
#   output      /var/cache/k8sd/addons/<name>/<version>/<name>  (+ <name>.stamp)
# Override the root with K8SD_CACHE_DIR. A binary is reused only while its stamp (version, Go
# version, recipe revision, hash of its wrapper module and of versions.env) matches and it
# reports the pinned version; otherwise it is rebuilt. On success the last line of stdout is
# the add-ons directory (/var/cache/k8sd/addons), the --addons-dir of `k8sd images build`.
#
# Usage: scripts/build-addons.sh [--force | --check] [NAME...]
#   NAME     coredns, metrics-server, local-path-provisioner (default: all three)
#   --force  rebuild even if the cached binaries are up to date
#   --check  build nothing: print the directory if every cached binary is up to date, else exit 1
set -euo pipefail

# Bump when the build flags below change, so stale binaries are rebuilt.
RECIPE_REV=1
ALL="coredns metrics-server local-path-provisioner"

die() { echo "build-addons: error: $*" >&2; exit 1; }
log() { echo "build-addons: $*" >&2; }

force=0 check=0 names=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --check) check=1 ;;
    coredns | metrics-server | local-path-provisioner) names+=("$arg") ;;
    *) die "unknown argument '$arg' (usage: $0 [--force | --check] [$ALL])" ;;
  esac
done
((${#names[@]})) || read -ra names <<<"$ALL"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
addons="$repo/assets/addons"
pins="$addons/versions.env"
# shellcheck source=../assets/addons/versions.env
. "$pins"

go=${GO:-}
if [[ -z "$go" ]]; then
  if command -v go >/dev/null; then go=$(command -v go); else go=/usr/local/go/bin/go; fi
fi
[[ -x "$go" ]] || die "no Go toolchain at '$go' (install Go >= 1.26 to /usr/local/go or set GO=)"

cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
outroot="$cache/addons"
# -mod=readonly: the committed go.mod and go.sum must be complete; a build never rewrites them.
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
mkdir -p "$GOMODCACHE" "$GOCACHE" "$outroot"

# One build at a time per cache (a second caller waits, then finds the fresh stamps).
exec 9>"$outroot/.lock"
flock 9

goversion=$("$go" env GOVERSION)

# Per add-on: the upstream module, the pinned version, the package to build, the ldflags that
# stamp the version (as upstream's own release builds do), and how to ask the binary for it.
recipe() {
  gotest=0
  case "$1" in
    coredns)
      module=github.com/coredns/coredns version=${COREDNS:-} pkg=.
      # CoreDNS's version is a constant in coremain; nothing to stamp.
      ldflags="-s -w"
      version_cmd=(-version) version_want="CoreDNS-${COREDNS#v}"
      # main_test.go checks our directive list against upstream's for this version.
      gotest=1
      ;;
    metrics-server)
      module=sigs.k8s.io/metrics-server version=${METRICS_SERVER:-}
      pkg=sigs.k8s.io/metrics-server/cmd/metrics-server
      # Upstream's Makefile sets these; buildDate keeps client-go's fixed default so the
      # binary (and so the image digest) does not change from one build to the next.
      ldflags="-s -w -X k8s.io/client-go/pkg/version.gitVersion=$version \
 -X k8s.io/client-go/pkg/version.gitCommit=0000000 -X k8s.io/client-go/pkg/version.gitTreeState=clean"
      version_cmd=(--version) version_want="$version"
      ;;
    local-path-provisioner)
      module=github.com/rancher/local-path-provisioner version=${LOCAL_PATH_PROVISIONER:-}
      pkg=github.com/rancher/local-path-provisioner
      # Upstream's scripts/build sets main.VERSION from the git tag.
      ldflags="-s -w -X main.VERSION=$version"
      version_cmd=(--version) version_want="$version"
      ;;
  esac
  [[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] \
    || die "$pins pins $1 at '$version', expected vX.Y.Z"
}

# The binary reports the pinned version (its first line of output contains it).
reports_version() {
  local got
  got=$("$1" "${version_cmd[@]}" 2>&1 | head -n 3) || true
  [[ "$got" == *"$version_want"* ]] || { log "$1 ${version_cmd[*]} printed '$got', expected '$version_want'"; return 1; }
}

total_start=$(date +%s)
for name in "${names[@]}"; do
  recipe "$name"
  mod="$addons/$name"
  [[ -f "$mod/go.mod" && -f "$mod/go.sum" ]] || die "$mod has no go.mod/go.sum; run scripts/update-addon-modules.sh $name"
  # versions.env is the single pin; go.mod is derived from it by scripts/update-addon-modules.sh.
  grep -qE "^(require)?[[:space:]]*${module//./\\.} ${version//./\\.}\$" "$mod/go.mod" \
    || die "assets/addons/$name/go.mod does not require $module $version (versions.env); run scripts/update-addon-modules.sh $name and commit"

  outdir="$outroot/$name/$version"
  out="$outdir/$name"
  stamp="$out.stamp"
  srchash=$(cd "$mod" && cat "$pins" go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
  want="version=$version go=$goversion recipe=$RECIPE_REV src=$srchash"

  if [[ $force -eq 0 && -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && reports_version "$out"; then
    log "$name $version up to date ($out)"
    continue
  fi
  [[ ! -f "$stamp" || "$(cat "$stamp")" == "$want" ]] || log "$name: stamp differs (have '$(cat "$stamp")', want '$want')"
  [[ $check -eq 0 ]] || die "$out is missing or stale for $want; build it with: $repo/scripts/build-addons.sh $name"

  mkdir -p "$outdir"
  cd "$mod"
  log "$name: downloading the module closure of $module $version into $GOMODCACHE"
  dl_log=$(mktemp)
  if ! "$go" mod download >"$dl_log" 2>&1; then
    cat "$dl_log" >&2
    missing=$(grep -oE '[A-Za-z0-9./_~-]+@v[^: ]+' "$dl_log" | sort -u | tr '\n' ' ' || true)
    rm -f "$dl_log"
    die "$name: could not download the Go module closure of $module $version; failing module(s): ${missing:-see output above}. Check GOPROXY ($("$go" env GOPROXY)), or choose another pin in versions.env and run scripts/update-addon-modules.sh $name"
  fi
  rm -f "$dl_log"

  log "$name: building $module $version ($pkg) with $goversion"
  start=$(date +%s)
  "$go" build -trimpath -buildvcs=false -o "$out.tmp" -ldflags "$ldflags" "$pkg" \
    || die "$name: go build of $pkg ($module $version) failed (see output above); if the pin does not build with $goversion, choose another in versions.env and run scripts/update-addon-modules.sh $name"
  log "$name: built in $(($(date +%s) - start))s"
  if ((gotest)); then
    "$go" test -trimpath -buildvcs=false -count=1 . >&2 || die "$name: go test in $mod failed: the wrapper does not fit $module $version (see output above)"
  fi
  reports_version "$out.tmp" || die "$name: the fresh binary $out.tmp does not report $version_want"
  mv -f "$out.tmp" "$out"
  echo "$want" >"$stamp"
done
log "done in $(($(date +%s) - total_start))s"
echo "$outroot"
