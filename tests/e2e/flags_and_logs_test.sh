#!/usr/bin/env bash
# Each binary's --help lists its own flags and exits 0; --log_format=json makes every
# log line of the query service (the dlopen'ed model runtime's included, as
# libimagesearch_common is one shared copy) a JSON object.
#   flags_and_logs_test.sh QUERY INDEXER SNAPSHOT_TOOL [DEFAULT_MODEL]
source "$(dirname "$0")/lib.sh"
query=$1 indexer=$2 tool=$3 model=${4:-}
work=$(mktemp -d)
trap 'if [[ -n ${QUERY_PID:-} ]]; then kill "$QUERY_PID" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

check_help() {  # BINARY FLAG...
  local bin=$1; shift
  local out rc=0; out=$("$bin" --help 2>&1) || rc=$?
  ((rc == 0)) || fail "$bin --help exited $rc (a help request is no failure)"
  grep -q "No flags matched" <<<"$out" && fail "$bin --help: No flags matched"
  for flag in "$@" log_format; do
    grep -q -- "--$flag " <<<"$out" || fail "$bin --help does not list --$flag"
  done
  echo "ok: $(basename "$bin") --help lists $* log_format"
}
check_help "$query" snapshot_root http_port port_file max_inflight_requests max_queued_embeds max_batch
check_help "$indexer" input root model batch
check_help "$tool" vectors metric keep

"$query" --snapshot_root="$work" --log_format=xml >/dev/null 2>"$work/bad.log" && fail "--log_format=xml accepted"
grep -q "log format must be 'text' or 'json', got 'xml'" "$work/bad.log" || fail "no clear --log_format error"
# Ports: -1 is off, below it or past 65535 is refused, both off is nothing to serve.
for bad in "--http_port=-2|--http_port=-2: give a port" "--port=65536|--port=65536: give a port" \
           "--port=-1|nothing to serve"; do
  rc=0
  "$query" --snapshot_root="$work" "${bad%%|*}" >/dev/null 2>"$work/bad.log" || rc=$?
  if ((rc != 2)) || ! grep -q -- "${bad#*|}" "$work/bad.log"; then
    fail "${bad%%|*}: exit $rc, $(cat "$work/bad.log")"
  fi
done
echo "ok: bad port flags exit 2 with a clear message"

# JSON logs: a served snapshot (with a model when one is given, so the
# plugin loads and logs too), then SIGTERM.
if [[ -n $model ]]; then
  "$indexer" --input="$(dirname "$0")/../data/default_model/inputs" --root="$work/root" \
    --model="$model" --progress=none --ef_construction=32 --log_format=json \
    >/dev/null 2>"$work/indexer.log" || fail "indexer: $(cat "$work/indexer.log")"
else
  "$tool" synth --out="$work/v.npy" --count=200 --dim=8 >/dev/null
  "$tool" build --root="$work/root" --vectors="$work/v.npy" --metric=l2 >/dev/null
fi
start_query "$query" "$work/query.log" --snapshot_root="$work/root" --log_format=json
wait_until grep -q '"serving snapshot v1' "$work/query.log" || fail "not serving: $(cat "$work/query.log")"
kill -TERM "$QUERY_PID"; wait "$QUERY_PID" || fail "query service exit status $?"
lines=$(wc -l <"$work/query.log")
((lines >= 3)) || fail "expected at least 3 log lines, got $lines"
/usr/bin/python3 - "$work/query.log" "$work/indexer.log" <<'PY' || fail "a log line is not JSON"
import json, sys
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        rec = json.loads(line)
        assert set(rec) == {"time", "level", "msg"}, rec
        assert rec["level"] in ("info", "warning", "error"), rec
PY
if [[ -n $model ]]; then
  grep -q '"loaded the model runtime' "$work/query.log" || fail "the model runtime did not log"
fi
echo "ok: $lines JSON log lines from the query service"
