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
# ROUTER_BIN defaults to BUILD_DIR's; a wrapper script can run it under
# another environment (LD_PRELOAD=..., say) if it `exec`s the router (perf
# watches the process started). CONCURRENCY, EF (32) and SECS
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
# shellcheck source=tools/bench/perf_windows.sh
source "$(dirname "$0")/perf_windows.sh"
mkdir -p "$OUT"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT
start_shard_replicas "$BUILD/services/query/imagesearch-query" "$COLL" "$OUT"
pids+=("${SHARD_PIDS[@]}")
start_query "$ROUTER" "$OUT/router.log" --shards="$SHARDS" "$@"
router="$QUERY_PID"
pids+=("$router")
port="$QUERY_PORT"

# Two windows of SECS under one load (which runs 2 s longer on each side):
# the CPU, context switches and profile, then the system calls
# (tools/bench/perf_windows.sh).
"$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$port" --kind=vector \
  --vectors="$QUERIES" --concurrency="$CONC" --ef="$EF" --duration_s="$((2 * SECS + 4))" --warmup_s=1 \
  --report_every_s=0.25 > "$OUT/loadgen.txt" 2>&1 &
load=$!
t0="$(date +%s.%N)"
sleep 2
perf_windows "$router" "$OUT" "$SECS" sendmsg recvmsg epoll_wait futex read write
wait "$load"
grep -v '^loadgen: ' "$OUT/loadgen.txt" | tail -1
per_call_report "$OUT" "$OUT/loadgen.txt" "$t0" query queries
echo "router CPU: $CPU_US_PER_CALL us per query"
echo "share of the router's CPU by DSO:"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
echo "by thread:"
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2> /dev/null | grep -E '^ +[0-9.]+%' | head -8
