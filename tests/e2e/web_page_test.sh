#!/usr/bin/env bash
# The query service's web page (GET /) in a real browser: indexes 100
# Fashion-MNIST images, serves them, and drives the page with Debian's
# Chromium through puppeteer-core (tests/e2e/web_page_test.mjs).
#   web_page_test.sh QUERY_BIN INDEXER_BIN DEFAULT_MODEL BUILD_DIR [SCREENSHOT_OUT [ROUTER_BIN SNAPSHOT_BIN]]
# SCREENSHOT_OUT defaults to BUILD_DIR/web_page_test.png.
# With ROUTER_BIN and SNAPSHOT_BIN, the page is imagesearch-router's over the
# same images as a collection of 2 shards (indexer --embeddings_out, then
# imagesearch-snapshot build --shard_count=2), one replica per shard with
# --load_model=false and the router embedding with --model; the test then
# also kills shard 1's replica and checks the page's error and partial answers.
# Needs chromium (ci/install_deps.sh), node/npm and the npm registry once
# (puppeteer-core, pinned in tests/e2e/web/package.json, goes to
# BUILD_DIR/npm-web).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"

(($# >= 4)) || fail "usage: $0 QUERY_BIN INDEXER_BIN DEFAULT_MODEL BUILD_DIR [SCREENSHOT_OUT [ROUTER_BIN SNAPSHOT_BIN]]"
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
QUERY="$(abs "$1")"; INDEXER="$(abs "$2")"; MODEL="$(abs "$3")"
ROUTER=""; SNAPSHOT=""
if (($# >= 6)); then
  (($# == 7)) || fail "ROUTER_BIN needs SNAPSHOT_BIN"
  ROUTER="$(abs "$6")"; SNAPSHOT="$(abs "$7")"
fi
mkdir -p "$4"; BUILD_DIR="$(cd "$4" && pwd)"
SHOT="${5:-$BUILD_DIR/web_page_test.png}"
mkdir -p "$(dirname "$SHOT")"; SHOT="$(abs "$SHOT")"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[[ -x "$CHROMIUM" ]] || fail "no Chromium at $CHROMIUM (apt-get install chromium; see ci/install_deps.sh)"
command -v node >/dev/null || fail "node is not installed"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  local rc=$? pid log
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((rc != 0)); then
    for log in "$TMP"/*.log; do
      [[ -s "$log" && "$log" != */indexer.log && "$log" != */build.log ]] || continue
      echo "--- $(basename "$log") (tail)" >&2
      tail -n 20 "$log" >&2 || true
    done
  fi
  rm -rf "$TMP" || true
  exit "$rc"
}
trap cleanup EXIT

# puppeteer-core, installed once per build folder (again when the pin changes).
NPM_DIR="$BUILD_DIR/npm-web"
if [[ ! -f "$NPM_DIR/node_modules/puppeteer-core/package.json" ]] ||
   ! cmp -s "$here/web/package.json" "$NPM_DIR/package.json"; then
  mkdir -p "$NPM_DIR"
  cp "$here/web/package.json" "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null) ||
    fail "npm install puppeteer-core failed"
fi

# A small real corpus and its snapshot.
bash "$root/tools/corpus/fashion_mnist.sh" "$TMP/corpus" 10 >/dev/null
first="$(/usr/bin/python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).readline())
print(r["id"], r["path"])' "$TMP/corpus/manifest.jsonl")" || fail "cannot read the corpus manifest"
read -r IMAGE_ID IMAGE_PATH <<<"$first"
[[ -n "$IMAGE_ID" && -f "$TMP/corpus/$IMAGE_PATH" ]] || fail "no first image in the corpus manifest"
router_env=()
if [[ -z "$ROUTER" ]]; then
  "$INDEXER" --input="$TMP/corpus/manifest.jsonl" --root="$TMP/snap" --model="$MODEL" --progress=none \
    --schema=class:keyword \
    >"$TMP/indexer.log" 2>&1 || fail "indexer failed: $(tail -n 20 "$TMP/indexer.log")"
  # The query service with HTTP on a loopback port it picks; serving once gRPC listens.
  start_query "$QUERY" "$TMP/query.log" --snapshot_root="$TMP/snap" --http_port=0
  PIDS+=("$QUERY_PID")
  PORT="$QUERY_HTTP_PORT"
  what="query service"
else
  # The same images as a 2-shard collection, as the Indexed Job makes one.
  "$INDEXER" --input="$TMP/corpus/manifest.jsonl" --model="$MODEL" --progress=none \
    --shard=0/1 --embeddings_out="$TMP/emb" >"$TMP/indexer.log" 2>&1 ||
    fail "indexer --embeddings_out failed: $(tail -n 20 "$TMP/indexer.log")"
  "$SNAPSHOT" build --root="$TMP/coll" --shards="$TMP/emb" --model="$MODEL" --shard_count=2 \
    --collection=photos --schema=class:keyword >"$TMP/build.log" 2>&1 ||
    fail "snapshot build --shard_count=2 failed: $(tail -n 20 "$TMP/build.log")"
  targets=()
  shard_pids=()
  for s in 0 1; do
    start_query "$QUERY" "$TMP/shard$s.log" --snapshot_root="$TMP/coll/shard-$s-of-2" --load_model=false
    PIDS+=("$QUERY_PID")
    shard_pids+=("$QUERY_PID")
    targets+=("127.0.0.1:$QUERY_PORT")
  done
  start_query "$ROUTER" "$TMP/router.log" --http_port=0 --shards="${targets[0]};${targets[1]}" \
    --model="$MODEL"
  PIDS+=("$QUERY_PID")
  PORT="$QUERY_HTTP_PORT"
  router_env=(ROUTER_KILL_PID="${shard_pids[1]}" ROUTER_KILL_SHARD=1)
  what="router"
fi
curl -sf -o /dev/null "http://127.0.0.1:$PORT/ping" || fail "$what: /ping is not 200 on port $PORT"

env "${router_env[@]}" WEB_NPM_DIR="$NPM_DIR" CHROMIUM="$CHROMIUM" node "$here/web_page_test.mjs" \
  "http://127.0.0.1:$PORT" "$TMP/corpus/$IMAGE_PATH" "$IMAGE_ID" "$SHOT" "$TMP" ||
  fail "web page checks failed ($what)"
echo "PASS web_page_test, $what (screenshot: $SHOT)"
