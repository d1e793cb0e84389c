# shellcheck shell=bash
# Shared helpers for the end-to-end shell tests. Source it.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }

# ensure_buf DIR: installs @bufbuild/buf (pinned in package.json) under DIR
# once, and prints the path of the buf binary.
ensure_buf() {
  local dir="$1" here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if [[ ! -x "$dir/node_modules/.bin/buf" ]]; then
    mkdir -p "$dir"
    cp "$here/package.json" "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  echo "$dir/node_modules/.bin/buf"
}

# start_query BINARY LOG ARGS...: starts the query service (or
# imagesearch-router, which takes the same --host/--port/--port_file) with
# ARGS on a loopback gRPC port it picks (--port=0; ARGS may add
# --http_port=0), stderr to LOG and stdout to LOG.out, and waits up to 120 s
# for its gRPC port, which listens once the first snapshot is loaded (the
# router: once it has found its shards). Sets QUERY_PID, QUERY_PORT
# and QUERY_HTTP_PORT (empty without HTTP) from its --port_file, LOG.ports.
start_query() {
  local bin="$1" log="$2"; shift 2
  local ports="$log.ports" i
  rm -f "$ports"
  "$bin" --host=127.0.0.1 --port=0 --port_file="$ports" "$@" >"$log.out" 2>"$log" &
  # shellcheck disable=SC2034  # for the caller
  QUERY_PID=$!
  QUERY_PORT=""
  for ((i = 0; i < 1200; i++)); do
    QUERY_PORT="$(port_of "$ports" grpc)"
    [[ -n "$QUERY_PORT" ]] && break
    kill -0 "$QUERY_PID" 2>/dev/null || fail "query service exited: $(tail -n 20 "$log")"
    sleep 0.1
  done
  if [[ -z "$QUERY_PORT" ]]; then
    kill "$QUERY_PID" 2>/dev/null || true
    fail "query service did not listen within 120 s: $(tail -n 20 "$log")"
  fi
  # shellcheck disable=SC2034  # for the caller
  QUERY_HTTP_PORT="$(port_of "$ports" http)"
}

# start_shard_replicas QUERY_BINARY COLLECTION LOG_DIR: one replica (no
# model) per shard root COLLECTION/shard-<i>-of-<S>, logs in LOG_DIR. Sets
# SHARD_PIDS, SHARD_ROOTS and SHARDS (their addresses in shard order, ';'
# between, as imagesearch-router's --shards takes them).
start_shard_replicas() {
  local bin="$1" coll="$2" logs="$3" first count i addresses=()
  first=("$coll"/shard-0-of-*)
  [[ -d "${first[0]}" ]] || fail "no shard-0-of-<S> root in $coll"
  count="${first[0]##*-of-}"
  SHARD_PIDS=()
  SHARD_ROOTS=()
  for ((i = 0; i < count; ++i)); do
    SHARD_ROOTS+=("$coll/shard-$i-of-$count")
    start_query "$bin" "$logs/shard-$i.log" --snapshot_root="${SHARD_ROOTS[i]}" --load_model=false
    SHARD_PIDS+=("$QUERY_PID")
    addresses+=("127.0.0.1:$QUERY_PORT")
  done
  # shellcheck disable=SC2034  # for the caller
  SHARDS="$(IFS=';'; echo "${addresses[*]}")"
}

# port_of FILE FRONT: the port of FRONT ("grpc" or "http") in the query
# service's --port_file FILE; empty while it does not listen.
port_of() {
  sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$1" 2>/dev/null || true
}

# wait_until CMD...: retries CMD for up to 20 s.
wait_until() {
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
