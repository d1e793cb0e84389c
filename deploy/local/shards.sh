#!/usr/bin/env bash
# Local sharded serving: S shards x R query replicas and imagesearch-router in
# front of them, all on loopback. The router balances over each shard's
# replicas itself (each call to the cheaper of two by latency and calls in
# flight, "peak EWMA"; deploy/README.md), so no nginx is needed.
#
#   COLLECTION=/srv/photos REPLICAS=2 deploy/local/shards.sh up
#   deploy/local/shards.sh status
#   deploy/local/shards.sh kill SHARD REPLICA    # SIGKILL one replica (a crash)
#   deploy/local/shards.sh stop SHARD REPLICA    # SIGTERM it (drains, exits)
#   deploy/local/shards.sh start SHARD REPLICA   # start it again, on its own port
#   deploy/local/shards.sh down                  # stop everything
#
# Environment (read by `up`; later commands reuse what `up` saved in RUN_DIR):
#   COLLECTION   a directory holding the collection's shard roots shard-<i>-of-<S>/
#                (imagesearch-snapshot build --shard_count=S); S is read from it (required)
#   REPLICAS     query replicas per shard (2)
#   ROUTER_PORT  the router's gRPC port (0: one picked below Linux's ephemeral range)
#   ROUTER_HTTP_PORT  its HTTP port: the web page, /invocations, /metrics (0: a free one)
#   MODEL        the collection's model.pt for the router (--model): image and text
#                queries embedded by the router (default: by a shard replica)
#   RUN_DIR      pid files, logs, port files (/tmp/imagesearch-shards)
#   BUILD_DIR    where imagesearch-query and imagesearch-router were built (build)
#   QUERY_ARGS   extra flags for every replica;  ROUTER_ARGS  extra flags for the router
#
# Each replica's gRPC port is fixed at `up` (the router's list of a shard's
# replicas is static), so `start` brings a replica back where the router's
# channel reconnects to it; its HTTP port is its own pick. RUN_DIR/router.ports
# holds {"grpc": N, "http": M}; RUN_DIR/replica-<shard>-<r>.ports each replica's.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${RUN_DIR:-/tmp/imagesearch-shards}"
STATE="$RUN_DIR/state.env"

