#!/usr/bin/env bash
# Latency percentiles and QPS of vector queries against concurrency, pinned:
# imagesearch-query (default flags) on core 0, imagesearch-loadgen on core 1.
# Writes OUT_DIR/<kind>_c<N>.json (imagesearch-loadgen --json_out) per point;
# tools/bench/plot.py latency turns them into a plot.
#
#   tools/bench/latency_sweep.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy OUT_DIR \
#       [CONCURRENCIES="1 2 4 8 16 32 64"] [SECONDS=5] [KINDS="vector batch"]
set -euo pipefail
BUILD="$1"; ROOT="$2"; QUERIES="$3"; OUT="$4"
CONCURRENCIES="${5:-1 2 4 8 16 32 64}"; SECONDS_EACH="${6:-5}"; KINDS="${7:-vector batch}"
mkdir -p "$OUT"
log="$OUT/query.log"
taskset -c 0 "$BUILD/services/query/imagesearch-query" --snapshot_root="$ROOT" --port=0 \
  --host=127.0.0.1 > "$OUT/query.stdout" 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 300); do
  port="$(sed -n 's/^listening on port \([0-9]*\).*/\1/p' "$OUT/query.stdout" | head -1)"
  [[ -n "$port" ]] && break
  sleep 0.1
done
[[ -n "$port" ]] || { echo "service did not start; see $log" >&2; exit 1; }
# The port opens before the snapshot is loaded (and checksummed): wait for it,
# or the first point measures UNAVAILABLE answers.
for _ in $(seq 1 1200); do
  grep -q "serving snapshot v" "$log" && break
  sleep 0.1
done
grep -q "serving snapshot v" "$log" || { echo "no snapshot served after 120 s; see $log" >&2; exit 1; }
for kind in $KINDS; do
  for c in $CONCURRENCIES; do
    taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" \
      --kind="$kind" --vectors="$QUERIES" --concurrency="$c" --duration_s="$SECONDS_EACH" \
      --warmup_s=1 --json_out="$OUT/${kind}_c$c.json" | tail -1
  done
done
