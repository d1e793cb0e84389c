#!/usr/bin/env bash
# CI's k8s job: renders deploy/k8s and validates every object offline
# (deploy/k8s/validate.sh), and compares the render with kubectl's built-in
# kustomize, which must be on PATH (K8S_KUSTOMIZE=require; the workflow
# installs the pinned kubectl). K8S_KUSTOMIZE=auto compares only when kubectl
# or kustomize is there.
#   ci/k8s.sh [BUILD_DIR=build]
set -euo pipefail
cd "$(dirname "$0")/.."
export K8S_KUSTOMIZE="${K8S_KUSTOMIZE:-require}"
exec deploy/k8s/validate.sh "${1:-build}"
