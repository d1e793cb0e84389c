#!/usr/bin/env bash
# Counts what one query costs a process, in figures that do not move with
# this VM's speed: its user-space instructions (valgrind's callgrind) and its
# system calls and context switches (perf's tracepoints), each per query
# over a fixed number of queries from imagesearch-loadgen at 1 client.
#
#   router:  one replica per shard of COLLECTION (shard-<i>-of-<S>/ roots),
#            and imagesearch-router over them, which is counted (with
#            --hedge_after_ms=-1 under callgrind: a router slowed ~50x would
#            hedge every call; its default for the system calls);
#   replica: the replica of COLLECTION/shard-0-of-<S>, counted.
#
# Usage: tools/bench/count_per_query.sh BUILD_DIR COLLECTION QUERIES.npy OUT_DIR [router|replica]
# COUNT (queries counted, 1000) and EF (32) come from the environment. Example
# (tools/bench/results/LOG.md, "The router's own cost"):
#   /usr/bin/python3 tools/bench/router_bench.py --build=build     # makes /tmp/router_bench
#   tools/bench/count_per_query.sh build /tmp/router_bench/n100000-d128-s4-coll \
#     /tmp/router_bench/n100000-d128-s4-q1000.npy /tmp/count router
# Prints the instructions and malloc calls a query (OUT_DIR keeps
# callgrind's dump for callgrind_annotate), then each system call and
# context switches a query.
# Needs valgrind and perf (linux-perf).
set -euo pipefail
BUILD="$(cd "$1" && pwd)"; COLL="$2"; QUERIES="$3"; OUT="$4"; WHAT="${5:-router}"
N="${COUNT:-1000}"; EF="${EF:-32}"
for tool in valgrind callgrind_control callgrind_annotate perf; do
  command -v "$tool" > /dev/null || { echo "$tool is not installed (valgrind, linux-perf)" >&2; exit 1; }
done
case "$WHAT" in router | replica) ;; *) echo "router or replica, not '$WHAT'" >&2; exit 2 ;; esac
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../../tests/e2e/lib.sh"
mkdir -p "$OUT"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true' EXIT
first=("$COLL"/shard-0-of-*)
[[ -d "${first[0]}" ]] || fail "no shard-0-of-<S> root in $COLL"
if [[ "$WHAT" == router ]]; then
  start_shard_replicas "$BUILD/services/query/imagesearch-query" "$COLL" "$OUT"
  pids+=("${SHARD_PIDS[@]}")
fi
# start_counted PREFIX [FLAGS...]: starts the counted process under PREFIX
# (valgrind, or nothing) with FLAGS; sets PID and PORT.
start_counted() {
  local wrapper="$OUT/counted.sh"
  if [[ "$WHAT" == router ]]; then
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$1" "$BUILD/services/router/imagesearch-router" > "$wrapper"
    chmod +x "$wrapper"
    start_query "$wrapper" "$OUT/counted.log" --shards="$SHARDS" "${@:2}"
  else
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$1" "$BUILD/services/query/imagesearch-query" > "$wrapper"
    chmod +x "$wrapper"
    start_query "$wrapper" "$OUT/counted.log" --snapshot_root="${first[0]}" --load_model=false "${@:2}"
  fi
  PID="$QUERY_PID"
  PORT="$QUERY_PORT"
  pids+=("$PID")
}
load() {  # load N: N queries at 1 client, then the loadgen's summary.
  "$BUILD/tools/loadgen/imagesearch-loadgen" --target="127.0.0.1:$PORT" --kind=vector \
    --vectors="$QUERIES" --concurrency=1 --ef="$EF" --duration_s=600 --warmup_s=0 \
    --max_requests="$1" | tail -n 1
}

# Instructions: callgrind's counters zeroed after a warm-up, dumped after N.
hedge=()
[[ "$WHAT" == router ]] && hedge=(--hedge_after_ms=-1)
start_counted "valgrind --tool=callgrind --callgrind-out-file=$OUT/callgrind.out" "${hedge[@]}"
load 200 > /dev/null
callgrind_control -z "$PID" > /dev/null 2>&1
load "$N" > "$OUT/loadgen_callgrind.txt"
rm -f "$OUT"/callgrind.out.*
callgrind_control -d "$PID" > /dev/null 2>&1
for _ in $(seq 1 50); do compgen -G "$OUT/callgrind.out.*" > /dev/null && break; sleep 0.2; done
kill "$PID"; wait "$PID" 2>/dev/null || true
dumps=("$OUT"/callgrind.out.*)  # The one dump taken since the rm above.
dump="${dumps[0]}"
callgrind_annotate --inclusive=no "$dump" > "$OUT/callgrind.txt" 2> /dev/null || true
echo "$WHAT, $N queries at 1 client, ef $EF:"
awk -v n="$N" '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "  user-space instructions a query: %.0f\n", $1 / n }' \
  "$OUT/callgrind.txt"
# malloc's calls: the calls from each of its callers, summed (its block in
# the caller tree, whose lines read "< CALLER (COUNTx)").
# (awk reads to the end: an early exit would fail callgrind_annotate's write
# with SIGPIPE, and with pipefail the script.)
callgrind_annotate --tree=caller --threshold=100 "$dump" 2> /dev/null | awk -v n="$N" 'BEGIN { RS = "" }
  !found && /\*  [^\n]*malloc\.c:malloc \[/ {
    found = 1
    s = 0; m = split($0, line, "\n")
    for (i = 1; i <= m; i++) {
      if (line[i] ~ /  < / && match(line[i], /\([0-9,]+x\)/)) {
        c = substr(line[i], RSTART + 1, RLENGTH - 3); gsub(",", "", c); s += c
      }
    }
    printf "  malloc calls a query: %.1f\n", s / n
  }'

# System calls and context switches: the process at full speed, default flags.
start_counted ""
load 500 > /dev/null
events="context-switches"
for call in sendmsg recvmsg epoll_wait futex timerfd_settime read write; do
  events+=",syscalls:sys_enter_$call"
done
perf stat -e "$events" -p "$PID" -o "$OUT/syscalls.txt" &
stat_pid=$!
sleep 0.5
load "$N" > "$OUT/loadgen_syscalls.txt"
kill -INT "$stat_pid"; wait "$stat_pid" 2>/dev/null || true
awk -v n="$N" '$1 ~ /^[0-9,]+$/ { gsub(",", "", $1); sub("syscalls:sys_enter_", "", $2);
  printf "  %s a query: %.2f\n", $2, $1 / n }' "$OUT/syscalls.txt"
echo "  (perf counts from 0.5 s before the $N queries to their end; the process is idle then)"
