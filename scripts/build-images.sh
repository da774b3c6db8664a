#!/usr/bin/env bash
# Builds the local container images as OCI layout tarballs:
#   <out>/pause.tar    registry.k8s.io/pause:3.10            (our assets/pause/pause.c, static)
#   <out>/busybox.tar  docker.io/library/busybox:1.36-local  (Debian's busybox-static)
# The pause binary is compiled with `gcc -static -Os -s`; the packing is `k8sd images build`.
# The output is reproducible: the same inputs give byte-identical tarballs.
#
# Usage: scripts/build-images.sh [OUT_DIR]   (default /var/cache/k8sd/images)
# K8SD_BIN names a prebuilt k8sd; otherwise `cargo build` builds one. Prints OUT_DIR.
set -euo pipefail

die() { echo "build-images: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/images}
busybox=${BUSYBOX:-/bin/busybox}

command -v gcc >/dev/null || die "gcc not found; run scripts/setup-host.sh (packages gcc, libc6-dev)"
[[ -x "$busybox" ]] || die "$busybox not found; run scripts/setup-host.sh (package busybox-static)"

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
"$k8sd" images build --out "$out" --pause-bin "$out/pause.bin" --busybox "$busybox" >&2
echo "$out"
