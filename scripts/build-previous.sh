#!/usr/bin/env bash
# Builds the previous release of k8sd (assets/upgrade/previous.env) from this repository's git
# history, for tests/e2e/upgrade.sh.
#
#   output  ${K8SD_CACHE_DIR:-/var/cache/k8sd}/previous/<commit>/k8sd  (+ k8sd.stamp)
#
# The source is `git archive` of the pinned commit, so nothing of the checkout leaks in. The
# binary is reused while its stamp (commit, rustc version, recipe revision) matches and it
# reports the pinned version: a warm run is a check. A commit missing from the clone's history
# (a shallow clone) fails loudly; nothing is skipped.
#
# CARGO_TARGET_DIR is where it compiles (default: a private target dir beside the output,
# removed afterwards). Given the main build's target dir, every dependency the two commits
# share is compiled once: a registry crate's artifacts do not depend on which checkout asks.
# On success the last line of stdout is the binary's path.
#
# Usage: scripts/build-previous.sh [--check]
#   --check  build nothing: print the path if the cached binary is up to date, else exit 1
set -euo pipefail

# Bump when the build command below changes, so stale binaries are rebuilt.
RECIPE_REV=2

die() { echo "build-previous: error: $*" >&2; exit 1; }
log() { echo "build-previous: $*" >&2; }

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: $0 [--check])" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=../assets/upgrade/previous.env
. "$repo/assets/upgrade/previous.env"
[[ $PREVIOUS_COMMIT =~ ^[0-9a-f]{40}$ ]] ||
  die "PREVIOUS_COMMIT in assets/upgrade/previous.env must be a full 40-digit commit hash, not '$PREVIOUS_COMMIT'"
[[ -n ${PREVIOUS_VERSION:-} ]] || die "PREVIOUS_VERSION is missing from assets/upgrade/previous.env"

out=${K8SD_CACHE_DIR:-/var/cache/k8sd}/previous/$PREVIOUS_COMMIT
bin=$out/k8sd
stamp="commit=$PREVIOUS_COMMIT version=$PREVIOUS_VERSION recipe=$RECIPE_REV rustc=$(rustc --version)"

up_to_date() {
  [[ -x $bin && -f $bin.stamp && $(cat "$bin.stamp") == "$stamp" ]] || return 1
  [[ $("$bin" --version 2>/dev/null) == "k8sd $PREVIOUS_VERSION" ]]
}
if up_to_date; then
  echo "$bin"
  exit 0
fi
((check == 0)) || die "$bin is missing or stale (stamp: $stamp)"

git -C "$repo" cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null ||
  die "commit $PREVIOUS_COMMIT (assets/upgrade/previous.env) is not in the history of $repo; \
fetch it (\`git -C $repo fetch --unshallow\` for a shallow clone) and run this again"

mkdir -p "$out"
src=$out/src
rm -rf "$src" "$bin" "$bin.stamp"
mkdir -p "$src"
log "unpacking $PREVIOUS_COMMIT into $src"
# -m: the files get the time of extraction, not the commit's. Cargo decides by mtime whether a
# path package's build is fresh, and a target dir holding a build of the same package version
# from another checkout would otherwise pass for this commit's.
git -C "$repo" archive --format=tar "$PREVIOUS_COMMIT" | tar -x -m -C "$src"

private_target=0
# A shared target dir holds the checkout's own build. Cargo names a package's artifacts by its
# name and version, not by its checkout, so a previous release of the same version would
# overwrite them (and the checkout's build would then pass for fresh): build it apart.
this_version=$(awk -F'"' '/^version *=/ { print $2; exit }' "$repo/Cargo.toml")
if [[ -n ${CARGO_TARGET_DIR:-} && $this_version == "$PREVIOUS_VERSION" ]]; then
  log "this checkout is k8sd $this_version too: not sharing $CARGO_TARGET_DIR"
  unset CARGO_TARGET_DIR
fi
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
  export CARGO_TARGET_DIR=$out/target
  private_target=1
fi
# In a shared target dir, cargo puts this build's binary where the checkout's own is,
# release/k8sd. Keep a copy of the checkout's and put it back at the end whatever happens:
# cargo does not link a binary there again while the checkout's build is fresh, so the next
# `cargo build` would leave the previous release's in its place. A copy, not a hard link, since
# a file cargo rewrote in place would change under a link too (it does so with dep-info files,
# which nothing reads back).
kept=""
restore_kept() {
  if [[ -n $kept ]]; then
    mv -f "$kept" "$CARGO_TARGET_DIR/release/k8sd"
    kept=""
  fi
}
if ((private_target == 0)) && [[ -e $CARGO_TARGET_DIR/release/k8sd ]]; then
  kept=$CARGO_TARGET_DIR/release/.k8sd.kept-$$
  cp -p "$CARGO_TARGET_DIR/release/k8sd" "$kept"
  trap restore_kept EXIT
fi
log "building k8sd $PREVIOUS_VERSION (cargo build --release --locked, target $CARGO_TARGET_DIR)"
start=$SECONDS
# From inside the source: cargo reads .cargo/config.toml from the working directory up, and the
# commit's own settings (its SQLite flags) are the ones it was built and tested with.
(cd "$src" && cargo build --release --locked --bin k8sd >&2)
cp "$CARGO_TARGET_DIR/release/k8sd" "$bin.tmp"
restore_kept
got=$("$bin.tmp" --version) || die "the fresh binary $bin.tmp failed to run"
[[ $got == "k8sd $PREVIOUS_VERSION" ]] ||
  die "the binary built from $PREVIOUS_COMMIT reports '$got', not 'k8sd $PREVIOUS_VERSION'; fix assets/upgrade/previous.env"
mv "$bin.tmp" "$bin"
echo "$stamp" > "$bin.stamp"
rm -rf "$src"
((private_target == 0)) || rm -rf "$CARGO_TARGET_DIR"
log "built in $((SECONDS - start)) s"
echo "$bin"
