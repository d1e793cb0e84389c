#!/usr/bin/env bash
# The CI batch indexer job with a quality gate:
#   1. fetch a real labelled corpus (Fashion-MNIST, from Debian's archive);
#   2. run the indexer as a batch job with the default model -> snapshot v1;
#   3. start the query service on it and gate quality through the live API:
#      every sampled image queried by its bytes comes back first, and class
#      precision@10 of "more like this" is at least MIN_P10.
# Usage: ci/batch_index_job.sh BUILD_DIR [PER_CLASS=200] [MIN_P10=0.63]
# The threshold was measured: see tests/e2e/README.md (quality gate).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$(cd "$1" && pwd)"; PER_CLASS="${2:-200}"; MIN_P10="${3:-0.63}"
WORK="$(mktemp -d /tmp/imagesearch_job.XXXXXX)"
QUERY_PID=""
cleanup() { [[ -n "$QUERY_PID" ]] && kill "$QUERY_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
source "$HERE/tests/e2e/lib.sh"

"$HERE/tools/corpus/fashion_mnist.sh" "$WORK/corpus" "$PER_CLASS"
"$BUILD/services/indexer/imagesearch-indexer" --input="$WORK/corpus/manifest.jsonl" \
  --root="$WORK/root" --model="$BUILD/models/default/model.pt" --progress=lines
test -f "$WORK/root/v1/rejects.jsonl" || fail "no rejects report in the snapshot"
start_query "$BUILD/services/query/imagesearch-query" "$WORK/query.log" \
  --snapshot_root="$WORK/root"
/usr/bin/python3 "$HERE/tests/e2e/quality_gate.py" "127.0.0.1:$QUERY_PORT" "$HERE/proto" \
  "$WORK/corpus/manifest.jsonl" "$MIN_P10" 50
