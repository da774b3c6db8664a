#!/usr/bin/env bash
# Runs Kubernetes' own storage tests (k8s.io/apiserver pkg/storage/etcd3 and pkg/storage/cacher)
# against a single-node `k8sd datastore`, or a 3-node cluster per test.
#
# How: the k8s.io/apiserver module pinned in go.mod (matching assets/kube/VERSION) is fetched
# through the Go module proxy and checked against go.sum, copied into a scratch dir outside git,
# and its pkg/storage/etcd3/testserver/test_server.go is replaced by ours (testserver/), which
# starts $K8SD_BIN instead of an embedded etcd. Nothing upstream is committed here, and no test
# file is patched. kine does the same (scripts/test-helpers build-apiserver-tests).
#
# Usage: tests/storage-suite/run.sh [--report] [--report-only] [-run REGEX] [PACKAGE...]
#   --report       also write docs/compatibility.md from this run (with K8SD_TEST_CLUSTER=3: only
#                  its "3-node cluster" section; a single-node report keeps that section)
#   --report-only  rewrite docs/compatibility.md from the last run's results (of the same mode);
#                  run nothing
#   -run REGEX     only run matching tests (as go test -run); implies no --report
#   PACKAGE        package patterns relative to k8s.io/apiserver
#                  (default: ./pkg/storage/etcd3/... ./pkg/storage/cacher/...)
#
# Environment:
#   K8SD_BIN        k8sd binary (default: $CARGO_TARGET_DIR/release/k8sd, else target/release/k8sd)
#   K8SD_SUITE_DIR  scratch dir (default /var/tmp/k8sd-storage-suite); holds the upstream copy,
#                   results.json (results-cluster3.json) and one log per k8sd server under logs/
#   K8SD_TEST_CLUSTER  1 (default): one server per test; 3: a 3-node Raft cluster per test, the
#                   client spread over all three nodes (see testserver/test_server.go)
#   K8SD_TEST_RAFT  1: the single server is a Raft member (a cluster of one)
#   K8SD_SUITE_TIMEOUT  go test -timeout per package (default 30m, 60m with K8SD_TEST_CLUSTER=3)
#   GO              go binary (default: go on PATH, else /usr/local/go/bin/go)
#   GOMODCACHE, GOCACHE, GOFLAGS, GOTOOLCHAIN  as usual; defaults match scripts/build-kube.sh
#
# The last line of output is exactly "N passed, N failed" (top-level tests); the exit status is
# non-zero if any test or package failed, or a prerequisite is missing.
set -euo pipefail

