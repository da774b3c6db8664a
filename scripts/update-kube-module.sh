#!/usr/bin/env bash
# Regenerates the go.mod and go.sum of a wrapper module around k8s.io/kubernetes at the version in
# assets/kube/VERSION (the one pin):
#   scripts/update-kube-module.sh              assets/kube: kubebin, the components k8sd supervises
#   scripts/update-kube-module.sh conformance  assets/conformance: the conformance suite (e2e.test),
#                                              ginkgo, and the Go-built test images (agnhost,
#                                              sample-apiserver, etcd), recorded as `tool` lines
#
# A plain `require k8s.io/kubernetes` does not build: upstream requires every staging module at
# the placeholder v0.0.0 and satisfies it with replaces into ./staging, and a dependency's
# replaces are ignored. So we replace each staging module with its published v0.<minor>.<patch>.
# Run this after changing VERSION, then commit VERSION, go.mod and go.sum together.
set -euo pipefail

die() { echo "update-kube-module: error: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
which=${1:-kube}
case "$which" in
  kube) modname=k8sd.local/kubebin ;;
  conformance) modname=k8sd.local/conformance ;;
  *) die "unknown module '$which' (usage: $0 [kube | conformance])" ;;
esac
version=$(tr -d '[:space:]' < "$repo/assets/kube/VERSION")
mkdir -p "$repo/assets/$which"
cd "$repo/assets/$which"
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "VERSION holds '$version', expected v1.MINOR.PATCH"
minor=${BASH_REMATCH[1]}
staging_version="v0.${version#v1.}"

go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
cache=${K8SD_CACHE_DIR:-/var/cache/k8sd}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOTOOLCHAIN=local GOFLAGS=-mod=mod

staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller"
# New staging modules in 1.36.
if (( minor >= 36 )); then staging="$staging cri-streaming streaming"; fi

rm -f go.mod go.sum
"$go" mod init "$modname" 2>/dev/null
"$go" mod edit -go=1.26 -require="k8s.io/kubernetes@$version"
for m in $(printf "%s\n" $staging | sort); do "$go" mod edit -replace="k8s.io/$m=k8s.io/$m@$staging_version"; done
if [[ "$which" == conformance ]]; then
  # The programs the conformance run builds. ginkgo's CLI at the version kubernetes requires, so
  # the runner and the suite agree on the reporting protocol.
  "$go" mod edit -tool=github.com/onsi/ginkgo/v2/ginkgo -tool=k8s.io/kubernetes/test/images/agnhost \
    -tool=k8s.io/sample-apiserver -tool=go.etcd.io/etcd/server/v3
fi
"$go" mod tidy || die "go mod tidy failed for k8s.io/kubernetes $version (is every k8s.io/*@$staging_version served by $("$go" env GOPROXY)?)"
if [[ "$which" == conformance ]]; then
  # e2e.test is the test binary of a dependency's package; tidy does not record the modules only
  # its tests import, so resolve them once here and keep their sums in go.sum.
  "$go" list -test -deps k8s.io/kubernetes/test/e2e >/dev/null \
    || die "cannot resolve the test dependencies of k8s.io/kubernetes/test/e2e"
fi
echo "assets/$which/go.mod now pins k8s.io/kubernetes $version with $(grep -c '^replace\|=> k8s.io' go.mod) staging replaces" >&2
