#!/usr/bin/env bash
# Smoke test of imagesearch-loadgen against the real service on a tiny
# synthetic snapshot, pinned as the bench scripts run it (service on core 0,
# loadgen on core 1): vector and batch queries, with the callback client and
# with --poll, each with no failed call, the mode in its JSON, and recall@10
# of vector queries against brute force. Also: --poll with --rate is refused.
#
#   tools/bench/loadgen_smoke.sh BUILD_DIR WORK_DIR
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; WORK="$2"
SNAP="$BUILD/tools/make_snapshot/imagesearch-snapshot"
LOADGEN="$BUILD/tools/loadgen/imagesearch-loadgen"
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$SNAP" synth --out="$WORK/base.npy" --count=3000 --dim=32 --seed=1 > /dev/null
"$SNAP" synth --out="$WORK/queries.npy" --count=100 --dim=32 --seed=2 > /dev/null
"$SNAP" build --root="$WORK/root" --vectors="$WORK/base.npy" --metric=cosine \
  --ef_construction=100 > /dev/null
trap 'kill ${SERVICE_PID:-} 2>/dev/null; wait ${SERVICE_PID:-} 2>/dev/null || true' EXIT
start_pinned_service "$WORK/query.stdout" "$WORK/query.log" "$BUILD/services/query/imagesearch-query" \
  --snapshot_root="$WORK/root"

for client in callback poll; do
  flags=()
  [[ "$client" == poll ]] && flags+=(--poll)
  for kind in vector batch; do
    json="$WORK/${kind}_$client.json"
    extra=()
    [[ "$kind" == vector ]] && extra+=(--base_vectors="$WORK/base.npy" --recall_queries=50 --ef=64)
    taskset -c 1 "$LOADGEN" --target="127.0.0.1:$PORT" --kind="$kind" --vectors="$WORK/queries.npy" \
      --concurrency=4 --duration_s=1 --json_out="$json" "${flags[@]}" "${extra[@]}" | tail -1
    /usr/bin/python3 - "$json" "$client" "$kind" <<'EOF' || fail "$kind with the $client client: see $json"
import json, sys
r = json.load(open(sys.argv[1]))
client, kind = sys.argv[2], sys.argv[3]
assert r["failed"] == 0 and r["ok"] > 20, r
assert r["poll"] == (client == "poll"), r["poll"]
assert r["latency_ms"]["p50"] > 0, r["latency_ms"]
if kind == "vector":
    assert r["recall"]["queries"] >= 40 and r["recall"]["value"] >= 0.9, r["recall"]
EOF
  done
done

if "$LOADGEN" --target="127.0.0.1:$PORT" --kind=vector --vectors="$WORK/queries.npy" --poll \
     --rate=100 --duration_s=1 2> "$WORK/refused.txt"; then
  fail "--poll with --rate was accepted"
fi
grep -q -- "--poll is for the gRPC closed loop only" "$WORK/refused.txt" || fail "$(cat "$WORK/refused.txt")"
echo "PASS"
