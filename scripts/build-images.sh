#!/usr/bin/env bash
# Builds the local container images as OCI layout tarballs:
#   <out>/pause.tar    registry.k8s.io/pause:3.10            (our assets/pause/pause.c, static)
#   <out>/busybox.tar  docker.io/library/busybox:1.37-local  (busybox built from source, dynamically
#                                                            linked; its loader and libraries from the host)
#   <out>/coredns.tar, metrics-server.tar, local-path-provisioner.tar
#                      localhost/k8sd/<name>:<version>        (from scripts/build-addons.sh)
# The pause binary is compiled with `gcc -static -Os -s`; the packing is `k8sd images build`.
# The output is reproducible: the same inputs give byte-identical tarballs.
#
# Busybox is upstream's release at the pin of assets/busybox/source.env, built with defconfig by
# scripts/build-busybox.sh into /var/cache/k8sd/busybox/<version>/ (the conformance busybox
# image packs the same build). It is dynamically linked because glibc supports name resolution
# (NSS) in a static program only with the same glibc's shared libraries present at run time;
# `ldd` names the loader and libraries to pack with it. BUSYBOX=PATH packs another dynamically
# linked busybox instead.
#
# The add-on images are packed when scripts/build-addons.sh has built every add-on at its pin
# (ADDONS_DIR overrides where to find them); otherwise they are skipped with a warning.
#
# Usage: scripts/build-images.sh [OUT_DIR]   (default /var/cache/k8sd/images)
# K8SD_BIN names a prebuilt k8sd; otherwise `cargo build` builds one. Prints OUT_DIR.
set -euo pipefail

die() { echo "build-images: error: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
out=${1:-$cache/images}

command -v gcc >/dev/null || die "gcc not found; run scripts/setup-host.sh (packages gcc, libc6-dev)"

# Busybox from upstream's source at the pin (scripts/build-busybox.sh; cached).
if [[ -z "${BUSYBOX:-}" ]]; then
  BUSYBOX=$("$repo/scripts/build-busybox.sh" | tail -n 1) || die "scripts/build-busybox.sh failed; see its error above"
fi
busybox=$BUSYBOX
[[ -x "$busybox" ]] || die "busybox '$busybox' not found or not executable"

# The loader and every library busybox needs: ldd prints "name => /path (addr)" and
# "/lib64/ld-linux-x86-64.so.2 (addr)"; the vDSO has no path.
libs=$(ldd "$busybox" 2>&1) || die "ldd $busybox failed: $libs (it must be a dynamically linked executable)"
lib_args=()
while read -r lib; do lib_args+=(--busybox-lib "$lib"); done \
  < <(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }' <<<"$libs")
((${#lib_args[@]})) || die "ldd found no libraries for $busybox: $libs"

addons_args=()
addons_dir=${ADDONS_DIR:-}
if [[ -z "$addons_dir" ]]; then
  addons_dir=$("$repo/scripts/build-addons.sh" --check 2>/dev/null | tail -n 1) || addons_dir=""
fi
if [[ -n "$addons_dir" ]]; then
  addons_args=(--addons-dir "$addons_dir")
else
  log "WARNING: add-on binaries are missing or stale; skipping coredns, metrics-server and local-path-provisioner (build them with scripts/build-addons.sh, then run this again)"
fi

k8sd=${K8SD_BIN:-}
if [[ -z "$k8sd" ]]; then
  (cd "$repo" && cargo build --quiet --bin k8sd) || die "cargo build failed"
  k8sd="${CARGO_TARGET_DIR:-$repo/target}/debug/k8sd"
fi
[[ -x "$k8sd" ]] || die "k8sd binary '$k8sd' not found"

mkdir -p "$out"
gcc -static -Os -s -Wall -Wextra -Werror -o "$out/pause.bin.tmp" "$repo/assets/pause/pause.c" \
  || die "compiling assets/pause/pause.c failed (static glibc comes from libc6-dev)"
mv -f "$out/pause.bin.tmp" "$out/pause.bin"
"$k8sd" images build --out "$out" --pause-bin "$out/pause.bin" \
  --busybox "$busybox" "${lib_args[@]}" "${addons_args[@]}" >&2
echo "$out"
