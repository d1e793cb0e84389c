#!/usr/bin/env bash
# CPU time (user + sys, from /proc/PID/stat) one query replica spends per
# image query under closed-loop load: what a thread layout costs when other
# processes share the cores, which throughput alone hides on a quiet machine.
#
#   tools/bench/cpu_per_query.sh SNAPSHOT_ROOT IMAGES_DIR [SECONDS] [-- QUERY_FLAGS...]
#
# e.g. the default layout, then one 2-thread instance, alternated:
#   tools/bench/cpu_per_query.sh /tmp/sc/root /tmp/sc/queries 10
#   tools/bench/cpu_per_query.sh /tmp/sc/root /tmp/sc/queries 10 -- --model_instances=1 --encoder_threads=2
# (/tmp/sc is what tools/bench/shared_cores.py --work=/tmp/sc writes.) Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$1" IMAGES="$2" SECONDS_EACH="${3:-10}"
shift $(($# < 3 ? $# : 3))
[[ "${1:-}" == "--" ]] && shift
BUILD="${BUILD_DIR:-build}"
out="$(mktemp)"
trap 'kill "$PID" 2>/dev/null || true; rm -f "$out" "$out.json"' EXIT
"$BUILD/services/query/imagesearch-query" --snapshot_root="$ROOT" --host=127.0.0.1 --port=0 "$@" \
  >"$out" 2>/dev/null &
PID=$!
for _ in $(seq 600); do grep -q '^listening on port' "$out" && break; sleep 0.1; done
PORT="$(sed -n 's/^listening on port //p' "$out")"
[[ -n "$PORT" ]] || { echo "the service did not start" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
t0="$(ticks)"
"$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$PORT" --kind=image --images="$IMAGES" \
  --concurrency=8 --channels=8 --duration_s="$SECONDS_EACH" --json_out="$out.json" >/dev/null
t1="$(ticks)"
/usr/bin/python3 - "$out.json" "$t0" "$t1" "$(getconf CLK_TCK)" "$*" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"flags '{sys.argv[5]}': {r['calls']} image queries, {r['qps']:.1f} QPS, "
      f"{1000 * cpu_s / max(1, r['calls']):.0f} ms of CPU per query")
PY
