#!/usr/bin/env bash
# Sets up this machine and runs every k8sd test: unit and integration tests (cargo test) and
# the end-to-end suites under tests/e2e/. Run as root on a fresh or reused Debian 12 machine.
#
# Usage: scripts/test.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
# Rust build output in a fixed place outside the checkout, so a reused machine builds warm.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/cargo-target}

step() { printf '\n==> [%ss elapsed] %s\n' "$SECONDS" "$*"; }

step "host dependencies"
scripts/setup-host.sh

# The Go builds (kubebin, the runtime, the add-ons, the conformance suite) and the Rust builds
# share nothing until the images are packed, so they run side by side: on a cold machine each
# chain leaves one core idle much of the time (cargo waits on one big crate and on links), and
# overlapping them saves minutes (docs/benchmarks.md, "Cold build"). On a warm machine every Go
# build is a stamp check. The Go chain's output goes to its own log, shown if it fails.
go_log=/tmp/k8sd-go-builds.log
go_out=/tmp/k8sd-go-builds.env
go_builds() {
  set -euo pipefail
  local kubebin runtime
  step "kubebin (upstream Kubernetes, pinned in assets/kube/VERSION)"
  kubebin=$(scripts/build-kube.sh | tail -n 1)
  step "container runtime (containerd 2 and runc, pinned in assets/runtime/versions.env)"
  runtime=$(scripts/build-runtime.sh | tail -n 1)
  step "add-on binaries (CoreDNS, metrics-server, local-path-provisioner; assets/addons/versions.env)"
  scripts/build-addons.sh >/dev/null
  step "conformance suite (e2e.test and ginkgo; tests/e2e/conformance-subset.sh uses them)"
  scripts/build-conformance-suite.sh >/dev/null
  printf 'K8SD_KUBEBIN=%q\nK8SD_RUNTIME_DIR=%q\n' "$kubebin" "$runtime" >"$go_out"
}
rm -f "$go_out"
step "Go builds, in the background (log: $go_log)"
go_builds >"$go_log" 2>&1 &
go_pid=$!

step "k8sd"
cargo build --release --bins
# The binary under test, copied out of cargo's way: the previous release is built later in the
# same target dir (in the datastore lane, below), and cargo puts that binary at release/k8sd too.
# Still named k8sd: scripts/build-snap.sh takes the file named k8sd from K8SD_BIN's directory.
mkdir -p "$CARGO_TARGET_DIR/under-test"
cp -p "$CARGO_TARGET_DIR/release/k8sd" "$CARGO_TARGET_DIR/under-test/k8sd"
export K8SD_BIN="$CARGO_TARGET_DIR/under-test/k8sd"

failed=0
step "style: cargo fmt --check (cargo clippy runs beside the tests, below)"
if ! cargo fmt --check; then
  echo "style FAILED: run 'cargo fmt' and commit the result"
  failed=$((failed + 1))
fi

step "compile the tests (cargo test --no-run)"
cargo test --release --no-run --quiet

step "waiting for the Go builds"
if ! wait "$go_pid"; then
  cat "$go_log"
  echo "test.sh: a Go build failed (its output is above, and in $go_log)" >&2
  exit 1
fi
cat "$go_log"
# shellcheck disable=SC1090
. "$go_out"
export K8SD_KUBEBIN K8SD_RUNTIME_DIR

step "images"
scripts/build-images.sh >/dev/null

step "cargo test"
rm -f /tmp/k8sd-e2e-*.log
# set +e: under pipefail a failed test would end this script here, and the end-to-end suites
# would never run (a failing unit test hid every e2e result).
set +e
cargo test --release --no-fail-fast 2>&1 | tee /tmp/k8sd-cargo-test.log
rc=${PIPESTATUS[0]}
set -e

step "etcd API and differential tests again, with the datastore as a Raft member"
set +e
K8SD_TEST_RAFT=1 cargo test --release --no-fail-fast --test integration -- etcd_api:: etcd_differential:: 2>&1 \
  | tee /tmp/k8sd-cargo-test-raft.log
rc_raft=${PIPESTATUS[0]}
set -e
# A filter that matches nothing passes with "running 0 tests": a renamed module must fail the
# run rather than drop out of it.
if grep -q '^running 0 tests' /tmp/k8sd-cargo-test-raft.log; then
  echo "FAILED: the Raft-member pass ran no test; etcd_api:: or etcd_differential:: was renamed"
  rc_raft=1
