#!/usr/bin/env bash
# The query service's web page (GET /) in a real browser: indexes 100
# Fashion-MNIST images, serves them, and drives the page with Debian's
# Chromium through puppeteer-core (tests/e2e/web_page_test.mjs).
#   web_page_test.sh QUERY_BIN INDEXER_BIN DEFAULT_MODEL BUILD_DIR [SCREENSHOT_OUT]
# SCREENSHOT_OUT defaults to BUILD_DIR/web_page_test.png.
# Needs chromium (ci/install_deps.sh), node/npm and the npm registry once
# (puppeteer-core, pinned in tests/e2e/web/package.json, goes to
# BUILD_DIR/npm-web).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"

(($# >= 4)) || fail "usage: $0 QUERY_BIN INDEXER_BIN DEFAULT_MODEL BUILD_DIR [SCREENSHOT_OUT]"
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
QUERY="$(abs "$1")"; INDEXER="$(abs "$2")"; MODEL="$(abs "$3")"
mkdir -p "$4"; BUILD_DIR="$(cd "$4" && pwd)"
SHOT="${5:-$BUILD_DIR/web_page_test.png}"
mkdir -p "$(dirname "$SHOT")"; SHOT="$(abs "$SHOT")"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[[ -x "$CHROMIUM" ]] || fail "no Chromium at $CHROMIUM (apt-get install chromium; see ci/install_deps.sh)"
command -v node >/dev/null || fail "node is not installed"

TMP="$(mktemp -d)"
QUERY_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$QUERY_PID" ]]; then
    kill "$QUERY_PID" 2>/dev/null || true
    wait "$QUERY_PID" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -s "$TMP/query.log" ]]; then
    echo "--- query service log (tail)" >&2
    tail -n 20 "$TMP/query.log" >&2 || true
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
"$INDEXER" --input="$TMP/corpus/manifest.jsonl" --root="$TMP/snap" --model="$MODEL" --progress=none \
  --schema=class:keyword \
  >"$TMP/indexer.log" 2>&1 || fail "indexer failed: $(tail -n 20 "$TMP/indexer.log")"

# The query service with HTTP on a loopback port it picks; serving once gRPC listens.
start_query "$QUERY" "$TMP/query.log" --snapshot_root="$TMP/snap" --http_port=0
PORT="$QUERY_HTTP_PORT"
curl -sf -o /dev/null "http://127.0.0.1:$PORT/ping" || fail "query service: /ping is not 200 on port $PORT"

WEB_NPM_DIR="$NPM_DIR" CHROMIUM="$CHROMIUM" node "$here/web_page_test.mjs" \
  "http://127.0.0.1:$PORT" "$TMP/corpus/$IMAGE_PATH" "$IMAGE_ID" "$SHOT" "$TMP" ||
  fail "web page checks failed"
echo "PASS web_page_test (screenshot: $SHOT)"
