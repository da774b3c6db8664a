#!/usr/bin/env bash
# Builds every image the Kubernetes [Conformance] specs run, under its exact upstream reference
# (test/utils/image/manifest.go of the kube pin), from source and Debian packages: nothing is
# pulled from a registry. One OCI tarball per image in OUT_DIR, and OUT_DIR/images.tsv with a
# line "<reference>\t<tarball file name>" per image; the last stdout line is OUT_DIR.
#
#   agnhost:2.63.0, agnhost:2.55   /agnhost (Go, assets/conformance) on Debian bookworm packages
#                                  with the tools upstream's Dockerfile installs, /coredns
#                                  (scripts/build-addons.sh), porter's certificates, its users
#   kitten:1.8, nautilus:1.8       the agnhost image with upstream's html files, CMD test-webserver
#   busybox:1.37.0-1               busybox 1.37.0 from source (scripts/build-busybox.sh) with every
#                                  applet in /bin, /bin/sh = its ash, the host's loader and libs
#   glibc-dns-testing:2.0.0        Debian's dnsutils (dig, nslookup), getent, /coredns
#   nginx:1.15-4, nginx:1.27-0     Debian's nginx serving on :80, logs to stdout/stderr
#   nonewprivs:1.4                 upstream's nnp.go, setuid root, at /usr/local/bin/nnp
#   nonroot:1.5                    Debian base, USER 1234
#   sample-apiserver:1.29.2        k8s.io/sample-apiserver at the kube pin
#   etcd:3.6.8-0                   go.etcd.io/etcd/server/v3 at /usr/local/bin/etcd
#   pause:3.10.2                   assets/pause/pause.c, static
# docs/kubernetes-build.md ("Conformance images") says why each is made the way it is.
#
# Cached and idempotent: Go binaries, Debian rootfs and tarballs each carry a stamp of their
# inputs, so a warm run only checks stamps. Debian packages are fetched with `apt-get download`
# into the cache and unpacked with `dpkg-deb -x` (never installed).
#
# Usage: scripts/build-conformance-images.sh [OUT_DIR]   (default /var/cache/k8sd/conformance/images)
# K8SD_BIN names the k8sd binary that packs the images; otherwise `cargo build --release` builds one.
set -euo pipefail