fi
((rc == 0)) && rc=$rc_raft

# cargo clippy checks every dependency in its own (check) mode, which nothing else here builds:
# about 200 s on a cold machine and 80 s on a warm one, while both cores were busy with the
# builds. Beside the test suites, which leave a core mostly idle, it costs the run little. Its
# own target dir, because cargo holds a target dir's lock for a whole build: in the shared one
# it would make every cargo command below wait for it, and it shares no unit with them anyway.
clippy_log=/tmp/k8sd-clippy.log
step "cargo clippy -D warnings (every target), in the background (log: $clippy_log)"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-clippy" cargo clippy --release --all-targets --quiet -- -D warnings \
  >"$clippy_log" 2>&1 &
clippy_pid=$!

# The conformance images (about 220 s cold, a stamp check warm) are built beside the first
# suites of the e2e lane; the two suites that run them wait for the build (below). After
# scripts/build-images.sh, not beside it: both fill the same busybox and Debian package caches.
conf_images_log=/tmp/k8sd-build-conformance-images.log
step "conformance images, in the background (log: $conf_images_log; tests/e2e/conformance-images.sh and conformance-subset.sh wait for them)"
scripts/build-conformance-images.sh >"$conf_images_log" 2>&1 &
conf_images_pid=$!

# The test phase runs in three lanes, two of them in the background beside the third. Their
# suites mostly wait (for clusters to form, for pods, for kube-apiserver's once-a-minute reload
# of the encryption key file), so one lane alone leaves a core idle; side by side they took the
# test phase of a cold run from 2283 s to about 1500 s with two lanes (docs/benchmarks.md, "Cold
# build"), and a third lane took the longest off the critical path. They share nothing: the
# storage suite's servers listen on loopback ports the kernel picks, the linearizability check
# owns its own network namespaces (10.211.x), and every e2e suite runs in namespaces, bridges and
# subnets of its own (ha: k8sd-ha*, 10.210.100; secrets: k8sd-sk*, 10.216.0; upgrade: k8sd-up*,
# 10.215.0; the rest 10.210.x, 10.213.0 and 10.214.0). A background lane's output goes to its
# own log; the failures are counted when every lane is done.
#
# lane_run LOG WHAT COMMAND...: one suite, its whole output in LOG; on failure the tail of LOG is
# printed, since the CI log is all a failed run leaves behind.
lane_run() {
  local log=$1 what=$2
  shift 2
  step "$what"
  if "$@" >"$log" 2>&1; then
    tail -n 1 "$log"
    return 0
  fi
  tail -n 60 "$log"
  echo "FAILED: $what (whole log: $log)"
  return 1
}
# The datastore lane: Kubernetes' storage tests on 1 node and on 3 nodes, then the
# linearizability check.
datastore_log=/tmp/k8sd-datastore-suites.log
datastore_lane() {
  local failed=0
  lane_run /tmp/k8sd-e2e-storage-suite.log \
    "Kubernetes' storage tests (k8s.io/apiserver etcd3 and cacher) against k8sd" \
    tests/storage-suite/run.sh || failed=$((failed + 1))
  lane_run /tmp/k8sd-e2e-storage-suite-3.log \
    "Kubernetes' storage tests against a 3-node cluster, requests spread over all nodes" \
    env K8SD_TEST_CLUSTER=3 tests/storage-suite/run.sh || failed=$((failed + 1))
  lane_run /tmp/k8sd-e2e-robustness.log \
    "Linearizability and watch guarantees of a 3-node cluster under 100 faults (kill -9, partitions)" \
    tests/robustness/run.sh || failed=$((failed + 1))
  step "datastore lane done"
  return "$failed"
}
# The clusters lane: the three longest multi-node e2e suites (about 550, 490 and 420 s on a cold
# run), which in the e2e lane would make it the critical path by itself.
clusters_log=/tmp/k8sd-cluster-suites.log
lane3_e2e=(ha secrets upgrade)
clusters_lane() {
  local failed=0 t
  # The previous release, which tests/e2e/upgrade.sh (this lane's last suite) upgrades from,
  # builds beside the first suites (a stamp check warm). In the shared target dir, so every
  # dependency the two commits share is compiled once and a cold machine builds only its crate;
  # off the builds' critical path, where it cost a cold run about 400 s of a busy core.
  local previous_log=/tmp/k8sd-build-previous.log previous_pid
  step "the previous release of k8sd, in the background (assets/upgrade/previous.env; log: $previous_log)"
  scripts/build-previous.sh >"$previous_log" 2>&1 &
  previous_pid=$!
  for t in "${lane3_e2e[@]}"; do
    if [[ $t == upgrade ]]; then
      step "waiting for the previous release's build"
      if ! wait "$previous_pid"; then
        tail -n 60 "$previous_log"
        echo "FAILED: scripts/build-previous.sh (whole log: $previous_log)"
        failed=$((failed + 1))
      fi
    fi
    lane_run "/tmp/k8sd-e2e-$t.log" "e2e: tests/e2e/$t.sh" "tests/e2e/$t.sh" || failed=$((failed + 1))
  done
  step "clusters lane done"
  return "$failed"
}
step "datastore lane, in the background (log: $datastore_log)"
datastore_lane >"$datastore_log" 2>&1 &
datastore_pid=$!
step "clusters lane (${lane3_e2e[*]}), in the background (log: $clusters_log)"
clusters_lane >"$clusters_log" 2>&1 &
clusters_pid=$!

