#!/usr/bin/env bash
# Latency percentiles and QPS of vector queries against concurrency, pinned:
# imagesearch-query (default flags) on core 0, imagesearch-loadgen on core 1.
# Writes OUT_DIR/<kind>_c<N>.json (imagesearch-loadgen --json_out) per point;
# tools/bench/plot.py latency turns them into a plot.
#
#   tools/bench/latency_sweep.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy OUT_DIR \
#       [CONCURRENCIES="1 2 4 8 16 32 64"] [SECONDS=5] [KINDS="vector batch"]
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; OUT="$4"
CONCURRENCIES="${5:-1 2 4 8 16 32 64}"; SECONDS_EACH="${6:-5}"; KINDS="${7:-vector batch}"
mkdir -p "$OUT"
log="$OUT/query.log"
trap 'kill ${SERVICE_PID:-} 2>/dev/null; wait ${SERVICE_PID:-} 2>/dev/null || true' EXIT
start_pinned_service "$OUT/query.stdout" "$log" "$BUILD/services/query/imagesearch-query" \
  --snapshot_root="$ROOT"
port="$PORT"
for kind in $KINDS; do
  for c in $CONCURRENCIES; do
    taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" \
      --kind="$kind" --vectors="$QUERIES" --concurrency="$c" --duration_s="$SECONDS_EACH" \
      --warmup_s=1 --json_out="$OUT/${kind}_c$c.json" | tail -1
  done
done
