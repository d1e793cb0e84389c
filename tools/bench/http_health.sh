#!/usr/bin/env bash
# Health under load (tools/bench/results/LOG.md, "Health under load"): GET /ping
# and gRPC health latency with the service idle (the machine's floor), then
# while 256 keep-alive connections POST images to /invocations, then with 500
# idle and 500 half-sent connections held open too. Prints
# imagesearch-loadgen's line (calls, error mix, its own /ping probe's
# p50/p99/max) and health_probe.py's lines (gRPC health and /ping from one
# Python client) for each.
#
#   tools/bench/http_health.sh QUERY_BINARY SNAPSHOT_ROOT IMAGES_DIR [SECONDS]
#
# QUERY_BINARY runs with default flags but --http_timeout_ms=20000 (below the
# clients' 30 s, so a request queued too long is answered 504 by the server
# rather than dropped by the client); it may be an older build, to compare.
# IMAGES_DIR holds the images to send (each must be a valid query). Loopback
# only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUERY="$1" ROOT="$2" IMAGES="$3" SECONDS_EACH="${4:-30}"
LOADGEN="${LOADGEN:-build/tools/loadgen/imagesearch-loadgen}"
source tools/bench/pinned_service.sh
WORK="$(mktemp -d)"
trap 'kill ${SERVICE_PID:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
HTTP_PORT="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$QUERY" --snapshot_root="$ROOT" --host=127.0.0.1 --port=0 --http_port="$HTTP_PORT" \
  --http_timeout_ms=20000 > "$WORK/out" 2> "$WORK/log" &
SERVICE_PID=$!
wait_serving "$WORK/out" "$WORK/log"
ulimit -n "$(ulimit -Hn)"
probe() {
  /usr/bin/python3 tools/bench/health_probe.py "127.0.0.1:$PORT" proto --http="$HTTP_PORT" \
    --seconds="$1" --every_ms=50
}
echo "== idle service, ${SECONDS_EACH} s"
probe "$SECONDS_EACH"
for held in 0 500; do
  echo "== 256 /invocations connections, $held idle + $held half-sent held open, ${SECONDS_EACH} s"
  probe "$SECONDS_EACH" &
  probe_pid=$!
  "$LOADGEN" --http="127.0.0.1:$HTTP_PORT" --kind=image --images="$IMAGES" --concurrency=256 \
    --duration_s="$SECONDS_EACH" --timeout_ms=30000 --ping_every_ms=50 \
    --idle_connections="$held" --half_sent_connections="$held"
  wait "$probe_pid"
done
