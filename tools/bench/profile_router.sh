#!/usr/bin/env bash
# Profiles imagesearch-router under load: its CPU, context switches and
# system calls per query, and where its core goes. One replica per shard of
# COLLECTION (shard-<i>-of-<S>/ roots, e.g. the one tools/bench/router_bench.py
# caches) with --load_model=false, the router with default flags plus any
# ROUTER_FLAGS, and imagesearch-loadgen sending vector queries (CONCURRENCY in
# flight, default 1), everything on the machine's shared cores; perf watches
# the router only (cpu-clock, so it works in VMs without a PMU).
#
# Usage: tools/bench/profile_router.sh BUILD_DIR COLLECTION QUERIES.npy OUT_DIR [ROUTER_BIN] [ROUTER_FLAGS...]
# ROUTER_BIN defaults to BUILD_DIR's; give a wrapper script to run it under
# another environment (LD_PRELOAD=..., say). CONCURRENCY, EF (32) and SECS
# (5) come from the environment. Example (tools/bench/results/LOG.md, "Where
# the router's CPU goes"):
#   /usr/bin/python3 tools/bench/router_bench.py --build=build     # makes /tmp/router_bench
#   tools/bench/profile_router.sh build /tmp/router_bench/n100000-d128-s4-coll \
#     /tmp/router_bench/n100000-d128-s4-q1000.npy /tmp/prof_router
# Needs perf (linux-perf).
set -euo pipefail
BUILD="$(cd "$1" && pwd)"; COLL="$2"; QUERIES="$3"; OUT="$4"
ROUTER="${5:-$BUILD/services/router/imagesearch-router}"
shift $(($# >= 5 ? 5 : 4))
CONC="${CONCURRENCY:-1}"; EF="${EF:-32}"; SECS="${SECS:-5}"
command -v perf > /dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../../tests/e2e/lib.sh"
mkdir -p "$OUT"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT
targets=()
for root in "$COLL"/shard-*-of-*; do
  start_query "$BUILD/services/query/imagesearch-query" "$OUT/$(basename "$root").log" \
    --snapshot_root="$root" --load_model=false
  pids+=("$QUERY_PID")
  targets+=("127.0.0.1:$QUERY_PORT")
done
((${#targets[@]} > 0)) || fail "no shard-<i>-of-<S> roots in $COLL"
shards="$(IFS=';'; echo "${targets[*]}")"
start_query "$ROUTER" "$OUT/router.log" --shards="$shards" "$@"
router="$QUERY_PID"
pids+=("$router")
port="$QUERY_PORT"

# The load runs 2 s longer than the measurement on each side.
"$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" --kind=vector \
  --vectors="$QUERIES" --concurrency="$CONC" --ef="$EF" --duration_s="$((SECS + 4))" --warmup_s=1 \
  > "$OUT/loadgen.txt" 2>&1 &
load=$!
sleep 2
events=context-switches,cpu-clock
for call in sendmsg recvmsg epoll_wait futex read write; do events+=",syscalls:sys_enter_$call"; done
perf stat -e "$events" -p "$router" -o "$OUT/stat.txt" -- sleep "$SECS" 2> /dev/null &
perf record -F 2000 -g -p "$router" -o "$OUT/perf.data" -- sleep "$SECS" > /dev/null 2>&1
wait $!
wait "$load"
tail -1 "$OUT/loadgen.txt"
rate="$(sed -n 's/.*: \([0-9.]*\) calls\/s.*/\1/p' "$OUT/loadgen.txt" | tail -1)"
awk -v r="${rate:-0}" -v t="$SECS" '
  r > 0 && $3 == "cpu-clock" { gsub(",", "", $1); printf "router CPU: %.0f us per query\n", $1 * 1000 / (r * t) }
  r > 0 && ($2 == "context-switches" || $2 ~ /^syscalls:sys_enter_/) {
    gsub(",", "", $1); name = $2; sub("syscalls:sys_enter_", "", name)
    printf "%s: %.2f per query\n", name, $1 / (r * t) }' "$OUT/stat.txt"
echo "share of the router's CPU by DSO:"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
echo "by thread:"
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
