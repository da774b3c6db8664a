#!/usr/bin/env bash
# Builds the container runtime k8sd runs, from the Go modules pinned in
# assets/runtime/versions.env: containerd 2.x (containerd, containerd-shim-runc-v2, ctr) from the
# wrapper module assets/runtime/containerd/, and runc from assets/runtime/runc/.
#
# Caches live outside the checkout so a reused machine hits them:
#   GOMODCACHE  /var/cache/k8sd/go/mod
#   GOCACHE     /var/cache/k8sd/go/build
#   output      /var/cache/k8sd/runtime/containerd-<CONTAINERD>-runc-<RUNC>/
#               containerd, containerd-shim-runc-v2, ctr (+ containerd.stamp), runc (+ runc.stamp)
# Override the root with K8SD_CACHE_DIR. One directory holds all four binaries because
# containerd finds the shim, and the shim finds runc, by PATH: k8sd puts this directory first on
# containerd's PATH (and names runc in its config). A project is reused only while its stamp
# (version, Go version, recipe revision, hash of its wrapper module and of versions.env) matches
# and its binaries report the pinned version; otherwise it is rebuilt. On success the last line
# of stdout is the directory (k8sd's default runtime dir, or K8SD_RUNTIME_DIR).
#
# containerd, the shim and ctr are pure Go (CGO_ENABLED=0, so the btrfs snapshotter, which needs
# cgo, is left out; k8sd uses overlayfs). runc needs cgo for its nsenter C code and libseccomp
# (Debian's libseccomp-dev, installed by scripts/setup-host.sh); it is linked statically as
# upstream's release binaries are, so it needs no library at run time.
#
# Usage: scripts/build-runtime.sh [--force | --check]
#   --force  rebuild even if the cached binaries are up to date
#   --check  build nothing: print the directory if every cached binary is up to date, else exit 1
set -euo pipefail

# Bump when the build flags below change, so stale binaries are rebuilt.
RECIPE_REV=1

die() { echo "build-runtime: error: $*" >&2; exit 1; }
log() { echo "build-runtime: $*" >&2; }

force=0 check=0
case "${1:-}" in
  --force) force=1 ;;
  --check) check=1 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: $0 [--force | --check])" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runtime="$repo/assets/runtime"
pins="$runtime/versions.env"
# shellcheck source=../assets/runtime/versions.env
. "$pins"
for v in "${CONTAINERD:-}" "${RUNC:-}"; do
  [[ "$v" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$pins pins '$v', expected vX.Y.Z for CONTAINERD and RUNC"
done

go=${GO:-}
if [[ -z "$go" ]]; then
  if command -v go >/dev/null; then go=$(command -v go); else go=/usr/local/go/bin/go; fi
fi
[[ -x "$go" ]] || die "no Go toolchain at '$go' (install Go >= 1.26 to /usr/local/go or set GO=)"

cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
outdir="$cache/runtime/containerd-$CONTAINERD-runc-$RUNC"
# -mod=readonly: the committed go.mod and go.sum must be complete; a build never rewrites them.
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
mkdir -p "$GOMODCACHE" "$GOCACHE" "$outdir"

# One build at a time per cache (a second caller waits, then finds the fresh stamps).
exec 9>"$cache/runtime/.lock"
flock 9

goversion=$("$go" env GOVERSION)

# Per project: the upstream module, its pin, the binaries it yields and how each reports the
# pinned version (first lines of output must contain version_want).
recipe() {
  case "$1" in
    containerd)
      module=github.com/containerd/containerd/v2 version=$CONTAINERD
      bins="containerd containerd-shim-runc-v2 ctr"
      version_want="containerd github.com/containerd/containerd/v2 $CONTAINERD"
      ;;
    runc)
      module=github.com/opencontainers/runc version=$RUNC
      bins="runc"
      version_want="runc version ${RUNC#v}"
      ;;
  esac
}

# Every binary of the project reports the pinned version.
reports_version() { # dir suffix
  local b got
  for b in $bins; do
    # The shim has no --version: `-v` prints "containerd-shim-runc-v2:" then "  Version:  v2.2.10";
    # ctr prints "ctr github.com/containerd/containerd/v2 v2.2.10".
    if [[ "$b" == containerd-shim-runc-v2 ]]; then got=$("$1/$b$2" -v 2>&1 | head -n 3) || true
    else got=$("$1/$b$2" --version 2>&1 | head -n 3) || true; fi
    case "$b" in
      containerd-shim-runc-v2) [[ "$got" == *"Version:"*"$version"* ]] ;;
      ctr) [[ "$got" == *"ctr $module $version"* ]] ;;
      *) [[ "$got" == *"$version_want"* ]] ;;
    esac || { log "$1/$b$2 printed '$got', expected version $version"; return 1; }
  done
}

