#!/usr/bin/env bash
# Unary Search calls/s of several imagesearch-query binaries (or one binary
# under several environments or flags), alternated round by round on one
# snapshot: each contender is started (default flags plus --verify=sizes)
# and loaded by imagesearch-loadgen (CONCURRENCY calls in flight, default 4,
# on 4 connections), then stopped. Alternating rounds is what makes the
# comparison hold on a noisy machine. Each line also gives the service's CPU
# a call and its context switches a call (all threads, from /proc).
#
# PINNED=1 (the default): the service on core 0, the loadgen on core 1.
# PINNED=0: both unpinned, as the binaries run by default.
#
#   [PINNED=0] [CONCURRENCY=N] tools/bench/ab_service.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy EF \
#       SECONDS ROUNDS LABEL=[ENV=VALUE,...:]BINARY[,--flag,...] ...
# e.g. a 2000-vector snapshot, which measures little but the per-call cost:
#   build/tools/bench/imagesearch_faiss_bench --data=lowrank --n=2000 --dim=512 --faiss=false \
#     --cpu=0 --ef=10 --workdir=/tmp/tiny --queries_out=/tmp/tiny_q.npy \
#     --query_binary=build/services/query/imagesearch-query
#   tools/bench/ab_service.sh build /tmp/tiny/root /tmp/tiny_q.npy 10 4 3 \
#     old=/tmp/imagesearch-query.old new=build/services/query/imagesearch-query
# and unpinned with one call in flight, the default thread count against one:
#   PINNED=0 CONCURRENCY=1 tools/bench/ab_service.sh build /tmp/b200k/root /tmp/b200k_q.npy 16 4 3 \
#     two=build/services/query/imagesearch-query one=build/services/query/imagesearch-query,--grpc_threads=1
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; EF="$4"; SECONDS_EACH="$5"; ROUNDS="$6"; shift 6
PINNED="${PINNED:-1}"; CONC="${CONCURRENCY:-4}"
work="$(mktemp -d)"; SERVICE_PID=""
trap '[[ -n $SERVICE_PID ]] && kill $SERVICE_PID 2>/dev/null; rm -rf "$work"' EXIT
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
switches() { cat "/proc/$1"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
loadgen=("$BUILD/tools/loadgen/imagesearch-loadgen")
[[ "$PINNED" == 1 ]] && loadgen=(taskset -c 1 "${loadgen[@]}")
for round in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    label="${spec%%=*}"; rest="${spec#*=}"; envs=()
    if [[ "$rest" == *:* ]]; then IFS=, read -ra envs <<< "${rest%%:*}"; rest="${rest#*:}"; fi
    IFS=, read -ra command <<< "$rest"
    if [[ "$PINNED" == 1 ]]; then
      start_pinned_service "$work/out" "$work/log" env "${envs[@]}" "${command[@]}" \
        --snapshot_root="$ROOT" --verify=sizes || { echo "$label: not serving" >&2; exit 1; }
    else
      env "${envs[@]}" "${command[@]}" --snapshot_root="$ROOT" --verify=sizes --port=0 \
        --host=127.0.0.1 > "$work/out" 2> "$work/log" &
      SERVICE_PID=$!
      wait_serving "$work/out" "$work/log" || { echo "$label: not serving" >&2; exit 1; }
    fi
    port="$PORT"
    # The CPU and switches are read over the measured seconds, after the
    # loadgen's warm-up second.
    "${loadgen[@]}" --target="127.0.0.1:$port" \
      --kind=vector --vectors="$QUERIES" --concurrency="$CONC" --channels=4 --ef="$EF" \
      --duration_s="$SECONDS_EACH" --warmup_s=1 > "$work/loadgen" 2>&1 &
    load=$!
    sleep 1
    t0="$(cpu_ticks "$SERVICE_PID")"; s0="$(switches "$SERVICE_PID")"
    wait "$load"
    t1="$(cpu_ticks "$SERVICE_PID")"; s1="$(switches "$SERVICE_PID")"
    line="$(tail -1 "$work/loadgen")"
    calls="$(sed -n 's/.*: \([0-9]*\) calls, .*/\1/p' <<< "$line")"
    awk -v r="$round" -v l="$label" -v q="$(sed -n 's/.* \([0-9.]*\) calls\/s.*/\1/p' <<< "$line")" \
      -v n="$calls" -v t="$((t1 - t0))" -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "round %s %s %s calls/s, CPU %.1f us a call, %.2f context switches a call\n",
               r, l, q, t * 1e6 / hz / n, s / n }'
    kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true; SERVICE_PID=""
  done
done
