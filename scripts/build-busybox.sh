#!/usr/bin/env bash
# Builds busybox from upstream's source at the pin of assets/busybox/source.env, for k8sd's base
# image (scripts/build-images.sh) and the conformance busybox image
# (scripts/build-conformance-images.sh): one build serves both.
#
#   /var/cache/k8sd/busybox/src/busybox-<version>.tar.bz2   the source, checked against the sha256 pin
#   /var/cache/k8sd/busybox/<version>/busybox               the program (+ busybox.stamp of its inputs)
#
# `make defconfig`: every applet upstream enables by default, and ash as the shell. It is
# linked dynamically against this host's glibc, because glibc resolves names (NSS) in a static
# program only with the same glibc's shared libraries present at run time; the image scripts
# pack the loader and libraries `ldd` names. Why not Debian's busybox package: Debian 12's 1.35
# and 13's 1.37 both drop environment variables named like `data-1` from `sh -c env`, which
# Kubernetes' ConfigMap and Secret conformance specs read back, and Debian 12's crashes on
# `wget -T`; upstream's defconfig build does neither (docs/kubernetes-build.md).
#
# Cached: a warm run only compares the stamp (pin, this script, compiler, glibc). The build
# checks the result keeps `data-1`, so a regression fails here rather than in a pod.
#
# Usage: scripts/build-busybox.sh   Prints the path of the busybox program as its last line.
set -euo pipefail

die() { echo "build-busybox: error: $*" >&2; exit 1; }
log() { echo "build-busybox: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
pin=$repo/assets/busybox/source.env

for tool in gcc make bzip2 tar curl sha256sum flock ldd; do
  command -v "$tool" >/dev/null || die "$tool not found; run scripts/setup-host.sh"
done

pin_value() { awk -F= -v k="$1" '$1 == k { print $2; exit }' "$pin"; }
version=$(pin_value VERSION) url=$(pin_value URL) sum=$(pin_value SHA256)
[[ -n "$version" && -n "$url" && ${#sum} -eq 64 ]] \
  || die "$pin must set VERSION, URL and SHA256 (64 hex digits)"

dir=$cache/busybox/$version
bin=$dir/busybox
mkdir -p "$cache/busybox/src" "$dir"
exec 9>"$cache/busybox/.lock"
flock 9 || die "cannot lock $cache/busybox/.lock"

sha() { sha256sum | cut -c1-64; }
# `sed -n 1p`, not `head -n 1`: head exits after one line, and under pipefail the writer's
# SIGPIPE (ldd --version prints line by line) would fail this script at random, silently.
stamp=$( (cat "$pin" "${BASH_SOURCE[0]}"; gcc --version | sed -n 1p; ldd --version | sed -n 1p) | sha)
if [[ -x "$bin" && "$(cat "$bin.stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "$bin"
  exit 0
fi

tarball=$cache/busybox/src/busybox-$version.tar.bz2
if [[ ! -f "$tarball" || "$(sha <"$tarball")" != "$sum" ]]; then
  log "fetching $url"
  curl -fsSL --retry 3 -o "$tarball.tmp" "$url" \
    || die "cannot download $url; check the network, or fetch it by hand to $tarball"
  got=$(sha <"$tarball.tmp")
  [[ "$got" == "$sum" ]] || { rm -f "$tarball.tmp"; die "$url has sha256 $got, but $pin pins $sum"; }
  mv -f "$tarball.tmp" "$tarball"
fi

log "building busybox $version (make defconfig, dynamically linked)"
build=$dir/build
rm -rf "$build" && mkdir -p "$build"
tar -xjf "$tarball" -C "$build" --strip-components=1 || die "cannot unpack $tarball"
# The build date busybox prints comes from SOURCE_DATE_EPOCH: upstream's own Makefile mtime,
# so the same pin gives the same program and the images stay reproducible.
epoch=$(stat -c %Y "$build/Makefile")
(cd "$build" && export SOURCE_DATE_EPOCH=$epoch && make -s defconfig && make -s -j2 busybox) >"$dir/build.log" 2>&1 \
  || die "building busybox $version failed; the last lines of $dir/build.log: $(tail -n 20 "$dir/build.log")"

# What the images rely on, checked once here.
ldd "$build/busybox" >/dev/null 2>&1 || die "$build/busybox is not dynamically linked"
[[ "$(env 'data-1=x' "$build/busybox" sh -c env | grep -c '^data-1=x$')" == 1 ]] \
  || die "busybox $version's sh drops variables named like data-1; the conformance specs need them"

install -m 0755 "$build/busybox" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
rm -rf "$build"
echo "$stamp" >"$bin.stamp"
log "built $bin"
echo "$bin"
