#!/usr/bin/env bash
# Promote a candidate snapshot version only if it passes the quality gate.
#
#   tools/promote.sh --root=R --version=vN --manifest=LABELLED.jsonl [--min_p10=0.63]
#                    [--self_sample=50] [--build=build]
#
# A candidate is a version published without moving CURRENT
# (`imagesearch-indexer --promote=false`, `imagesearch-snapshot build
# --promote=false`). This script serves it on a canary instance of the query
# service (the same binary, one version directory, loopback, a free port),
# runs the quality gate through that instance's gRPC API
# (tests/e2e/quality_gate.py: self-retrieval by image bytes, class
# precision@10 of "more like this" against MANIFEST's attributes.class), and
# only if it passes points CURRENT at it; every live replica then swaps to it
# within its poll interval. On failure CURRENT is left as it was, the live
# replicas never see the candidate, and the exit status is 1. --min_p10 is
# per collection (precision@10 grows with the images per class): the default
# is CI's batch job's bar (Fashion-MNIST, 200 a class); deploy/README.md, 6.
#
# Rollback is one command: `imagesearch-snapshot rollback --root=R` (CURRENT
# -> the newest version older than it), or set-current --version=vK.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="" VERSION="" MANIFEST="" MIN_P10=0.63 SELF_SAMPLE=50 BUILD="$REPO/build"
for arg in "$@"; do
  case "$arg" in
    --root=*) ROOT="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --manifest=*) MANIFEST="${arg#*=}" ;;
    --min_p10=*) MIN_P10="${arg#*=}" ;;
    --self_sample=*) SELF_SAMPLE="${arg#*=}" ;;
    --build=*) BUILD="${arg#*=}" ;;
    *) echo "promote.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[[ -n "$ROOT" && -n "$VERSION" && -n "$MANIFEST" ]] || {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ "$VERSION" =~ ^v[0-9]+$ ]] || { echo "promote.sh: --version must look like v3" >&2; exit 2; }
SNAPSHOT="$BUILD/tools/make_snapshot/imagesearch-snapshot"
QUERY="$BUILD/services/query/imagesearch-query"
[[ -d "$ROOT/$VERSION" ]] || { echo "promote.sh: no version $VERSION under $ROOT" >&2; exit 2; }
current="$("$SNAPSHOT" current --root="$ROOT" 2>/dev/null || echo none)"
[[ "$current" != "$VERSION" ]] || { echo "promote.sh: $VERSION is already CURRENT"; exit 0; }
"$SNAPSHOT" verify --root="$ROOT" --version="$VERSION"

source "$REPO/tests/e2e/lib.sh"
LOG="$(mktemp /tmp/imagesearch_canary.XXXXXX.log)"
QUERY_PID=""
cleanup() {
  if [[ -n "$QUERY_PID" ]]; then kill "$QUERY_PID" 2>/dev/null || true; wait "$QUERY_PID" 2>/dev/null || true; fi
  rm -f "$LOG"
}
trap cleanup EXIT
start_query "$QUERY" "$LOG" --snapshot_root="$ROOT/$VERSION"
echo "canary: $VERSION served on 127.0.0.1:$QUERY_PORT (CURRENT stays $current meanwhile)"
if /usr/bin/python3 "$REPO/tests/e2e/quality_gate.py" "127.0.0.1:$QUERY_PORT" "$REPO/proto" \
     "$MANIFEST" "$MIN_P10" "$SELF_SAMPLE"; then
  "$SNAPSHOT" set-current --root="$ROOT" --version="$VERSION"
  echo "promoted: CURRENT $current -> $VERSION"
else
  echo "NOT promoted: $VERSION failed the quality gate; CURRENT stays $current" >&2
  tail -n 5 "$LOG" >&2 || true
  exit 1
fi
