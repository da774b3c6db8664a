#!/usr/bin/env bash
# Sets up this machine and brings up a single-node k8sd cluster: host packages, kubebin (the
# upstream Kubernetes components), the container runtime (containerd 2 and runc), the add-on
# binaries, k8sd itself, the local images, then `k8sd init`.
# Idempotent: on an initialised node it only reports its status.
#
# Usage: scripts/up.sh [k8sd init flags...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${K8SD_CACHE_DIR:-/var/cache/k8sd}/cargo-target}

scripts/setup-host.sh
K8SD_KUBEBIN=$(scripts/build-kube.sh | tail -n 1)
# k8sd finds the runtime in the build cache by default (or $K8SD_RUNTIME_DIR).
scripts/build-runtime.sh >/dev/null
scripts/build-addons.sh >/dev/null
cargo build --release --bin k8sd
install -m 0755 "$CARGO_TARGET_DIR/release/k8sd" /usr/local/bin/k8sd
ln -sf "$K8SD_KUBEBIN" /usr/local/bin/kubebin
K8SD_BIN=/usr/local/bin/k8sd scripts/build-images.sh >/dev/null

if [[ -e /var/lib/k8sd/node.yaml ]]; then
  echo "this node is already initialised:"
  exec k8sd status
fi
exec k8sd init "$@"
