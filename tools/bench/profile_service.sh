#!/usr/bin/env bash
# Profiles the pinned query service under load: where its core goes, and how
# many context switches each call costs. The service runs on core 0 with
# default flags, imagesearch-loadgen on core 1; perf samples the service
# only (cpu-clock, so it works in VMs without a PMU).
#
# Usage: tools/bench/profile_service.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy OUT_DIR \
#          [KIND=vector] [EF=24] [CONCURRENCY=4] [SECONDS=6] [CLIENT=callback]
# CLIENT=poll runs imagesearch-loadgen --poll: its thread spins instead of
# sleeping, so the service's sends have no client thread to wake.
# Example (the figures in tools/bench/results/LOG.md, "Per-call cost" and "Half vectors"):
#   tools/bench/profile_service.sh build /tmp/b9/fm_m16/root /tmp/b9/fm_queries.npy /tmp/prof vector 24
# Prints the loadgen summary, context switches and system calls (sendmsg, recvmsg,
# epoll_wait, futex) per call, the service's CPU per call and the part of it
# beyond the search itself, and the top symbols by DSO;
# OUT_DIR keeps perf.data, the service log and the loadgen JSON. Needs perf (linux-perf).
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
# shellcheck source=tools/bench/perf_windows.sh
source "$(dirname "$0")/perf_windows.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; OUT="$4"
KIND="${5:-vector}"; EF="${6:-24}"; CONC="${7:-4}"; SECS="${8:-6}"; CLIENT="${9:-callback}"
loadgen_client "$CLIENT"
mkdir -p "$OUT"
trap 'kill ${SERVICE_PID:-} 2>/dev/null; wait ${SERVICE_PID:-} 2>/dev/null || true' EXIT
start_pinned_service "$OUT/query.stdout" "$OUT/query.log" "$BUILD/services/query/imagesearch-query" \
  --snapshot_root="$ROOT"
pid="$SERVICE_PID"
port="$PORT"

# Two windows of SECS under one load (which runs 2 s longer on each side):
# the CPU, context switches and profile, then the system calls
# (tools/bench/perf_windows.sh).
taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" --kind="$KIND" \
  --vectors="$QUERIES" --concurrency="$CONC" --ef="$EF" --duration_s="$((2 * SECS + 4))" --warmup_s=1 \
  --json_out="$OUT/loadgen.json" --report_every_s=0.25 "${CLIENT_FLAGS[@]}" > "$OUT/loadgen.txt" 2>&1 &
load=$!
t0="$(date +%s.%N)"
sleep 2
perf_windows "$pid" "$OUT" "$SECS" sendmsg recvmsg epoll_wait futex
wait "$load"
grep -v '^loadgen: ' "$OUT/loadgen.txt" | tail -1
per_call_report "$OUT" "$OUT/loadgen.txt" "$t0" call calls
# The part of the CPU outside the search: the cost of a call beyond the
# search itself (the target is <= 40 us).
search_pct="$(search_share "$OUT/perf.data")"
awk -v per="$CPU_US_PER_CALL" -v p="$search_pct" 'BEGIN { in_search = per * p / 100
  printf "service CPU per call: %.1f us; in the search (imagesearch::index, %.1f%% of samples): %.1f us; beyond the search: %.1f us\n", per, p, in_search, per - in_search }'
echo "share of the service's core by DSO:"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
echo "top symbols:"
perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -15
