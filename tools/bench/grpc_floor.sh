#!/usr/bin/env bash
# The service's per-call cost beyond the search, side by side with gRPC's
# floor on this machine: imagesearch-query (default flags) and
# imagesearch_grpc_floor_server (no search, a fixed 10-hit answer; gRPC's
# callback API and a one-thread async loop; each spins for the time the
# service's search took in the same round, so its client waits, and sleeps,
# as long as the service's, and reads random 2 KiB rows of a buffer the size
# of the root meanwhile, so gRPC and the kernel run on caches as cold as a
# search leaves them) take turns, ROUNDS times, each
# pinned to core 0 under the same load (imagesearch-loadgen on core 1, the
# same query vectors, CONCURRENCY calls in flight). Each turn measures the
# server's CPU per call over SECS (perf stat cpu-clock); the service's turn
# also records a profile to split its CPU into the search and the rest, as
# profile_service.sh does.
#
# Usage: tools/bench/grpc_floor.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy OUT_DIR \
#          [EF=16] [CONCURRENCY=4] [SECS=5] [ROUNDS=3] [CLIENT=callback|poll]
# Example (tools/bench/results/LOG.md, "The floor under a unary call"):
#   tools/bench/grpc_floor.sh build /tmp/b200k/root /tmp/b200k_q.npy /tmp/floor
# Prints one line a turn and, a round, the service's part beyond the search
# minus each floor: what the serving code itself adds to a call.
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
# shellcheck source=tools/bench/perf_windows.sh
source "$(dirname "$0")/perf_windows.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; OUT="$4"
EF="${5:-16}"; CONC="${6:-4}"; SECS="${7:-5}"; ROUNDS="${8:-3}"; CLIENT="${9:-callback}"
loadgen_client "$CLIENT"
mkdir -p "$OUT"
trap '[[ -z "${SERVICE_PID:-}" ]] || { kill "$SERVICE_PID" 2> /dev/null; wait "$SERVICE_PID" 2> /dev/null; } || true' EXIT

# turn NAME PROFILE COMMAND...: one server under load; sets CPU_US_PER_CALL
# and, with PROFILE=1, SEARCH_PCT (search_share of its profile).
turn() {
  local name="$1" profile="$2" dir="$OUT/$1" load record t0 calls
  shift 2
  mkdir -p "$dir"
  start_pinned_service "$dir/server.stdout" "$dir/server.log" "$@"
  taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$PORT" --kind=vector \
    --vectors="$QUERIES" --concurrency="$CONC" --ef="$EF" --duration_s="$((SECS + 4))" --warmup_s=1 \
    --report_every_s=0.25 "${CLIENT_FLAGS[@]}" > "$dir/loadgen.txt" 2>&1 &
  load=$!
  t0="$(date +%s.%N)"
  sleep 2
  record=""
  if [[ "$profile" == 1 ]]; then
    perf record -F 2000 -p "$SERVICE_PID" -o "$dir/perf.data" -- sleep "$SECS" > /dev/null 2>&1 &
    record=$!
  fi
  # shellcheck disable=SC2016  # $1 and $2 are sh -c's arguments.
  perf stat -e cpu-clock -p "$SERVICE_PID" -o "$dir/cpu.txt" -- \
    sh -c 'date +%s.%N > "$1/w0"; sleep "$2"; date +%s.%N > "$1/w1"' sh "$dir" "$SECS" 2> /dev/null
  [[ -n "$record" ]] && { wait "$record" || true; }
  wait "$load"
  kill "$SERVICE_PID"
  wait "$SERVICE_PID" 2> /dev/null || true
  SERVICE_PID=""
  cpu_per_call "$dir" "$dir/loadgen.txt" "$t0"
  calls="$(calls_between "$dir/loadgen.txt" "$t0" "$(cat "$dir/w0")" "$(cat "$dir/w1")")"
  SEARCH_PCT=0
  [[ "$profile" == 1 ]] && SEARCH_PCT="$(search_share "$dir/perf.data")"
  printf '  %-9s %7d calls in %s s, %6.0f calls/s: %6.1f us of CPU a call' "$name" "$calls" "$SECS" \
    "$(awk -v n="$calls" -v s="$SECS" 'BEGIN { print n / s }')" "$CPU_US_PER_CALL"
}

floor="$BUILD/tools/bench/imagesearch_grpc_floor_server"
query="$BUILD/services/query/imagesearch-query"
touch_mib="$(du -smL "$ROOT" | cut -f1)"
echo "vector Search, ef $EF, $CONC calls in flight, $CLIENT client; $SECS s a turn, server on core 0, loadgen on core 1"
echo "the floor servers spin for the service's search time of the same round (--spin_us), reading"
echo "random 2 KiB rows of a ${touch_mib} MiB buffer (the root's size) as the search reads vectors"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round:"
  turn service 1 "$query" --snapshot_root="$ROOT"
  search="$(awk -v c="$CPU_US_PER_CALL" -v p="$SEARCH_PCT" 'BEGIN { printf "%.0f", c * p / 100 }')"
  beyond="$(awk -v c="$CPU_US_PER_CALL" -v s="$search" 'BEGIN { printf "%.1f", c - s }')"
  echo "; the search ${SEARCH_PCT}% of it ($search us), beyond the search $beyond us"
  turn async 0 "$floor" --api=async --spin_us="$search" --touch_mib="$touch_mib"
  as="$(awk -v c="$CPU_US_PER_CALL" -v s="$search" 'BEGIN { printf "%.1f", c - s }')"
  echo "; beyond the fake search $as us"
  turn callback 0 "$floor" --api=callback --spin_us="$search" --touch_mib="$touch_mib"
  cb="$(awk -v c="$CPU_US_PER_CALL" -v s="$search" 'BEGIN { printf "%.1f", c - s }')"
  echo "; beyond the fake search $cb us"
  turn async-warm 0 "$floor" --api=async --spin_us="$search"
  aw="$(awk -v c="$CPU_US_PER_CALL" -v s="$search" 'BEGIN { printf "%.1f", c - s }')"
  echo "; beyond the spin $aw us (a spin that reads nothing: warm caches)"
  awk -v b="$beyond" -v cb="$cb" -v as="$as" 'BEGIN {
    printf "  the service beyond the search, minus the floor: %.1f us (async floor), %.1f us (callback floor)\n", b - as, b - cb }'
done
