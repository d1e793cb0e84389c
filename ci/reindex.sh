#!/usr/bin/env bash
# The reindex workflow's job: pins the prod indexing overlay to the indexer
# image by digest, INDEXER_DIGEST (as ci.yml's push-images job pushed it), with
# ci/pin_overlay.sh, then runs deploy/k8s/reindex.sh on it: the Indexed Job
# (shards), then the snapshot build Job, both within TIMEOUT_S in all.
#   ci/reindex.sh
# Env: IMAGE_REPO, INDEXER_DIGEST (sha256:...), NAMESPACE (imagesearch), TIMEOUT_S (20400),
#      KUBECONFIG or KUBECONFIG_DATA (ci/kubeconfig.sh); RENDER_ONLY=1 stops
#      after pinning (no cluster).
# TIMEOUT_S may be at most 20400 s (340 min): reindex.yml's job limit is 350
# minutes (GitHub-hosted runners stop any job at 360), and the last 10 are
# for setting up and applying. Jobs still running when the wait ends keep
# running in the cluster; the snapshot build Job is applied only after the
# shards completed.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIMEOUT_S=20400
: "${IMAGE_REPO:?set IMAGE_REPO}" "${INDEXER_DIGEST:?set INDEXER_DIGEST}"
NAMESPACE="${NAMESPACE:-imagesearch}"
TIMEOUT_S="${TIMEOUT_S:-$MAX_TIMEOUT_S}"
[[ "$TIMEOUT_S" =~ ^[1-9][0-9]*$ ]] && ((TIMEOUT_S <= MAX_TIMEOUT_S)) ||
  { echo "ci/reindex.sh: TIMEOUT_S must be 1..$MAX_TIMEOUT_S seconds, not '$TIMEOUT_S'" >&2; exit 2; }
ci/pin_overlay.sh deploy/k8s/overlays/prod/indexing build/reindex/indexing \
  "$IMAGE_REPO/imagesearch-indexer@$INDEXER_DIGEST"
[[ "${RENDER_ONLY:-0}" != 1 ]] || exit 0
source ci/kubeconfig.sh
exec deploy/k8s/reindex.sh build/reindex/indexing "$NAMESPACE" "$TIMEOUT_S"
