#!/usr/bin/env bash
# Builds the k8sd snap without snapcraft: the same build steps as scripts/up.sh (kubebin, the
# container runtime, the add-ons, k8sd, the images), then the prime directory laid out from
# snap/contents.txt, meta/snap.yaml and meta/hooks/ (from snap/hooks/), then `snap pack`
# (Debian's snapd package, with squashfs-tools) with lzo compression, much cheaper in CPU than
# snapd's default xz on a 2-core CI machine, for a larger file (docs/benchmarks.md).
#
# Outside the checkout (K8SD_CACHE_DIR overrides /var/cache/k8sd):
#   /var/cache/k8sd/snap/prime/                    the prime directory of the last build
#   /var/cache/k8sd/snap/k8sd_<version>_amd64.snap the snap; older ones are deleted
#   /var/cache/k8sd/snap/snap.stamp                SHA-256 of every input of that snap
# A warm run rebuilds nothing: when every input (each file of snap/contents.txt, the hooks,
# contents.txt, this script and the version) hashes as in the stamp and the snap is there, it is
# reused. On success the last line of stdout is the snap's path.
#
# Version: <k8sd crate version>+<git describe>-k8s<pinned Kubernetes>, at most 32 characters as
# snapd requires; grade stable only on a clean checkout exactly at a tag, else devel.
#
# Usage: scripts/build-snap.sh [--force]
#        scripts/build-snap.sh --layout-only DIR   (snap/snapcraft.yaml: put the files of
#                                                   snap/contents.txt into DIR; no meta, no pack)
# K8SD_BIN names a prebuilt k8sd (release build); otherwise `cargo build --release` builds one.
set -euo pipefail

die() { echo "build-snap: error: $*" >&2; exit 1; }
log() { echo "build-snap: $*" >&2; }

force=0 layout_only=""
while (($#)); do
  case "$1" in
    --force) force=1 ;;
    --layout-only) [[ $# -ge 2 ]] || die "--layout-only needs a directory"; layout_only=$2; shift ;;
    *) die "unknown argument '$1' (usage: $0 [--force] | --layout-only DIR)" ;;
  esac
  shift
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
contents=snap/contents.txt
[[ -f $contents ]] || die "$contents is missing"

if [[ -z $layout_only ]]; then
  for b in snap mksquashfs; do
    command -v "$b" >/dev/null || die "'$b' not found; run scripts/setup-host.sh (Debian packages snapd and squashfs-tools)"
  done
fi

# The same steps as scripts/up.sh; each reuses its cache when up to date.
kubebin=$(scripts/build-kube.sh | tail -n 1) || die "scripts/build-kube.sh failed; see its error above"
runtime=$(scripts/build-runtime.sh | tail -n 1) || die "scripts/build-runtime.sh failed; see its error above"
scripts/build-addons.sh >/dev/null || die "scripts/build-addons.sh failed; see its error above"
k8sd=${K8SD_BIN:-}
if [[ -z $k8sd ]]; then
  cargo build --release --bin k8sd >&2 || die "cargo build --release --bin k8sd failed"
  k8sd="${CARGO_TARGET_DIR:-$repo/target}/release/k8sd"
fi
[[ -x $k8sd ]] || die "k8sd binary '$k8sd' not found or not executable"
images=$(K8SD_BIN=$k8sd scripts/build-images.sh | tail -n 1) || die "scripts/build-images.sh failed; see its error above"

# from_dir FROM: the directory of a build output named in contents.txt.
from_dir() {
  case "$1" in
    k8sd) dirname "$k8sd" ;;
    kubebin) dirname "$kubebin" ;;
    runtime) echo "$runtime" ;;
    images) echo "$images" ;;
    cni) echo /usr/lib/cni ;;
    *) return 1 ;;
  esac
}
# entries: "DEST SOURCE-PATH" for every line of contents.txt; an unknown FROM or a missing file
# stops the build naming the line.
entries=()
n=0
while read -r dest from name rest; do
  n=$((n + 1))
  [[ -z $dest || $dest == \#* ]] && continue
  [[ -n $name && -z $rest ]] || die "$contents:$n: want 'DEST FROM NAME', got '$dest $from $name $rest'"
  dir=$(from_dir "$from") || die "$contents:$n: unknown FROM '$from' (k8sd, kubebin, runtime, images or cni)"
  [[ -f $dir/$name ]] || die "$contents:$n: $dir/$name is missing (its build step above should have made it)"
  entries+=("$dest $dir/$name")
done <"$contents"
((${#entries[@]})) || die "$contents lists no files"

# lay_out DIR: copy every entry into DIR (executables 0755, the rest 0644).
lay_out() {
  local e dest src
  for e in "${entries[@]}"; do
    dest=$1/${e%% *} src=${e#* }
    if [[ -x $src ]]; then install -D -m 0755 "$src" "$dest"; else install -D -m 0644 "$src" "$dest"; fi
  done
}

if [[ -n $layout_only ]]; then
  lay_out "$layout_only"
  log "laid out ${#entries[@]} files of $contents in $layout_only"
  exit 0
fi

kube_version=$(tr -d '[:space:]' <assets/kube/VERSION)
crate_version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
describe=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
version="$crate_version+$(tr -c 'a-zA-Z0-9.+~\n-' '.' <<<"$describe")-k8s${kube_version#v}"
version=${version:0:32}
grade=devel
if git describe --tags --exact-match >/dev/null 2>&1 && [[ $describe != *-dirty ]]; then grade=stable; fi

out=$cache/snap
prime=$out/prime
snapfile=$out/k8sd_${version}_amd64.snap
stamp=$out/snap.stamp
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# The stamp: what the snap is made of, by content.
inputs() {
  echo "version $version grade $grade"
  sha256sum "$contents" snap/hooks/* "${BASH_SOURCE[0]}" | awk '{ print $1 }'
  local e
  for e in "${entries[@]}"; do echo "${e%% *} $(sha256sum <"${e#* }" | awk '{ print $1 }')"; done
}
want=$(inputs | sha256sum | awk '{ print $1 }')
if ((force == 0)) && [[ -f $snapfile && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  log "up to date: $snapfile"
  echo "$snapfile"
  exit 0
fi

start=$SECONDS
rm -rf "$prime" "$snapfile"
lay_out "$prime"
install -D -m 0755 -t "$prime/meta/hooks" snap/hooks/*
cat >"$prime/meta/snap.yaml" <<YAML
name: k8sd
version: '$version'
summary: One binary that turns Linux machines into a Kubernetes cluster
description: |
  k8sd runs an embedded etcd-compatible datastore, generates the cluster PKI and supervises the
  upstream kube-apiserver $kube_version, controller-manager, scheduler, containerd, kubelet and
  kube-proxy. State lives in \$SNAP_COMMON so a refresh or revert keeps the cluster.
architectures: [amd64]
base: core22
grade: $grade
confinement: classic
apps:
  k8sd:
    command: bin/k8sd
  daemon:
    command: bin/k8sd run
    daemon: notify
    install-mode: enable
    restart-condition: always
    stop-mode: sigterm
YAML
# `snap pack` checks meta/snap.yaml (name, version, apps, hooks) before it writes anything.
snap pack --compression=lzo "$prime" "$out" >&2 || die "snap pack failed; see its error above"
[[ -f $snapfile ]] || die "snap pack did not write $snapfile"
find "$out" -maxdepth 1 -name 'k8sd_*.snap' ! -path "$snapfile" -delete
echo "$want" >"$stamp"
log "built $snapfile ($(du -h "$snapfile" | cut -f1)) in $((SECONDS - start)) s"
echo "$snapfile"
