#!/usr/bin/env bash
# Context switches a second of an idle imagesearch-query (all its threads,
# from /proc/<pid>/task/*/status), SECS (3) seconds after WARMUP (2) seconds
# of start-up, for each binary given: a replica that serves no calls should
# wake (almost) no thread.
#
# Usage: tools/bench/idle_wakeups.sh SNAPSHOT_ROOT QUERY_BINARY [QUERY_BINARY...]
# Example (tools/bench/results/LOG.md, "An idle replica's threads sleep"):
#   tools/bench/idle_wakeups.sh /tmp/router_bench/n100000-d128-s4-coll/shard-0-of-4 \
#     build/services/query/imagesearch-query
set -euo pipefail
ROOT="$1"; shift
SECS="${SECS:-3}"; WARMUP="${WARMUP:-2}"
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../../tests/e2e/lib.sh"
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
switches() { cat /proc/"$1"/task/*/status | awk '/voluntary_ctxt_switches/ { s += $2 } END { print s }'; }
for bin in "$@"; do
  start_query "$bin" "$log/query.log" --snapshot_root="$ROOT" --load_model=false
  sleep "$WARMUP"
  before="$(switches "$QUERY_PID")"
  sleep "$SECS"
  after="$(switches "$QUERY_PID")"
  echo "$bin: $(((after - before) / SECS)) context switches a second idle, $(ls /proc/"$QUERY_PID"/task | wc -l) threads"
  kill "$QUERY_PID"
  wait "$QUERY_PID" 2>/dev/null || true
done
