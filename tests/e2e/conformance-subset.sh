#!/usr/bin/env bash
# A representative subset of Kubernetes' [Conformance] suite (scripts/conformance.sh) on a
# cluster of one control-plane node and one worker: cluster DNS, Services, an admission webhook
# and CRD conversion (kube-apiserver calling pods through a Service), watch resumption, and
# Secrets and ConfigMaps in environment variables (the test images' shell). The full suite is
# `scripts/conformance.sh`; its results are in docs/conformance.md.
# The last line is conformance.sh's tally: one check per spec that ran.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
focus='\[sig-network\] DNS should provide DNS for services '
focus+='|\[sig-network\] Services should serve a basic endpoint from pods '
focus+='|AdmissionWebhook \[Privileged:ClusterAdmin\] should be able to deny pod and configmap creation '
focus+='|CustomResourceConversionWebhook \[Privileged:ClusterAdmin\] should be able to convert from CR v1 to CR v2 '
focus+='|Watchers should be able to restart watching from the last resource version observed by the previous watch '
focus+='|\[sig-node\] Secrets should be consumable from pods in env vars '
focus+='|\[sig-node\] ConfigMap should be consumable via the environment '
exec "$repo/scripts/conformance.sh" --no-build --procs 3 --focus "$focus" --out "/var/tmp/k8sd-e2e-conformance-subset"