die() { echo "build-conformance-images: error: $*" >&2; exit 1; }
log() { echo "build-conformance-images: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
out=${1:-$cache/conformance/images}
work=$cache/conformance/build
module=$repo/assets/conformance
export GOMODCACHE=${GOMODCACHE:-$cache/go/mod} GOCACHE=${GOCACHE:-$cache/go/build}
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod

for tool in go gcc ldd apt-get apt-cache dpkg-deb sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool not found; run scripts/setup-host.sh"
done

mkdir -p "$work" "$out"
exec 9>"$work/.lock"
flock 9 || die "cannot lock $work/.lock"

k8sd=${K8SD_BIN:-}
if [[ -z "$k8sd" ]]; then
  (cd "$repo" && cargo build --release --quiet --bin k8sd) >&2 || die "cargo build failed"
  k8sd="${CARGO_TARGET_DIR:-$repo/target}/release/k8sd"
fi
[[ -x "$k8sd" ]] || die "k8sd binary '$k8sd' not found (set K8SD_BIN)"
"$k8sd" images pack --help >/dev/null 2>&1 || die "$k8sd has no 'images pack'; rebuild it from this checkout"

sha() { sha256sum | cut -c1-64; }
script_sha=$(sha <"${BASH_SOURCE[0]}")

# The upstream sources at the pin the wrapper module records.
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$module/go.mod")
[[ -n "$kube_version" ]] || die "$module/go.mod requires no k8s.io/kubernetes"
kube_src=$(cd "$module" && go list -m -f '{{.Dir}}' k8s.io/kubernetes 2>/dev/null) \
  || die "cannot find k8s.io/kubernetes $kube_version in the module cache; run: cd assets/conformance && go mod download k8s.io/kubernetes"
images_src=$kube_src/test/images
[[ -d "$images_src" ]] || die "$images_src is missing (k8s.io/kubernetes $kube_version)"

coredns_version=$(awk -F= '$1 == "COREDNS" { print $2 }' "$repo/assets/addons/versions.env")
coredns=$cache/addons/coredns/$coredns_version/coredns
[[ -x "$coredns" ]] || die "CoreDNS $coredns_version is not built at $coredns; run scripts/build-addons.sh"

# --- Go binaries from the wrapper module ---------------------------------------------------
go_version=$(go env GOVERSION)
mod_sha=$(cat "$module/go.mod" "$module/go.sum" | sha)
gobuild() { # NAME PACKAGE -> $work/bin/NAME
  local name=$1 pkg=$2 bin=$work/bin/$1 stamp
  stamp=$(printf '%s\n' "$go_version" "$mod_sha" "$pkg" "-s -w" | sha)
  if [[ -x "$bin" && "$(cat "$bin.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  log "building $name ($pkg)"
  mkdir -p "$work/bin"
  (cd "$module" && go build -p 2 -trimpath -ldflags='-s -w' -o "$bin.tmp" "$pkg") >&2 \
    || die "go build $pkg failed (image $name); the wrapper module is assets/conformance"
  mv -f "$bin.tmp" "$bin"
  echo "$stamp" >"$bin.stamp"
}
gobuild agnhost k8s.io/kubernetes/test/images/agnhost
gobuild nnp k8s.io/kubernetes/test/images/nonewprivs
gobuild sample-apiserver k8s.io/sample-apiserver
gobuild etcd go.etcd.io/etcd/server/v3

if [[ ! -x "$work/bin/pause" || "$(cat "$work/bin/pause.stamp" 2>/dev/null)" != "$(sha <"$repo/assets/pause/pause.c")" ]]; then
  gcc -static -Os -s -Wall -Wextra -Werror -o "$work/bin/pause.tmp" "$repo/assets/pause/pause.c" \
    || die "compiling assets/pause/pause.c failed (image pause; static glibc comes from libc6-dev)"
  mv -f "$work/bin/pause.tmp" "$work/bin/pause"
  sha <"$repo/assets/pause/pause.c" >"$work/bin/pause.stamp"
fi

# The busybox of k8sd's base image (built from source and cached by scripts/build-busybox.sh).
busybox_bin=$("$repo/scripts/build-busybox.sh" | tail -n 1) || die "scripts/build-busybox.sh failed; see its error above"

# --- Debian root filesystems ----------------------------------------------------------------
# Packages only needed to install or configure packages (maintainer scripts never run here).
declare -A skip_pkgs=()
for p in usrmerge usr-is-merged dpkg install-info debconf cdebconf init-system-helpers perl \
  perl-modules-5.36 libperl5.36 libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl \
  libdebian-installer4 libnewt0.52 libslang2 libtextwrap1; do skip_pkgs[$p]=1; done

# The packages PKGS... need, recursively: Depends and Pre-Depends, the first of alternatives,
# the first provider of a virtual package; minus skip_pkgs.
closure() {
  local -A seen=()
  local frontier=("$@") next dep
  for dep in "$@"; do seen[$dep]=1; done
  while ((${#frontier[@]})); do
    next=()
    while read -r dep; do
      [[ -n "${seen[$dep]:-}" || -n "${skip_pkgs[$dep]:-}" ]] && continue
      seen[$dep]=1
      next+=("$dep")
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${frontier[@]}" | awk '
        /^[^ ]/ { skip = 0; provider = 0; next }
        /^    / { if (provider) { print $1; provider = 0 }; next }
        /^ .(Pre)?Depends: / {
          provider = 0
          if (!skip) { if ($2 ~ /^</) provider = 1; else print $2 }
          skip = (substr($0, 2, 1) == "|")
        }')
    frontier=("${next[@]}")
  done
  printf '%s\n' "${!seen[@]}" | sort
}

apt_sha=$(cat /var/lib/apt/lists/*Release 2>/dev/null | sha)

# debian_rootfs NAME PKGS...: $work/rootfs/NAME holds the packages unpacked, trimmed of docs,
# with the links their maintainer scripts would make and a minimal /etc.
debian_rootfs() {
  local name=$1 dir=$work/rootfs/$1 stamp pkgs uris debs=$work/debs
  shift
  stamp=$(printf '%s\n' "$script_sha" "$apt_sha" "$@" | sha)
  if [[ -d "$dir" && "$(cat "$dir.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  log "assembling the Debian rootfs $name from: $*"
  mapfile -t pkgs < <(closure "$@")
  ((${#pkgs[@]})) || die "apt-cache resolved no packages for $*; run apt-get update (scripts/setup-host.sh does)"
  uris=$(apt-get download --print-uris "${pkgs[@]}" 2>"$work/apt.err") \
    || die "apt cannot download the packages of rootfs $name: $(cat "$work/apt.err") (run apt-get update)"
  mkdir -p "$debs"
  chown _apt "$debs" 2>/dev/null || true
  local missing=() file
  while read -r _ file _; do [[ -f "$debs/$file" ]] || missing+=("${file%%_*}"); done <<<"$uris"
  if ((${#missing[@]})); then
    (cd "$debs" && apt-get download -qq "${missing[@]}") >&2 \
      || die "apt-get download ${missing[*]} failed (rootfs $name); check the apt sources and the network"
  fi
  rm -rf "$dir" "$dir.stamp" && mkdir -p "$dir"
  while read -r _ file _; do
    dpkg-deb -x "$debs/$file" "$dir" || die "cannot unpack $debs/$file (rootfs $name)"
  done <<<"$uris"
  rm -rf "$dir"/usr/share/{doc,man,info,locale,lintian,bug,doc-base,bash-completion} "$dir"/var/cache/*
  # What maintainer scripts and update-alternatives would have linked.
  ln -sfn bash "$dir/bin/sh"
  [[ -e "$dir/bin/nc.openbsd" ]] && ln -sfn /bin/nc.openbsd "$dir/usr/bin/nc"
  [[ -e "$dir/usr/bin/mawk" ]] && ln -sfn mawk "$dir/usr/bin/awk"
  mkdir -p "$dir"/{etc,root,home,proc,sys,dev,run,tmp,var/tmp,var/log}
  chmod 1777 "$dir/tmp" "$dir/var/tmp"
  chmod 0700 "$dir/root"
  cat >"$dir/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  printf 'root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n' >"$dir/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dir/etc/nsswitch.conf"
  # The kubelet mounts its own /etc/hosts and /etc/resolv.conf over these.
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$dir/etc/hosts"
  : >"$dir/etc/resolv.conf"
  echo "$stamp" >"$dir.stamp"
}

base_pkgs=(base-files bash coreutils libc-bin hostname mawk sed grep findutils procps util-linux)
debian_rootfs base "${base_pkgs[@]}"
debian_rootfs agnhost "${base_pkgs[@]}" bind9-dnsutils curl netcat-openbsd iproute2 iperf busybox
debian_rootfs dnsutils "${base_pkgs[@]}" bind9-dnsutils
debian_rootfs nginx "${base_pkgs[@]}" nginx

# --- images ---------------------------------------------------------------------------------
tsv=()
# Inputs of one PREPARE function beyond the shared rootfs and binaries, by function name.
declare -A extra_inputs=([prep_busybox]="$(cat "$busybox_bin.stamp")")
# image REFERENCE TARBALL PREPARE [pack flags...]: PREPARE is a function that fills the rootfs
# dir given as its argument; the tarball is rebuilt only when the stamp of its inputs changes.
image() {
  local ref=$1 tarball=$2 prepare=$3 stamp dir
  shift 3
  tsv+=("$ref"$'\t'"$tarball")
  stamp=$( (printf '%s\n' "$script_sha" "$ref" "$@" "${extra_inputs[$prepare]:-}"; declare -f "$prepare"
    cat "$work"/rootfs/*.stamp "$work"/bin/*.stamp) | sha)
  if [[ -f "$out/$tarball" && "$(cat "$out/$tarball.stamp" 2>/dev/null)" == "$stamp" ]]; then return; fi
  log "packing $ref"
  dir=$work/image-rootfs/${tarball%.tar}
  rm -rf "$dir" && mkdir -p "$dir"
  "$prepare" "$dir" || die "preparing the rootfs of $ref failed"
  "$k8sd" images pack --reference "$ref" --rootfs "$dir" --out "$out/$tarball" \
    --label "org.opencontainers.image.version=${ref##*:}" "$@" >&2 \
    || die "packing $ref failed; see the error above"
  rm -rf "$dir"
  echo "$stamp" >"$out/$tarball.stamp"
}

copy_rootfs() { cp -a "$work/rootfs/$1/." "$2/"; }

prep_agnhost() {
  copy_rootfs agnhost "$1"
  install -m 0755 "$work/bin/agnhost" "$1/agnhost"
  ln -s agnhost "$1/agnhost-2"
  install -m 0755 "$coredns" "$1/coredns"
  install -m 0644 "$images_src/agnhost/porter/localhost.crt" "$images_src/agnhost/porter/localhost.key" "$1/"
  mkdir -p "$1/uploads"
  # wget and the other applets Alpine's busybox gives upstream's image, where Debian has none.
  local applet
  for applet in $("$1/bin/busybox" --list); do
    [[ -e "$1/bin/$applet" || -e "$1/usr/bin/$applet" || -e "$1/sbin/$applet" || -e "$1/usr/sbin/$applet" ]] \
      || ln -s /bin/busybox "$1/usr/bin/$applet"
  done
  # Upstream's agnhost (and kitten and nautilus, built on it) is Alpine Linux; the ImageVolume
  # spec reads the image's /etc/os-release through an image volume and expects "Alpine Linux"
  # there, which also tells the image's file from the (Debian) host's. Alpine's packages cannot
  # be fetched here, so this stand-in says plainly what it is, naming the image it stands in for.
  rm -f "$1/etc/os-release" "$1/usr/lib/os-release"
  cat >"$1/etc/os-release" <<'EOF'
NAME="k8sd stand-in for an Alpine Linux image"
PRETTY_NAME="Debian 12 packages standing in for upstream's Alpine Linux e2e test image (built by k8sd)"
ID=k8sd-standin
ID_LIKE=debian
VERSION_ID=12
EOF
  # adduser -u 1000 user-defined-in-image; addgroup -g 50000 group-defined-in-image (upstream).
  echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$1/etc/passwd"
  printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$1/etc/group"
  mkdir -p "$1/home/user-defined-in-image"
}
agnhost_flags=(--entrypoint /agnhost --cmd pause --expose 80 --expose 8080 --expose 8081 --expose 9376 --expose 5000)
e2e=registry.k8s.io/e2e-test-images
image "$e2e/agnhost:2.63.0" agnhost-2.63.0.tar prep_agnhost "${agnhost_flags[@]}"
image "$e2e/agnhost:2.55" agnhost-2.55.tar prep_agnhost "${agnhost_flags[@]}"

prep_kitten() { prep_agnhost "$1" && install -m 0644 "$images_src/kitten/html/"* "$1/"; }
prep_nautilus() { prep_agnhost "$1" && install -m 0644 "$images_src/nautilus/html/"* "$1/"; }
image "$e2e/kitten:1.8" kitten-1.8.tar prep_kitten "${agnhost_flags[@]/#pause/test-webserver}"
image "$e2e/nautilus:1.8" nautilus-1.8.tar prep_nautilus "${agnhost_flags[@]/#pause/test-webserver}"

# As upstream's image (Docker's busybox): every applet in /bin, so /bin/sh is busybox ash, whose
# messages the specs match exactly ("/bin/sh: can't create /file: Read-only file system"), and
# /bin/sysctl exists. Dynamically linked (NSS needs glibc's shared libraries), so the loader
# and libraries `ldd` names come from the host, as in k8sd's base image.
prep_busybox() {
  local applet lib
  mkdir -p "$1"/{bin,etc,root,home,proc,sys,dev,run,tmp,var/tmp}
  chmod 1777 "$1/tmp" "$1/var/tmp"
  chmod 0700 "$1/root"
  install -m 0755 "$busybox_bin" "$1/bin/busybox"
  for applet in $("$1/bin/busybox" --list); do
    [[ -e "$1/bin/$applet" ]] || ln -s busybox "$1/bin/$applet"
  done
  for lib in $(ldd "$1/bin/busybox" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }'); do
    mkdir -p "$1$(dirname "$lib")"
    cp -L "$lib" "$1$lib"
  done
  [[ -e "$1/lib64/ld-linux-x86-64.so.2" ]] || return 1
  printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$1/etc/passwd"
  printf 'root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n' >"$1/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$1/etc/nsswitch.conf"
  # The kubelet mounts its own /etc/hosts and /etc/resolv.conf over these.
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$1/etc/hosts"
  : >"$1/etc/resolv.conf"
}
image "$e2e/busybox:1.37.0-1" busybox-1.37.0-1.tar prep_busybox --cmd sh

prep_dnsutils() { copy_rootfs dnsutils "$1" && install -m 0755 "$coredns" "$1/coredns"; }
image "$e2e/glibc-dns-testing:2.0.0" glibc-dns-testing-2.0.0.tar prep_dnsutils --cmd bash

prep_nginx() {
  copy_rootfs nginx "$1"
  ln -sfn ../sites-available/default "$1/etc/nginx/sites-enabled/default"
  mkdir -p "$1/var/www/html" "$1/var/lib/nginx" "$1/var/log/nginx"
  cp "$1/usr/share/nginx/html/index.html" "$1/var/www/html/index.html"
  # As upstream's nginx image: logs go to the container's output.
  ln -sfn /dev/stdout "$1/var/log/nginx/access.log"
  ln -sfn /dev/stderr "$1/var/log/nginx/error.log"
}
nginx_flags=(--cmd nginx --cmd -g --cmd 'daemon off;' --expose 80)
image "$e2e/nginx:1.15-4" nginx-1.15-4.tar prep_nginx "${nginx_flags[@]}"
image "$e2e/nginx:1.27-0" nginx-1.27-0.tar prep_nginx "${nginx_flags[@]}"

prep_nonewprivs() {
  copy_rootfs base "$1"
  mkdir -p "$1/usr/local/bin"
  install -m 4755 "$work/bin/nnp" "$1/usr/local/bin/nnp"
}
image "$e2e/nonewprivs:1.4" nonewprivs-1.4.tar prep_nonewprivs --cmd nnp

prep_nonroot() { copy_rootfs base "$1"; }
image "$e2e/nonroot:1.5" nonroot-1.5.tar prep_nonroot --cmd bash --user 1234

# Static Go programs need only a few files around them.
minimal_etc() {
  mkdir -p "$1"/{etc,tmp,proc,sys,dev}
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$1/etc/nsswitch.conf"
}
prep_sample_apiserver() { minimal_etc "$1" && install -m 0755 "$work/bin/sample-apiserver" "$1/sample-apiserver"; }
image "$e2e/sample-apiserver:1.29.2" sample-apiserver-1.29.2.tar prep_sample_apiserver --entrypoint /sample-apiserver

prep_etcd() {
  minimal_etc "$1"
  mkdir -p "$1/usr/local/bin" "$1/var/lib/etcd"
  install -m 0755 "$work/bin/etcd" "$1/usr/local/bin/etcd"
}
image registry.k8s.io/etcd:3.6.8-0 etcd-3.6.8-0.tar prep_etcd --cmd /usr/local/bin/etcd

prep_pause() { install -m 0755 "$work/bin/pause" "$1/pause"; }
image registry.k8s.io/pause:3.10.2 pause-3.10.2.tar prep_pause --entrypoint /pause

printf '%s\n' "${tsv[@]}" >"$out/images.tsv.tmp"
mv -f "$out/images.tsv.tmp" "$out/images.tsv"
log "$(wc -l <"$out/images.tsv") images in $out ($(du -ch "$out"/*.tar | tail -n 1 | cut -f1))"
echo "$out"
