#!/usr/bin/env bash
# Local scale-out: N query replicas on one snapshot root behind Debian's nginx,
# which balances gRPC (grpc_pass, HTTP/2) and HTTP. All on loopback.
#
#   SNAPSHOT_ROOT=/srv/snapshots REPLICAS=3 deploy/local/ctl.sh up
#   deploy/local/ctl.sh status
#   deploy/local/ctl.sh kill 1      # SIGKILL replica 1 (a crash)
#   deploy/local/ctl.sh stop 1      # out of nginx, then SIGTERM replica 1 (drains, exits)
#   deploy/local/ctl.sh start 1     # start replica 1 again
#   deploy/local/ctl.sh restart 1   # stop + start
#   deploy/local/ctl.sh down        # stop everything
#
# deploy/local/up.sh and down.sh are the same as `ctl.sh up` and `ctl.sh down`.
#
# Environment (read by `up`; later commands reuse what `up` saved in RUN_DIR):
#   SNAPSHOT_ROOT  the snapshot root every replica serves (required)
#   REPLICAS       number of replicas (3)
#   GRPC_PORT      nginx's gRPC port (50051);  HTTP_PORT  nginx's HTTP port (8080). 0: a port
#                  ctl.sh picks below Linux's ephemeral range (so no outgoing connection holds
#                  it); if nginx finds it taken, `up` starts nginx again on other ones (10 tries)
#   RUN_DIR        pid files, logs, port files, nginx.conf (/tmp/imagesearch-local)
#   BUILD_DIR      where imagesearch-query was built (build)
#   QUERY_ARGS     extra flags for every replica (e.g. --poll_ms=200)
#
# Ports, as JSON {"grpc": N, "http": M}: RUN_DIR/nginx.ports has nginx's; each replica listens on
# ports it picks (--port=0 --http_port=0) and reports them in RUN_DIR/replica-I.ports (its
# --port_file). nginx's upstreams are generated from those files, so `start` and `restart`
# rewrite nginx.conf and reload nginx once the replica serves (a graceful reload: the old workers
# finish the calls they have). `stop` and `restart` first take the replica out of nginx and wait
# for the old workers, then send SIGTERM: deregister, then drain, as Kubernetes' preStop does.
#
# Retries (see deploy/README.md): nginx passes a call to the next replica when
# the connection fails or is refused, times out, or is reset before an answer
# (`grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent`;
# every imagesearch RPC is read-only, so retrying is safe), at most 3 tries.
# A replica that is draining (SIGTERM) has already closed its listener and
# sent GOAWAY, so nginx moves on. RESOURCE_EXHAUSTED (overload) is not retried.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${RUN_DIR:-/tmp/imagesearch-local}"
STATE="$RUN_DIR/state.env"

die() { echo "ctl.sh: $*" >&2; exit 1; }

