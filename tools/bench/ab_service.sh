#!/usr/bin/env bash
# Unary Search calls/s of several imagesearch-query binaries (or one binary
# under several environments), alternated round by round on one snapshot:
# each contender is started pinned to core 0 (default flags plus
# --verify=sizes) and loaded by imagesearch-loadgen on core 1 (4 calls in
# flight on 4 connections), then stopped. Alternating rounds is what makes
# the comparison hold on a noisy machine.
#
#   tools/bench/ab_service.sh BUILD_DIR SNAPSHOT_ROOT QUERIES.npy EF SECONDS ROUNDS \
#       LABEL=[ENV=VALUE,...:]BINARY ...
# e.g. a 2000-vector snapshot, which measures little but the per-call cost:
#   build/tools/bench/imagesearch_faiss_bench --data=lowrank --n=2000 --dim=512 --faiss=false \
#     --cpu=0 --ef=10 --workdir=/tmp/tiny --queries_out=/tmp/tiny_q.npy \
#     --query_binary=build/services/query/imagesearch-query
#   tools/bench/ab_service.sh build /tmp/tiny/root /tmp/tiny_q.npy 10 4 3 \
#     old=/tmp/imagesearch-query.old new=build/services/query/imagesearch-query
set -euo pipefail
# shellcheck source=tools/bench/pinned_service.sh
source "$(dirname "$0")/pinned_service.sh"
BUILD="$1"; ROOT="$2"; QUERIES="$3"; EF="$4"; SECONDS_EACH="$5"; ROUNDS="$6"; shift 6
work="$(mktemp -d)"; SERVICE_PID=""
trap '[[ -n $SERVICE_PID ]] && kill $SERVICE_PID 2>/dev/null; rm -rf "$work"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    label="${spec%%=*}"; rest="${spec#*=}"; envs=(); binary="$rest"
    if [[ "$rest" == *:* ]]; then IFS=, read -ra envs <<< "${rest%%:*}"; binary="${rest#*:}"; fi
    start_pinned_service "$work/out" "$work/log" env "${envs[@]}" "$binary" \
      --snapshot_root="$ROOT" --verify=sizes || { echo "$label: not serving" >&2; exit 1; }
    port="$PORT"
    line="$(taskset -c 1 "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" \
      --kind=vector --vectors="$QUERIES" --concurrency=4 --channels=4 --ef="$EF" \
      --duration_s="$SECONDS_EACH" --warmup_s=1 | tail -1)"
    echo "round $round $label $(sed -n 's/.* \([0-9.]*\) calls\/s.*/\1/p' <<< "$line") calls/s"
    kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true; SERVICE_PID=""
  done
done
