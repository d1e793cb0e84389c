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

# start_query BINARY LOG ARGS...: starts the query service on a free loopback
# port; sets QUERY_PID and QUERY_PORT.
start_query() {
  local bin="$1" log="$2"; shift 2
  local fifo; fifo="$(mktemp -u)"; mkfifo "$fifo"
  "$bin" --host=127.0.0.1 --port=0 "$@" >"$fifo" 2>"$log" &
  # shellcheck disable=SC2034  # for the caller
  QUERY_PID=$!
  local line; read -r -t 20 line <"$fifo" || fail "query service did not start: $(cat "$log")"
  rm -f "$fifo"
  QUERY_PORT="${line##* }"
  [[ "$QUERY_PORT" =~ ^[0-9]+$ ]] || fail "bad start line '$line'"
}

# wait_until CMD...: retries CMD for up to 20 s.
wait_until() {
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