load_state() {
  [[ -f "$STATE" ]] || die "nothing is up in $RUN_DIR (run: deploy/local/ctl.sh up)"
  # shellcheck disable=SC1090
  source "$STATE"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# wait_http URL SECONDS: until URL answers 200.
wait_http() {
  local url="$1" secs="$2" i
  for ((i = 0; i < secs * 10; i++)); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

# port_of FILE FRONT: the port of FRONT ("grpc" or "http") in a port file; empty if none.
port_of() {
  sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$1" 2>/dev/null || true
}

start_replica() {
  local i="$1" pidf="$RUN_DIR/replica-$1.pid"
  alive "$pidf" && die "replica $i is already running (pid $(cat "$pidf"))"
  rm -f "$RUN_DIR/replica-$i.ports" "$RUN_DIR/replica-$i.draining"
  # shellcheck disable=SC2086
  "$QUERY_BIN" --snapshot_root="$SNAPSHOT_ROOT" --host=127.0.0.1 --port=0 --http_port=0 \
    --port_file="$RUN_DIR/replica-$i.ports" $QUERY_ARGS \
    >>"$RUN_DIR/replica-$i.out" 2>>"$RUN_DIR/replica-$i.log" &
  echo $! >"$pidf"
}

# wait_replica I: until replica I's gRPC port listens (it opens once the
# snapshot is loaded) and its /ping answers 200.
wait_replica() {
  local i="$1" ports="$RUN_DIR/replica-$1.ports" n
  for ((n = 0; n < 600; n++)); do
    if [[ -n "$(port_of "$ports" grpc)" ]]; then
      [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            "http://127.0.0.1:$(port_of "$ports" http)/ping" || true)" == 200 ]] && return 0
      die "replica $i listens but /ping is not 200; see $RUN_DIR/replica-$i.log"
    fi
    alive "$RUN_DIR/replica-$i.pid" ||
      die "replica $i exited: $(tail -n 3 "$RUN_DIR/replica-$i.log")"
    sleep 0.1
  done
  die "replica $i is not serving after 60 s; see $RUN_DIR/replica-$i.log"
}

# deregister_replica I: takes replica I out of nginx's upstreams before it is
# stopped (as a Kubernetes endpoint is removed before its preStop sleep ends):
# a graceful reload without it, then waits (up to 10 s) for the old workers to
# finish the calls they had. Without this, a call nginx sends in the moment
# between SIGTERM and the replica's GOAWAY reaching it would be cancelled by
# gRPC's shutdown, and a client without retries would see CANCELLED. The
# marker file keeps a concurrent `start` of another replica from putting it
# back. If it is the only replica nginx has, it stays (nothing else could
# take its calls).
deregister_replica() {
  local i="$1" n others=0 j
  alive "$RUN_DIR/nginx.pid" || return 0
  alive "$RUN_DIR/replica-$i.pid" || return 0
  for ((j = 0; j < REPLICAS; j++)); do
    ((j != i)) && [[ ! -e "$RUN_DIR/replica-$j.draining" ]] &&
      [[ -n "$(port_of "$RUN_DIR/replica-$j.ports" grpc)" ]] && others=$((others + 1))
  done
  ((others > 0)) || return 0
  touch "$RUN_DIR/replica-$i.draining"
  # `nginx -s reload` only signals the master; the workers that predate it
  # keep the old upstreams until they exit, so wait for those very processes.
  local old_workers w
  old_workers="$(ps -o pid= --ppid "$(cat "$RUN_DIR/nginx.pid")" 2>/dev/null || true)"
  reload_nginx
  for ((n = 0; n < 100; n++)); do
    w=""
    for w in $old_workers; do kill -0 "$w" 2>/dev/null && break; w=""; done
    [[ -z "$w" ]] && break
    sleep 0.1
  done
}

# signal_replica SIG I: sends SIG and waits (up to 30 s) for the process to
# go; its port file goes with it, so nginx.conf leaves it out from then on.
signal_replica() {
  local sig="$1" i="$2" pidf="$RUN_DIR/replica-$2.pid" pid n
  alive "$pidf" || { rm -f "$pidf" "$RUN_DIR/replica-$i.ports"; return 0; }
  pid="$(cat "$pidf")"
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((n = 0; n < 300; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "replica $i (pid $pid) did not exit after SIG$sig"
  rm -f "$pidf" "$RUN_DIR/replica-$i.ports" "$RUN_DIR/replica-$i.draining"
}

# write_nginx_conf: nginx.conf (replaced atomically) with nginx on GRPC_PORT
# and HTTP_PORT and, as upstreams, every replica whose port file names both
# ports and that is not being stopped (deregister_replica).
write_nginx_conf() {
  local grpc_servers="" http_servers="" i g h user=""
  for ((i = 0; i < REPLICAS; i++)); do
    g="$(port_of "$RUN_DIR/replica-$i.ports" grpc)" h="$(port_of "$RUN_DIR/replica-$i.ports" http)"
    [[ -n "$g" && -n "$h" && ! -e "$RUN_DIR/replica-$i.draining" ]] || continue
    grpc_servers+="    server 127.0.0.1:$g max_fails=1 fail_timeout=1s;"$'\n'
    http_servers+="    server 127.0.0.1:$h max_fails=1 fail_timeout=1s;"$'\n'
  done
  [[ -n "$grpc_servers" ]] || die "no replica is serving: nothing for nginx to balance"
  [[ "$(id -u)" == 0 ]] && user="user nobody nogroup;"
  mkdir -p "$RUN_DIR/nginx-tmp"
  chmod 1777 "$RUN_DIR/nginx-tmp"
  cat >"$RUN_DIR/nginx.conf.tmp" <<CONF
# Generated by deploy/local/ctl.sh up.
$user
worker_processes 1;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN_DIR/nginx-tmp/body;
  proxy_temp_path $RUN_DIR/nginx-tmp/proxy;
  fastcgi_temp_path $RUN_DIR/nginx-tmp/fastcgi;
  uwsgi_temp_path $RUN_DIR/nginx-tmp/uwsgi;
  scgi_temp_path $RUN_DIR/nginx-tmp/scgi;

  upstream imagesearch_grpc {
$grpc_servers    keepalive 64;
  }
  upstream imagesearch_http {
$http_servers    keepalive 64;
  }

  # gRPC (HTTP/2 cleartext) on GRPC_PORT.
  server {
    listen 127.0.0.1:$GRPC_PORT http2;
    client_max_body_size 16m;
    location / {
      grpc_pass grpc://imagesearch_grpc;
      grpc_connect_timeout 1s;
      grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
      grpc_next_upstream_tries 3;
      grpc_next_upstream_timeout 10s;
    }
  }

  # HTTP (/invocations, /ping, /metrics of one replica, the web page) on HTTP_PORT.
  server {
    listen 127.0.0.1:$HTTP_PORT;
    client_max_body_size 6m;
    location / {
      proxy_pass http://imagesearch_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_next_upstream_timeout 10s;
    }
  }
}
CONF
  mv "$RUN_DIR/nginx.conf.tmp" "$RUN_DIR/nginx.conf"
}

nginx_() { nginx -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR" -g "error_log $RUN_DIR/nginx-error.log;" "$@"; }

# pick_port: a port below Linux's ephemeral range, where no outgoing
# connection is given one; nginx's bind is what tells whether it is free.
pick_port() {
  local low
  low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)"
  ((low > 11000)) || low=11000
  echo $((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
}

# start_nginx: nginx on GRPC_PORT and HTTP_PORT; with 0 for either, on ports
# picked here, picked again while nginx finds one taken.
start_nginx() {
  local want_grpc="$GRPC_PORT" want_http="$HTTP_PORT" try
  for ((try = 0; try < 10; try++)); do
    ((want_grpc != 0)) || GRPC_PORT="$(pick_port)"
    ((want_http != 0)) || HTTP_PORT="$(pick_port)"
    write_nginx_conf
    nginx_ -t -q || die "nginx rejected $RUN_DIR/nginx.conf"
    nginx_ 2>"$RUN_DIR/nginx-start.err" && return 0
    local taken
    taken="$(grep -m1 -o 'bind() to [^ ]*:[0-9]* failed' "$RUN_DIR/nginx-start.err" | grep -o ':[0-9]* ' | tr -d ': ')"
    # Picking again helps only when the port taken is one picked here.
    if [[ -z "$taken" ]] || ((taken == want_grpc || taken == want_http)); then
      die "nginx did not start: $(tail -n 3 "$RUN_DIR/nginx-start.err")"
    fi
    echo "ctl.sh: nginx: $(grep -m1 -o 'bind() to [^ ]* failed' "$RUN_DIR/nginx-start.err"); other ports" >&2
  done
  die "nginx found its ports taken 10 times: $(tail -n 3 "$RUN_DIR/nginx-start.err")"
}

# reload_nginx: nginx.conf from the replicas' current ports, and a graceful
# reload; one at a time (concurrent `start`s take turns).
reload_nginx() {
  alive "$RUN_DIR/nginx.pid" || return 0
  (
    flock 9
    write_nginx_conf
    nginx_ -s reload 2>"$RUN_DIR/nginx-reload.err" ||
      die "nginx reload failed: $(tail -n 3 "$RUN_DIR/nginx-reload.err")"
  ) 9>"$RUN_DIR/nginx.lock"
}

save_state() {
  {
    printf 'SNAPSHOT_ROOT=%q\nREPLICAS=%q\nGRPC_PORT=%q\nHTTP_PORT=%q\n' \
      "$SNAPSHOT_ROOT" "$REPLICAS" "$GRPC_PORT" "$HTTP_PORT"
    printf 'QUERY_ARGS=%q\nQUERY_BIN=%q\n' "$QUERY_ARGS" "$QUERY_BIN"
  } >"$STATE"
}

up_failed() {
  local rc=$?
  ((rc != 0)) || return 0
  cmd_down >/dev/null 2>&1 || true
  echo "ctl.sh: up failed; stopped the replicas it had started. Ports taken? GRPC_PORT=0 HTTP_PORT=0 picks free ones." >&2
  exit "$rc"
}

cmd_up() {
  : "${SNAPSHOT_ROOT:?set SNAPSHOT_ROOT to the snapshot root to serve}"
  [[ -d "$SNAPSHOT_ROOT" ]] || die "SNAPSHOT_ROOT $SNAPSHOT_ROOT is not a directory"
  REPLICAS="${REPLICAS:-3}" GRPC_PORT="${GRPC_PORT:-50051}" HTTP_PORT="${HTTP_PORT:-8080}"
  QUERY_ARGS="${QUERY_ARGS:-}"
  local build="${BUILD_DIR:-$REPO/build}"
  QUERY_BIN="$(cd "$build" && pwd)/services/query/imagesearch-query"
  [[ -x "$QUERY_BIN" ]] || die "no $QUERY_BIN; build first (ci/build.sh)"
  command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
  [[ -f "$STATE" ]] && alive "$RUN_DIR/nginx.pid" && die "already up in $RUN_DIR (ctl.sh down first)"
  mkdir -p "$RUN_DIR"
  SNAPSHOT_ROOT="$(cd "$SNAPSHOT_ROOT" && pwd)"
  save_state
  # All or nothing: a step that fails (nginx's ports taken, a replica that
  # does not serve) stops what up started, so nothing is left to `down`.
  trap up_failed EXIT
  local i
  for ((i = 0; i < REPLICAS; i++)); do start_replica "$i"; done
  for ((i = 0; i < REPLICAS; i++)); do wait_replica "$i"; done
  start_nginx
  save_state
  printf '{"grpc": %d, "http": %d}\n' "$GRPC_PORT" "$HTTP_PORT" >"$RUN_DIR/nginx.ports.tmp"
  mv "$RUN_DIR/nginx.ports.tmp" "$RUN_DIR/nginx.ports"
  wait_http "http://127.0.0.1:$HTTP_PORT/ping" 20 || die "nginx does not answer on :$HTTP_PORT"
  trap - EXIT
  echo "up: $REPLICAS replicas of $SNAPSHOT_ROOT behind nginx"
  echo "  gRPC  127.0.0.1:$GRPC_PORT  (replicas: deploy/local/ctl.sh status)"
  echo "  HTTP  http://127.0.0.1:$HTTP_PORT/  (web page, /invocations, /ping)"
  echo "  logs  $RUN_DIR"
}

cmd_down() {
  [[ -f "$STATE" ]] || { echo "nothing is up in $RUN_DIR"; return 0; }
  load_state
  if alive "$RUN_DIR/nginx.pid"; then
    nginx_ -s quit || true
    local n
    for ((n = 0; n < 100; n++)); do alive "$RUN_DIR/nginx.pid" || break; sleep 0.1; done
  fi
  local i
  for ((i = 0; i < REPLICAS; i++)); do signal_replica TERM "$i"; done
  rm -f "$STATE" "$RUN_DIR/nginx.ports"
  echo "down: nginx and $REPLICAS replicas stopped"
}

cmd_status() {
  load_state
  local i pidf
  for ((i = 0; i < REPLICAS; i++)); do
    pidf="$RUN_DIR/replica-$i.pid"
    if alive "$pidf"; then
      local ports="$RUN_DIR/replica-$i.ports" http
      http="$(port_of "$ports" http)"
      echo "replica $i: pid $(cat "$pidf"), gRPC :$(port_of "$ports" grpc), HTTP :$http, $(curl -s --max-time 2 "http://127.0.0.1:$http/info" | sed -n 's/.*"snapshot_version":"\([0-9]*\)".*/v\1/p')"
    else
      echo "replica $i: down"
    fi
  done
  alive "$RUN_DIR/nginx.pid" && echo "nginx: pid $(cat "$RUN_DIR/nginx.pid"), gRPC :$GRPC_PORT, HTTP :$HTTP_PORT" ||
    echo "nginx: down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) load_state; signal_replica KILL "${2:?replica number}" ;;
  stop) load_state; deregister_replica "${2:?replica number}"; signal_replica TERM "$2" ;;
  start) load_state; start_replica "${2:?replica number}"; wait_replica "$2"; reload_nginx ;;
  restart)
    load_state; deregister_replica "${2:?replica number}"; signal_replica TERM "$2"
    start_replica "$2"; wait_replica "$2"
    reload_nginx ;;
  *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
