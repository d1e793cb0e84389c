#!/usr/bin/env bash
# CI's deploy job: deploys this commit's images to the cluster of KUBECONFIG,
# by digest (as ci/push_images.sh pushed them):
#   1. deploy/k8s/release.sh prod renders and validates the release into
#      build/release (service.yaml, indexing.yaml);
#   2. kubectl diff, then kubectl apply -f of service.yaml, and of the objects
#      of indexing.yaml other than its Jobs (ServiceAccount, volumes, the admin
#      CronJob with the new image); the Jobs run only through the reindex
#      workflow (ci/reindex.sh);
#   3. waits for the query Deployment's rollout (ROLLOUT_TIMEOUT, 15m).
#   ci/deploy.sh
# Env: IMAGE_REPO, QUERY_DIGEST, INDEXER_DIGEST (sha256:...), NAMESPACE
#      (imagesearch), KUBECONFIG or KUBECONFIG_DATA (ci/kubeconfig.sh);
#      RENDER_ONLY=1 stops after step 1 (no cluster).
# kubectl (>= 1.27) is the only tool: its built-in kustomize renders.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IMAGE_REPO:?set IMAGE_REPO}" "${QUERY_DIGEST:?set QUERY_DIGEST}" "${INDEXER_DIGEST:?set INDEXER_DIGEST}"
NAMESPACE="${NAMESPACE:-imagesearch}"
OUT=build/release
deploy/k8s/release.sh prod "$OUT" "$IMAGE_REPO/imagesearch-query@$QUERY_DIGEST" \
  "$IMAGE_REPO/imagesearch-indexer@$INDEXER_DIGEST"
[[ "${RENDER_ONLY:-0}" != 1 ]] || exit 0
source ci/kubeconfig.sh

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
# kubectl diff exits 1 when there are differences, >1 on errors.
kubectl diff -f "$OUT/service.yaml" || (($? == 1))
kubectl apply -f "$OUT/service.yaml"
kubectl apply -f "$OUT/indexing.yaml" -l 'app.kubernetes.io/component notin (index-shards,snapshot-build)'
kubectl -n "$NAMESPACE" rollout status deployment/imagesearch-query --timeout="${ROLLOUT_TIMEOUT:-15m}"