# The e2e lane, in the foreground: every other suite under tests/e2e/.
for t in tests/e2e/*.sh; do
  [[ $(basename "$t") == lib.sh ]] && continue   # sourced by the suites, not run
  # shellcheck disable=SC2076
  [[ -x $t && " ${lane3_e2e[*]} " == *" $(basename "$t" .sh) "* ]] && continue   # the clusters lane runs it
  if [[ ! -x "$t" ]]; then
    echo "e2e FAILED: $t is not executable (chmod +x it; a suite that cannot run must not pass silently)"
    failed=$((failed + 1))
    continue
  fi
  if [[ $(basename "$t") == conformance-* && -n $conf_images_pid ]]; then
    step "waiting for the conformance images"
    if ! wait "$conf_images_pid"; then
      tail -n 60 "$conf_images_log"
      echo "FAILED: scripts/build-conformance-images.sh (whole log: $conf_images_log)"
      failed=$((failed + 1))
    fi
    conf_images_pid=""
  fi
  step "e2e: $t"
  log=/tmp/k8sd-e2e-$(basename "$t" .sh).log
  if ! "$t" 2>&1 | tee "$log"; then
    echo "e2e FAILED: $t"
    failed=$((failed + 1))
  fi
done

# The Raft-member pass of the storage tests runs last in this lane: the datastore lane's first
# suite compiles the same upstream test binaries, and run at the same time on a cold machine
# both compiled them (about 480 s each instead of 265 s and 105 s). Its servers listen on ports
# the kernel picks and its scratch dir is its own (the datastore lane's storage tests clear
# theirs), so it shares nothing with the other suites.
if ! lane_run /tmp/k8sd-e2e-storage-suite-raft.log \
  "Kubernetes' storage tests again, with the datastore as a Raft member" \
  env K8SD_TEST_RAFT=1 K8SD_SUITE_DIR=/var/tmp/k8sd-storage-suite-raft tests/storage-suite/run.sh; then
  failed=$((failed + 1))
fi

for lane in datastore clusters; do
  step "waiting for the $lane lane"
  pid_var=${lane}_pid log_var=${lane}_log
  lane_failed=0
  wait "${!pid_var}" || lane_failed=$?
  cat "${!log_var}"
  failed=$((failed + lane_failed))
done

step "waiting for cargo clippy"
if ! wait "$clippy_pid"; then
  cat "$clippy_log"
  echo "style FAILED: cargo clippy reported the warnings above"
  failed=$((failed + 1))
fi

# One closing line over every runner: cargo's "test result" lines and the e2e tallies.
totals=$(cat /tmp/k8sd-cargo-test.log /tmp/k8sd-cargo-test-raft.log /tmp/k8sd-e2e-*.log 2>/dev/null | awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { printf "%d %d", p, f }')
read -r total_passed total_failed <<<"$totals"
echo "test.sh: finished in ${SECONDS}s"
if ((rc != 0 || failed != 0)); then
  echo "FAILED: cargo test exit $rc, $failed end-to-end suite(s) failed"
  echo "$total_passed passed, $((total_failed > 0 ? total_failed : 1)) failed"
  exit 1
fi
echo "$total_passed passed, $total_failed failed"