build() {
  local name=$1 mod="$runtime/$1"
  case "$name" in
    containerd)
      # As upstream's Makefile: the version package stamped, no man-page generator, and the shim
      # without gRPC (it serves ttrpc only) and fully static.
      local vflags="-X $module/version.Version=$version -X $module/version.Package=$module"
      CGO_ENABLED=0 "$go" build -trimpath -buildvcs=false -tags urfave_cli_no_docs \
        -ldflags "-s -w $vflags" -o "$outdir/containerd.tmp" "$module/cmd/containerd"
      CGO_ENABLED=0 "$go" build -trimpath -buildvcs=false -tags urfave_cli_no_docs \
        -ldflags "-s -w $vflags" -o "$outdir/ctr.tmp" "$module/cmd/ctr"
      CGO_ENABLED=0 "$go" build -trimpath -buildvcs=false -tags "urfave_cli_no_docs no_grpc" \
        -ldflags "-s -w $vflags" -o "$outdir/containerd-shim-runc-v2.tmp" "$module/cmd/containerd-shim-runc-v2"
      ;;
    runc)
      # As upstream's `make static`: seccomp on, static PIE (libseccomp.a linked in), pure-Go
      # user and DNS lookups so the static binary never loads NSS modules.
      [[ -f /usr/include/seccomp.h ]] || die "runc needs libseccomp's headers (/usr/include/seccomp.h); run scripts/setup-host.sh (installs libseccomp-dev)"
      CGO_ENABLED=1 "$go" build -trimpath -buildvcs=false -buildmode=pie \
        -tags "seccomp urfave_cli_no_docs netgo osusergo" \
        -ldflags "-s -w -X main.gitCommit=$version -linkmode external -extldflags -static-pie" \
        -o "$outdir/runc.tmp" "$module"
      ;;
  esac
}

total_start=$(date +%s)
for name in containerd runc; do
  recipe "$name"
  mod="$runtime/$name"
  [[ -f "$mod/go.mod" && -f "$mod/go.sum" ]] || die "$mod has no go.mod/go.sum; run scripts/update-runtime-modules.sh $name"
  # versions.env is the single pin; go.mod is derived from it by scripts/update-runtime-modules.sh.
  grep -qE "^(require)?[[:space:]]*${module//./\\.} ${version//./\\.}\$" "$mod/go.mod" \
    || die "assets/runtime/$name/go.mod does not require $module $version (versions.env); run scripts/update-runtime-modules.sh $name and commit"

  stamp="$outdir/$name.stamp"
  srchash=$(cd "$mod" && cat "$pins" go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
  want="version=$version go=$goversion recipe=$RECIPE_REV src=$srchash"

  if [[ $force -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && reports_version "$outdir" ""; then
    log "$name $version up to date ($outdir)"
    continue
  fi
  [[ ! -f "$stamp" || "$(cat "$stamp")" == "$want" ]] || log "$name: stamp differs (have '$(cat "$stamp")', want '$want')"
  [[ $check -eq 0 ]] || die "$name in $outdir is missing or stale for $want; build it with: $repo/scripts/build-runtime.sh"

  cd "$mod"
  log "$name: downloading the module closure of $module $version into $GOMODCACHE"
  dl_log=$(mktemp)
  if ! "$go" mod download >"$dl_log" 2>&1; then
    cat "$dl_log" >&2
    missing=$(grep -oE '[A-Za-z0-9./_~-]+@v[^: ]+' "$dl_log" | sort -u | tr '\n' ' ' || true)
    rm -f "$dl_log"
    die "$name: could not download the Go module closure of $module $version; failing module(s): ${missing:-see output above}. Check GOPROXY ($("$go" env GOPROXY)), or choose another pin in versions.env and run scripts/update-runtime-modules.sh $name"
  fi
  rm -f "$dl_log"

  log "$name: building $module $version ($bins) with $goversion (cold: several minutes on 2 cores)"
  start=$(date +%s)
  build "$name" || die "$name: go build of $module $version failed (see output above); if the pin does not build with $goversion, choose another in versions.env and run scripts/update-runtime-modules.sh $name"
  log "$name: built in $(($(date +%s) - start))s"
  reports_version "$outdir" .tmp || die "$name: the fresh binaries in $outdir (*.tmp) do not report $version"
  for b in $bins; do mv -f "$outdir/$b.tmp" "$outdir/$b"; done
  echo "$want" >"$stamp"
done
log "done in $(($(date +%s) - total_start))s"
echo "$outdir"
