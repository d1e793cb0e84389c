#!/usr/bin/env bash
# CI's k8s job: renders deploy/k8s with kubectl's built-in kustomize and
# validates every object offline (deploy/k8s/validate.sh). kubectl with
# kustomize v5 must be on PATH (K8S_KUSTOMIZE=require; the workflow installs
# the pinned kubectl): here a missing one is a failure, not a skip.
#   ci/k8s.sh [BUILD_DIR=build]
set -euo pipefail
cd "$(dirname "$0")/.."
export K8S_KUSTOMIZE="${K8S_KUSTOMIZE:-require}"
exec deploy/k8s/validate.sh "${1:-build}"