die() { echo "shards.sh: $*" >&2; exit 1; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
port_of() { sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$1" 2>/dev/null || true; }

# pick_port: a port below Linux's ephemeral range, where no outgoing
# connection can hold it (as deploy/local/ctl.sh picks nginx's).
pick_port() {
  local low
  low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)"
  ((low > 11000)) || low=11000
  echo $((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
}

load_state() {
  [[ -f "$STATE" ]] || die "nothing is up in $RUN_DIR (run: deploy/local/shards.sh up)"
  # shellcheck disable=SC1090
  source "$STATE"
}

replica_port() { local v="PORT_$1_$2"; echo "${!v}"; }

# start_replica SHARD R: the replica on its fixed gRPC port; waits until it serves.
start_replica() {
  local s="$1" r="$2" name="replica-$1-$2" n
  alive "$RUN_DIR/$name.pid" && die "$name is already running (pid $(cat "$RUN_DIR/$name.pid"))"
  rm -f "$RUN_DIR/$name.ports"
  # shellcheck disable=SC2086
  "$QUERY_BIN" --snapshot_root="$COLLECTION/shard-$s-of-$SHARDS" --host=127.0.0.1 \
    --port="$(replica_port "$s" "$r")" --http_port=0 --port_file="$RUN_DIR/$name.ports" \
    $QUERY_ARGS >>"$RUN_DIR/$name.out" 2>>"$RUN_DIR/$name.log" &
  echo $! >"$RUN_DIR/$name.pid"
  for ((n = 0; n < 600; n++)); do
    [[ -n "$(port_of "$RUN_DIR/$name.ports" grpc)" ]] && return 0
    alive "$RUN_DIR/$name.pid" || die "$name exited: $(tail -n 3 "$RUN_DIR/$name.log")"
    sleep 0.1
  done
  die "$name is not serving after 60 s; see $RUN_DIR/$name.log"
}

start_router() {
  local targets="" s r n
  for ((s = 0; s < SHARDS; s++)); do
    ((s == 0)) || targets+=";"
    for ((r = 0; r < REPLICAS; r++)); do
      ((r == 0)) || targets+=","
      targets+="127.0.0.1:$(replica_port "$s" "$r")"
    done
  done
  rm -f "$RUN_DIR/router.ports"
  local model=()
  [[ -z "${MODEL:-}" ]] || model=(--model="$MODEL")
  # shellcheck disable=SC2086
  "$ROUTER_BIN" --shards="$targets" --host=127.0.0.1 --port="$ROUTER_PORT" \
    --http_port="${ROUTER_HTTP_PORT:-0}" --port_file="$RUN_DIR/router.ports" "${model[@]}" $ROUTER_ARGS \
    >>"$RUN_DIR/router.out" 2>>"$RUN_DIR/router.log" &
  echo $! >"$RUN_DIR/router.pid"
  for ((n = 0; n < 600; n++)); do
    [[ -n "$(port_of "$RUN_DIR/router.ports" grpc)" ]] && return 0
    alive "$RUN_DIR/router.pid" || die "the router exited: $(tail -n 3 "$RUN_DIR/router.log")"
    sleep 0.1
  done
  die "the router is not serving after 60 s; see $RUN_DIR/router.log"
}

cmd_up() {
  [[ -n "${COLLECTION:-}" ]] || die "set COLLECTION to a directory of shard-<i>-of-<S> roots"
  [[ -f "$STATE" ]] && die "already up in $RUN_DIR (deploy/local/shards.sh down first)"
  local layouts
  layouts="$(find "$COLLECTION" -maxdepth 1 -name 'shard-*-of-*' -type d | sed 's/.*-of-//' | sort -u)"
  [[ -n "$layouts" ]] || die "$COLLECTION holds no shard-<i>-of-<S> root"
  [[ "$layouts" != *$'\n'* ]] ||
    die "$COLLECTION holds shard roots of more than one shard count ($(echo "$layouts" | paste -sd, -)); a collection has one" \
      "shard count (a reshard writes new roots: imagesearch-snapshot reshard --root=NEW_DIR)"
  SHARDS="$layouts"
  REPLICAS="${REPLICAS:-2}"
  ROUTER_PORT="${ROUTER_PORT:-0}"
  BUILD_DIR="${BUILD_DIR:-$REPO/build}"
  QUERY_BIN="$BUILD_DIR/services/query/imagesearch-query"
  ROUTER_BIN="$BUILD_DIR/services/router/imagesearch-router"
  [[ -x "$QUERY_BIN" && -x "$ROUTER_BIN" ]] || die "build first: no $QUERY_BIN or $ROUTER_BIN"
  mkdir -p "$RUN_DIR"
  {
    echo "COLLECTION='$COLLECTION'"; echo "SHARDS=$SHARDS"; echo "REPLICAS=$REPLICAS"
    echo "QUERY_BIN='$QUERY_BIN'"; echo "ROUTER_BIN='$ROUTER_BIN'"
    echo "QUERY_ARGS='${QUERY_ARGS:-}'"; echo "ROUTER_ARGS='${ROUTER_ARGS:-}'"
    echo "MODEL='${MODEL:-}'"; echo "ROUTER_HTTP_PORT=${ROUTER_HTTP_PORT:-0}"
    ((ROUTER_PORT != 0)) || ROUTER_PORT="$(pick_port)"
    echo "ROUTER_PORT=$ROUTER_PORT"
    local s r
    for ((s = 0; s < SHARDS; s++)); do
      for ((r = 0; r < REPLICAS; r++)); do echo "PORT_${s}_${r}=$(pick_port)"; done
    done
  } >"$STATE"
  load_state
  local s r
  for ((s = 0; s < SHARDS; s++)); do
    [[ -d "$COLLECTION/shard-$s-of-$SHARDS" ]] || die "$COLLECTION lacks shard-$s-of-$SHARDS"
    for ((r = 0; r < REPLICAS; r++)); do start_replica "$s" "$r"; done
  done
  start_router
  echo "up: $SHARDS shards x $REPLICAS replicas; router gRPC 127.0.0.1:$(port_of "$RUN_DIR/router.ports" grpc)," \
    "web page http://127.0.0.1:$(port_of "$RUN_DIR/router.ports" http)/"
}

cmd_status() {
  load_state
  local s r name state
  for ((s = 0; s < SHARDS; s++)); do
    for ((r = 0; r < REPLICAS; r++)); do
      name="replica-$s-$r"
      if alive "$RUN_DIR/$name.pid"; then state=up; else state=down; fi
      echo "shard $s replica $r: $state (gRPC 127.0.0.1:$(replica_port "$s" "$r"))"
    done
  done
  if alive "$RUN_DIR/router.pid"; then state=up; else state=down; fi
  echo "router: $state (gRPC 127.0.0.1:$(port_of "$RUN_DIR/router.ports" grpc)," \
    "HTTP 127.0.0.1:$(port_of "$RUN_DIR/router.ports" http))"
}

check_replica() {
  if ! [[ "$1" =~ ^[0-9]+$ && "$2" =~ ^[0-9]+$ ]] || (($1 >= SHARDS || $2 >= REPLICAS)); then
    die "no replica '$1 $2': shards 0..$((SHARDS - 1)), replicas 0..$((REPLICAS - 1))"
  fi
}

signal_replica() {
  local sig="$1" name="replica-$2-$3" pid n
  alive "$RUN_DIR/$name.pid" || die "$name is not running"
  pid="$(cat "$RUN_DIR/$name.pid")"
  kill "-$sig" "$pid"
  for ((n = 0; n < 300; n++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "$name (pid $pid) did not exit"
}

cmd_down() {
  load_state
  local f n
  for f in "$RUN_DIR"/router.pid "$RUN_DIR"/replica-*.pid; do
    [[ -f "$f" ]] || continue
    if alive "$f"; then kill -TERM "$(cat "$f")" 2>/dev/null || true; fi
  done
  for f in "$RUN_DIR"/router.pid "$RUN_DIR"/replica-*.pid; do
    [[ -f "$f" ]] || continue
    for ((n = 0; n < 100; n++)); do alive "$f" || break; sleep 0.1; done
    if alive "$f"; then kill -KILL "$(cat "$f")" 2>/dev/null || true; fi
    rm -f "$f"
  done
  rm -f "$STATE"
  echo "down"
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  kill | stop | start)
    load_state
    [[ $# -eq 3 ]] || die "usage: shards.sh $1 SHARD REPLICA"
    check_replica "$2" "$3"
    case "$1" in
      kill) signal_replica KILL "$2" "$3" ;;
      stop) signal_replica TERM "$2" "$3" ;;
      start) start_replica "$2" "$3" ;;
    esac ;;
  down) cmd_down ;;
  *) die "usage: shards.sh up|status|kill|stop|start|down (see the comment at its top)" ;;
esac
