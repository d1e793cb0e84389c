#!/usr/bin/env bash
# Smoke test of imagesearch_grpc_floor_server, the floor under the service's
# per-call cost (grpc_floor.sh): with each API it answers imagesearch-loadgen's
# vector Search calls with no failed call, and holds each call for --spin_us
# (the p50 latency is at least the spin) while it reads a --touch_mib buffer;
# a buffer it cannot map stops it, rather than measure a floor on warm caches.
#
#   tools/bench/grpc_floor_smoke.sh BUILD_DIR WORK_DIR
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; WORK="$2"
SNAP="$BUILD/tools/make_snapshot/imagesearch-snapshot"
LOADGEN="$BUILD/tools/loadgen/imagesearch-loadgen"
FLOOR="$BUILD/tools/bench/imagesearch_grpc_floor_server"
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$SNAP" synth --out="$WORK/queries.npy" --count=100 --dim=512 --seed=2 > /dev/null
trap '[[ -z "${SERVICE_PID:-}" ]] || { kill "$SERVICE_PID" 2> /dev/null; wait "$SERVICE_PID" 2> /dev/null; } || true' EXIT

if "$FLOOR" --api=sync > /dev/null 2> "$WORK/refused.txt"; then fail "--api=sync was accepted"; fi
grep -q -- "--api must be callback or async" "$WORK/refused.txt" || fail "$(cat "$WORK/refused.txt")"
# ~1.9 PiB: more than x86-64's 256 TiB of user address space, so mmap fails.
if "$FLOOR" --touch_mib=2000000000 > /dev/null 2> "$WORK/refused.txt"; then
  fail "an unmappable --touch_mib was accepted"
fi
grep -q -- "could not map --touch_mib" "$WORK/refused.txt" || fail "$(cat "$WORK/refused.txt")"

for api in callback async; do
  start_pinned_service "$WORK/$api.stdout" "$WORK/$api.log" "$FLOOR" --api="$api" --spin_us=500 \
    --touch_mib=8
  json="$WORK/$api.json"
  taskset -c 1 "$LOADGEN" --target="127.0.0.1:$PORT" --kind=vector --vectors="$WORK/queries.npy" \
    --concurrency=1 --duration_s=1 --json_out="$json" | tail -1
  kill "$SERVICE_PID"; wait "$SERVICE_PID" 2> /dev/null || true; SERVICE_PID=""
  /usr/bin/python3 - "$json" <<'PY' || fail "$api: see $json"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["failed"] == 0 and r["ok"] > 20, r
# One call in flight, each held 500 us by the server's spin.
assert r["latency_ms"]["p50"] >= 0.5, r["latency_ms"]
assert r["ok"] < 2000, r  # at most 1 s / 500 us
PY
done
echo "PASS"