die() { echo "storage-suite: error: $*" >&2; exit 2; }
log() { echo "storage-suite: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

report=0 report_only=0 run_re="" pkgs=()
while (($#)); do
  case "$1" in
    --report) report=1 ;;
    --report-only) report_only=1 ;;
    -run|--run) [[ $# -ge 2 ]] || die "-run needs a regex"; run_re=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) pkgs+=("$1") ;;
  esac
  shift
done
((${#pkgs[@]})) || pkgs=(./pkg/storage/etcd3/... ./pkg/storage/cacher/...)
if [[ -n "$run_re" && $report == 1 ]]; then
  die "--report needs the whole suite; drop -run"
fi

# --- prerequisites: fail loudly ---------------------------------------------------------------
GO=${GO:-$(command -v go || true)}
[[ -n "$GO" ]] || GO=/usr/local/go/bin/go
[[ -x "$GO" ]] || die "no Go toolchain: install Go (see scripts/setup-host.sh) or set GO=/path/to/go"
export GOMODCACHE=${GOMODCACHE:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/mod}
export GOCACHE=${GOCACHE:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/go/build}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS=${GOFLAGS:--mod=mod}

scratch=${K8SD_SUITE_DIR:-/var/tmp/k8sd-storage-suite}
cluster=${K8SD_TEST_CLUSTER:-1}
case "$cluster" in
  1) results="$scratch/results.json" meta="$scratch/results.meta"
     report_cmd="tests/storage-suite/run.sh --report" default_timeout=30m ;;
  3) results="$scratch/results-cluster3.json" meta="$scratch/results-cluster3.meta"
     report_cmd="K8SD_TEST_CLUSTER=3 tests/storage-suite/run.sh --report" default_timeout=60m ;;
  *) die "K8SD_TEST_CLUSTER=$cluster: use 1 or 3" ;;
esac
export K8SD_TEST_CLUSTER=$cluster
patches="$here/PATCHES.md"

kube_version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
[[ "$kube_version" =~ ^v1\.([0-9]+\.[0-9]+)$ ]] || die "assets/kube/VERSION holds '$kube_version', expected v1.X.Y"
want_apiserver="v0.${BASH_REMATCH[1]}"
apiserver_version=$(cd "$here" && "$GO" list -m -f '{{.Version}}' k8s.io/apiserver) \
  || die "cannot resolve k8s.io/apiserver in $here/go.mod"
[[ "$apiserver_version" == "$want_apiserver" ]] \
  || die "go.mod pins k8s.io/apiserver $apiserver_version but assets/kube/VERSION $kube_version needs $want_apiserver; run: (cd tests/storage-suite && go get k8s.io/apiserver@$want_apiserver && go mod tidy)"

summarize() {
  local md_args=()
  if ((report)); then md_args=(-md "$repo/docs/compatibility.md"); fi
  # shellcheck disable=SC1090
  source "$meta"
  (cd "$here" && "$GO" build -o "$scratch/report" ./report) || die "cannot build the report tool"
  "$scratch/report" summary -json "$results" "${md_args[@]}" \
    -apiserver "$apiserver_version" -kube "$kube_version" -commit "$k8sd_commit" \
    -go "$go_version" -compile-time "$compile_time" -run-time "$run_time" \
    -patches "$patches" -src "$scratch/apiserver" -command "$report_cmd" -cluster "$cluster"
}

if ((report_only)); then
  [[ -s "$results" && -s "$meta" ]] || die "no previous results in $scratch: run $report_cmd"
  report=1
  summarize
  exit
fi

if [[ -z "${K8SD_BIN:-}" ]]; then
  K8SD_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/k8sd
fi
[[ -x "$K8SD_BIN" ]] || die "no k8sd binary at $K8SD_BIN: run 'cargo build --release --bin k8sd' or set K8SD_BIN"
K8SD_BIN=$(cd "$(dirname "$K8SD_BIN")" && pwd)/$(basename "$K8SD_BIN")
export K8SD_BIN

# --- the upstream module, verified against go.sum ----------------------------------------------
log "fetching k8s.io/apiserver@$apiserver_version through the module proxy"
src=$(cd "$here" && "$GO" mod download -json "k8s.io/apiserver@$apiserver_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -n "$src" && -d "$src" ]] || die "go mod download gave no directory for k8s.io/apiserver@$apiserver_version"
(cd "$here" && "$GO" mod verify >/dev/null) || die "module cache does not match go.sum"

mkdir -p "$scratch"
work="$scratch/apiserver"
rm -rf "$work" "$scratch/logs"
cp -R "$src" "$work"
chmod -R u+w "$work"
upstream_ts="$work/pkg/storage/etcd3/testserver/test_server.go"
[[ -f "$upstream_ts" ]] || die "k8s.io/apiserver@$apiserver_version has no $upstream_ts; the swap needs updating"
cp "$here/testserver/test_server.go" "$upstream_ts"
# Upstream patches (none today) go here, each documented in PATCHES.md with its reason.

export K8SD_SUITE_LOG_DIR="$scratch/logs"
go_version=$("$GO" env GOVERSION)
k8sd_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
  k8sd_commit="$k8sd_commit+dirty"
fi

# --- compile, then run ---------------------------------------------------------------------------
# Compiling every test binary first (running nothing) keeps the two costs apart in the timings.
log "compiling test binaries for ${pkgs[*]}"
t0=$SECONDS
(cd "$work" && "$GO" test -count=1 -run '^$' "${pkgs[@]}" >/dev/null) \
  || die "upstream tests do not compile against our testserver (see above)"
compile_time="$((SECONDS - t0))s"
log "compiled in $compile_time"

log "running against $K8SD_BIN, $cluster node(s) per test (server logs in $K8SD_SUITE_LOG_DIR)"
run_args=(-count=1 -json -timeout "${K8SD_SUITE_TIMEOUT:-$default_timeout}")
if [[ -n "$run_re" ]]; then
  run_args+=(-run "$run_re")
  # A partial run must not be mistaken for the suite by --report-only.
  results="${results%.json}-partial.json" meta="${meta%.meta}-partial.meta"
fi
mkdir -p "$scratch"
(cd "$here" && "$GO" build -o "$scratch/report" ./report) || die "cannot build the report tool"
t0=$SECONDS
set +e
(cd "$work" && "$GO" test "${run_args[@]}" "${pkgs[@]}" 2>&1) | "$scratch/report" stream -json "$results"
set -e
run_time="$((SECONDS - t0))s"
log "ran in $run_time"

cat > "$meta" <<EOF
k8sd_commit='$k8sd_commit'
go_version='$go_version'
compile_time='$compile_time'
run_time='$run_time'
EOF
summarize
