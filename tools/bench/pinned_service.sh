# shellcheck shell=bash
# Sourced by the bench scripts that start imagesearch-query themselves.
#
# start_pinned_service STDOUT LOG COMMAND...: runs COMMAND (the service binary
# and its flags, or `env VAR=VALUE ... BINARY ...`) pinned to core 0 with
# --port=0 --host=127.0.0.1, its stdout to STDOUT and stderr to LOG, sets
# SERVICE_PID, and waits as wait_serving does (which sets PORT). Callers own
# the process: set an EXIT trap that kills ${SERVICE_PID:-} before calling.
start_pinned_service() {
  local out="$1" log="$2"
  shift 2
  taskset -c 0 "$@" --port=0 --host=127.0.0.1 > "$out" 2> "$log" &
  # shellcheck disable=SC2034  # for the caller
  SERVICE_PID=$!
  wait_serving "$out" "$log"
}

# wait_serving STDOUT LOG: waits (up to 120 s) until the service has printed
# its port to STDOUT and "serving snapshot v" to LOG, and sets PORT. The port
# opens before the snapshot is loaded (and checksummed), so a load started on
# the port alone would first measure UNAVAILABLE answers. Returns 1, with the
# log on stderr, if the service does not get there.
wait_serving() {
  local out="$1" log="$2"
  PORT=""
  for _ in $(seq 1 1200); do
    [[ -z "$PORT" ]] && PORT="$(sed -n 's/^listening on port \([0-9]*\).*/\1/p' "$out" | head -1)"
    [[ -n "$PORT" ]] && grep -q "serving snapshot v" "$log" && return 0
    sleep 0.1
  done
  echo "imagesearch-query is not serving after 120 s; its log ($log):" >&2
  cat "$log" >&2
  return 1
}
