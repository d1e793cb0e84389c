#!/usr/bin/env bash
# End to end with a real reflection-based client (buf curl, like grpcurl):
# lists, describes and calls every service of a running query service with no
# proto files at hand.
# Usage: buf_curl_test.sh QUERY_BINARY SNAPSHOT_TOOL WORK_DIR
source "$(dirname "$0")/lib.sh"
QUERY="$1"; SNAP="$2"; WORK="$3"
BUF="$(ensure_buf "$WORK/clients")"
T="$(mktemp -d)"; trap 'kill $QUERY_PID 2>/dev/null || true; rm -rf "$T"' EXIT

"$SNAP" synth --out="$T/v.npy" --count=2000 --dim=64 --seed=3 >/dev/null
"$SNAP" build --root="$T/root" --vectors="$T/v.npy" --metric=cosine --ef_construction=64 >/dev/null
start_query "$QUERY" "$T/query.log" --snapshot_root="$T/root" --poll_ms=100
URL="http://127.0.0.1:$QUERY_PORT"
curl_() { "$BUF" curl --protocol grpc --http2-prior-knowledge "$@"; }

services="$(curl_ --list-services "$URL")"
for s in imagesearch.v1.ImageSearch grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
  grep -qx "$s" <<<"$services" || fail "reflection does not list $s: $services"
done
methods="$(curl_ --list-methods "$URL")"
for m in Search Embed GetInfo; do
  grep -qx "imagesearch.v1.ImageSearch/$m" <<<"$methods" || fail "method $m not listed: $methods"
done

health="$(curl_ -d '{"service":"imagesearch.v1.ImageSearch"}' "$URL/grpc.health.v1.Health/Check")"
grep -q '"status": "SERVING"' <<<"$health" || fail "health: $health"

info="$(curl_ "$URL/imagesearch.v1.ImageSearch/GetInfo")"
grep -q '"vectorCount": "2000"' <<<"$info" || fail "GetInfo: $info"
grep -q '"dim": 64' <<<"$info" || fail "GetInfo dim: $info"

# More-like-this by id, including the item itself: it must come back first.
res="$(curl_ -d '{"id":"17","top_k":3,"include_self":true}' "$URL/imagesearch.v1.ImageSearch/Search")"
first_id="$(grep -m1 '"id"' <<<"$res" | sed 's/.*"id": "\([^"]*\)".*/\1/')"
[[ "$first_id" == "17" ]] || fail "Search by id: first hit is '$first_id': $res"
[[ "$(grep -c '"id"' <<<"$res")" == 3 ]] || fail "Search top_k=3: $res"
grep -q '"snapshotVersion": "1"' <<<"$res" || fail "no snapshot version: $res"

# A bad request gets INVALID_ARGUMENT with a precise message.
if bad="$(curl_ -d '{"vector":{"values":[1,2,3]}}' "$URL/imagesearch.v1.ImageSearch/Search" 2>&1)"; then
  fail "wrong-dimension query succeeded: $bad"
fi
grep -q 'invalid_argument' <<<"$bad" || fail "wrong code: $bad"
grep -q 'query vector has 3 values but snapshot v1 has dimension 64' <<<"$bad" || fail "message: $bad"

# Hot reload: publish v2 and see responses move to it.
"$SNAP" build --root="$T/root" --vectors="$T/v.npy" --metric=l2 --ef_construction=64 >/dev/null
wait_until bash -c "'$BUF' curl --protocol grpc --http2-prior-knowledge '$URL/imagesearch.v1.ImageSearch/GetInfo' | grep -q '\"snapshotVersion\": \"2\"'" \
  || fail "service did not move to v2"
echo "buf curl e2e: 1 passed, 0 failed"
