#!/usr/bin/env bash
# The README's set-up command: installs everything, builds, makes the default
# model, indexes real images with it, starts the query service, and queries it
# by image bytes and by id with buf curl (a grpcurl-style client), then over
# HTTP with curl (/ping, /invocations, the web page, /thumbs, /metrics).
#   ci/quickstart.sh            # runs the demo, then stops the service
#   SERVE=1 ci/quickstart.sh    # leaves the service running on :50051 (gRPC), :8080 (HTTP)
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install_deps.sh
ci/build.sh
BUILD="$(cd "${BUILD_DIR:-build}" && pwd)"
DEMO="${DEMO_DIR:-$BUILD/demo}"
mkdir -p "$DEMO"
source tests/e2e/lib.sh
BUF="$(ensure_buf "$BUILD")"

echo "== corpus: 1000 Fashion-MNIST images (Debian package dataset-fashion-mnist)"
tools/corpus/fashion_mnist.sh "$DEMO/corpus" 100
echo "== indexer: images -> default model -> HNSW -> snapshot"
"$BUILD/services/indexer/imagesearch-indexer" --input="$DEMO/corpus/manifest.jsonl" \
  --root="$DEMO/snapshots" --model="$BUILD/models/default/model.pt" --schema=class:keyword
"$BUILD/tools/make_snapshot/imagesearch-snapshot" list --root="$DEMO/snapshots"

echo "== query service on 127.0.0.1:50051 (gRPC) and :8080 (HTTP)"
"$BUILD/services/query/imagesearch-query" --snapshot_root="$DEMO/snapshots" \
  --host=127.0.0.1 --port=50051 --http_port=8080 >"$DEMO/query.stdout" 2>"$DEMO/query.log" &
QUERY_PID=$!
trap '[[ "${SERVE:-0}" == 1 ]] || kill $QUERY_PID 2>/dev/null || true' EXIT
URL=http://127.0.0.1:50051
call() { "$BUF" curl --protocol grpc --http2-prior-knowledge "$@"; }
wait_until bash -c "'$BUF' curl --protocol grpc --http2-prior-knowledge -d '{\"service\":\"imagesearch.v1.ImageSearch\"}' $URL/grpc.health.v1.Health/Check | grep -q '\"status\": \"SERVING\"'" \
  || { cat "$DEMO/query.log"; exit 1; }
echo "-- services (reflection):"; call --list-services "$URL"
echo "-- GetInfo:"; call "$URL/imagesearch.v1.ImageSearch/GetInfo"
IMG="$(head -1 "$DEMO/corpus/manifest.jsonl" | sed 's/.*"path": "\([^"]*\)".*/\1/')"
echo "-- Search by image bytes ($IMG):"
call -d "{\"image\":\"$(base64 -w0 "$DEMO/corpus/$IMG")\",\"top_k\":5}" "$URL/imagesearch.v1.ImageSearch/Search"
echo "-- Search by id (more like this):"
call -d '{"id":"fmnist-test-00001","top_k":5}' "$URL/imagesearch.v1.ImageSearch/Search"
HTTP=http://127.0.0.1:8080
echo "-- HTTP GET /ping: $(curl -s -o /dev/null -w '%{http_code}' $HTTP/ping)"
echo "-- HTTP POST /invocations, image bytes ($IMG):"
curl -s -H 'Content-Type: image/png' --data-binary @"$DEMO/corpus/$IMG" "$HTTP/invocations?top_k=3"; echo
echo "-- HTTP POST /invocations, JSON by id:"
curl -s -H 'Content-Type: application/json' -d '{"id":"fmnist-test-00001","top_k":3}' "$HTTP/invocations"; echo
echo "-- HTTP POST /invocations, by id, only boots (a filter on the class attribute):"
curl -s -H 'Content-Type: application/json' \
  -d '{"id":"fmnist-test-00001","top_k":3,"filter":{"must":[{"field":"class","match":{"keyword":"boot"}}]}}' \
  "$HTTP/invocations"; echo
echo "-- HTTP GET / (the web search page): $(curl -s -o /dev/null -w '%{http_code} %{content_type}' $HTTP/)"
echo "-- HTTP GET /thumbs/fmnist-test-00001: $(curl -s -o /dev/null -w '%{http_code} %{content_type}, %{size_download} bytes' $HTTP/thumbs/fmnist-test-00001)"
echo "-- HTTP GET /metrics (requests so far):"
curl -s "$HTTP/metrics" | grep '^imagesearch_requests_total'
if [[ "${SERVE:-0}" == 1 ]]; then
  echo "query service left running (pid $QUERY_PID): gRPC $URL, HTTP $HTTP; snapshots in $DEMO/snapshots"
  echo "web search page: $HTTP/  (open it in a browser: drop a picture, or click a result)"
fi
