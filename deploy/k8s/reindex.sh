#!/usr/bin/env bash
# Runs distributed indexing on a cluster, in order:
#   1. the indexing overlay's ServiceAccount, volumes and admin CronJob (apply);
#   2. deletes the previous run's Jobs (a Job's pod template is immutable, and a
#      finished Job would not run again);
#   3. the Indexed Job imagesearch-index-shards (one pod per shard); waits for Complete;
#   4. the Job imagesearch-snapshot-build (all shards -> HNSW graph -> snapshot
#      v<N+1>, CURRENT flipped); waits for Complete.
# Every query replica then swaps to the new version by itself (no restart).
#   deploy/k8s/reindex.sh INDEXING_YAML|OVERLAY_DIR NAMESPACE [TIMEOUT_S=21600]
#   deploy/k8s/release.sh prod /tmp/rel QUERY@sha256:... INDEXER@sha256:...
#   deploy/k8s/reindex.sh /tmp/rel/indexing.yaml imagesearch
# INDEXING_YAML is what release.sh rendered (images by digest). An overlay
# directory is rendered here and must name real digests: the committed
# overlays carry a placeholder digest, which is refused.
# TIMEOUT_S bounds the whole run: both Jobs share one deadline.
# Needs kubectl (>= 1.27) with a context for the cluster.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 INDEXING_YAML|OVERLAY_DIR NAMESPACE [TIMEOUT_S]" >&2; exit 2; }
OVERLAY="$1"; NS="$2"; TIMEOUT="${3:-21600}"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { echo "TIMEOUT_S must be a number of seconds, not '$TIMEOUT'" >&2; exit 2; }
END=$((SECONDS + TIMEOUT))
COMPONENT=app.kubernetes.io/component
RENDERED="$(mktemp)"
trap 'rm -f "$RENDERED"' EXIT
if [[ -f "$OVERLAY" ]]; then cp "$OVERLAY" "$RENDERED"; else kubectl kustomize "$OVERLAY" >"$RENDERED"; fi
if grep -q "@sha256:0\{64\}" "$RENDERED"; then
  echo "reindex.sh: $OVERLAY names the placeholder image digest; render a release with" \
    "deploy/k8s/release.sh and pass its indexing.yaml" >&2
  exit 2
fi

# wait_job COMPONENT: waits until the Job with that component label is Complete
# (0) or Failed (1, with its logs), at most until the run's deadline.
wait_job() {
  local sel="$COMPONENT=$1" state
  while ((SECONDS < END)); do
    state="$(kubectl -n "$NS" get job -l "$sel" \
      -o jsonpath='{range .items[*].status.conditions[?(@.status=="True")]}{.type} {end}')"
    case " $state " in
      *" Complete "*) echo "job $1: Complete"; return 0 ;;
      *" Failed "*)
        echo "job $1: Failed" >&2
        kubectl -n "$NS" logs -l "$sel" --tail=40 --prefix >&2 || true
        return 1 ;;
    esac
    sleep 10
  done
  echo "job $1: not finished within the run's ${TIMEOUT} s" >&2
  return 1
}

kubectl apply -f "$RENDERED" -l "$COMPONENT notin (index-shards,snapshot-build)"
kubectl -n "$NS" delete job -l "$COMPONENT in (index-shards,snapshot-build)" \
  --ignore-not-found --wait=true
kubectl apply -f "$RENDERED" -l "$COMPONENT=index-shards"
wait_job index-shards
kubectl apply -f "$RENDERED" -l "$COMPONENT=snapshot-build"
wait_job snapshot-build
kubectl -n "$NS" logs -l "$COMPONENT=snapshot-build" --tail=20 || true
