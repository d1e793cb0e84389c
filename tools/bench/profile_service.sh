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
# epoll_wait, futex) per call, and the top symbols by DSO;
# OUT_DIR keeps perf.data, the service log and the loadgen JSON. Needs perf (linux-perf).
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; OUT="$4"
KIND="${5:-vector}"; EF="${6:-24}"; CONC="${7:-4}"; SECS="${8:-6}"; CLIENT="${9:-callback}"
client_flags=()
case "$CLIENT" in
  callback) ;;
  poll) client_flags+=(--poll) ;;
  *) echo "CLIENT must be callback or poll, not '$CLIENT'" >&2; exit 2 ;;
esac
command -v perf > /dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$OUT"
trap 'kill ${SERVICE_PID:-} 2>/dev/null; wait ${SERVICE_PID:-} 2>/dev/null || true' EXIT
start_pinned_service "$OUT/query.stdout" "$OUT/query.log" "$BUILD/services/query/imagesearch-query" \
  --snapshot_root="$ROOT"
pid="$SERVICE_PID"
port="$PORT"

# The load runs 2 s longer than the measurement on each side.
taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" --kind="$KIND" \
  --vectors="$QUERIES" --concurrency="$CONC" --ef="$EF" --duration_s="$((SECS + 4))" --warmup_s=1 \
  --json_out="$OUT/loadgen.json" "${client_flags[@]}" > "$OUT/loadgen.txt" 2>&1 &
load=$!
sleep 2
# System calls from perf's tracepoints (root; no PMU needed).
events=context-switches,cpu-clock
for call in sendmsg recvmsg epoll_wait futex; do events+=",syscalls:sys_enter_$call"; done
perf stat -e "$events" -p "$pid" -o "$OUT/stat.txt" -- sleep "$SECS" 2> /dev/null &
perf record -F 2000 -g -p "$pid" -o "$OUT/perf.data" -- sleep "$SECS" > /dev/null 2>&1
wait $!
wait "$load"
tail -1 "$OUT/loadgen.txt"
# Calls during the window, from the loadgen's steady rate ("... : R calls/s ...").
rate="$(sed -n 's/.*: \([0-9.]*\) calls\/s.*/\1/p' "$OUT/loadgen.txt" | tail -1)"
awk -v r="${rate:-0}" -v t="$SECS" '
  $2 == "context-switches" || $2 ~ /^syscalls:sys_enter_/ {
    gsub(",", "", $1); name = $2; sub("syscalls:sys_enter_", "", name)
    if (r > 0) printf "%s: %d in ~%d calls = %.2f per call\n", name, $1, r * t, $1 / (r * t)
    else printf "%s: %d in %d s (no call rate)\n", name, $1, t }' "$OUT/stat.txt"
echo "share of the service's core by DSO:"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
echo "top symbols:"
perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -15
