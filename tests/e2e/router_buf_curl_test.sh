#!/usr/bin/env bash
# imagesearch-router's own gRPC health and reflection (services/router/
# health_reflection.h) with real clients: buf curl lists, describes and calls
# the router's services through reflection, by both protocol versions (v1,
# and v1alpha as older grpcurl speaks it); health Check answers for the
# server and the ImageSearch service and refuses an unknown one; a Watch
# stream sees SERVING, then NOT_SERVING when the router is told to stop, and
# ends with OK.
# Two shards of 2,000 synthetic rows, one replica each (no model).
# Usage: router_buf_curl_test.sh QUERY_BINARY ROUTER_BINARY SNAPSHOT_TOOL WORK_DIR
source "$(dirname "$0")/lib.sh"
QUERY="$1"; ROUTER="$2"; SNAP="$3"; WORK="$4"
BUF="$(ensure_buf "$WORK/clients")"
T="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$T"' EXIT

"$SNAP" synth --out="$T/v.npy" --count=2000 --dim=32 --seed=5 >/dev/null
"$SNAP" build --root="$T/coll" --vectors="$T/v.npy" --shard_count=2 --collection=c \
  --threads=1 --m=8 --ef_construction=40 >/dev/null
targets=()
for i in 0 1; do
  start_query "$QUERY" "$T/shard$i.log" --snapshot_root="$T/coll/shard-$i-of-2" --load_model=false
  pids+=("$QUERY_PID")
  targets+=("127.0.0.1:$QUERY_PORT")
done
start_query "$ROUTER" "$T/router.log" --shards="${targets[0]};${targets[1]}"
router="$QUERY_PID"
pids+=("$router")
URL="http://127.0.0.1:$QUERY_PORT"
curl_() { "$BUF" curl --protocol grpc --http2-prior-knowledge "$@"; }

for proto in grpc-v1 grpc-v1alpha; do
  services="$(curl_ --reflect-protocol="$proto" --list-services "$URL")" \
    || fail "$proto: --list-services failed: $services"
  for s in imagesearch.v1.ImageSearch grpc.health.v1.Health \
      grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection; do
    grep -qx "$s" <<<"$services" || fail "$proto: reflection does not list $s: $services"
  done
  methods="$(curl_ --reflect-protocol="$proto" --list-methods "$URL")"
  for m in Search SearchBatch Embed GetInfo GetThumbnail; do
    grep -qx "imagesearch.v1.ImageSearch/$m" <<<"$methods" \
      || fail "$proto: method $m not listed: $methods"
  done
  info="$(curl_ --reflect-protocol="$proto" "$URL/imagesearch.v1.ImageSearch/GetInfo")" \
    || fail "$proto: GetInfo: $info"
  grep -q '"vectorCount": "2000"' <<<"$info" || fail "$proto: GetInfo: $info"
  grep -q '"count": 2' <<<"$info" || fail "$proto: GetInfo shard count: $info"
done

# More-like-this by id through the router, itself first.
res="$(curl_ -d '{"id":"17","top_k":3,"include_self":true}' "$URL/imagesearch.v1.ImageSearch/Search")"
first_id="$(grep -m1 '"id"' <<<"$res" | sed 's/.*"id": "\([^"]*\)".*/\1/')"
[[ "$first_id" == "17" ]] || fail "Search by id: first hit is '$first_id': $res"
[[ "$(grep -c '"id"' <<<"$res")" == 3 ]] || fail "Search top_k=3: $res"
# A request error, as a replica words it.
if bad="$(curl_ -d '{"vector":{"values":[1,2,3]}}' "$URL/imagesearch.v1.ImageSearch/Search" 2>&1)"; then
  fail "wrong-dimension query succeeded: $bad"
fi
grep -q 'invalid_argument' <<<"$bad" || fail "wrong code: $bad"

for service in "" imagesearch.v1.ImageSearch; do
  health="$(curl_ -d "{\"service\":\"$service\"}" "$URL/grpc.health.v1.Health/Check")"
  grep -q '"status": "SERVING"' <<<"$health" || fail "health of '$service': $health"
done
if unknown="$(curl_ -d '{"service":"no.such.Service"}' "$URL/grpc.health.v1.Health/Check" 2>&1)"; then
  fail "health of an unknown service answered: $unknown"
fi
grep -q 'not_found' <<<"$unknown" || fail "health of an unknown service: $unknown"

# Watch: SERVING now; NOT_SERVING once the router is told to stop (it
# stops serving before it shuts down), then the stream ends.
curl_ -d '{"service":"imagesearch.v1.ImageSearch"}' "$URL/grpc.health.v1.Health/Watch" \
  > "$T/watch.out" 2>&1 &
watch=$!
pids+=("$watch")
wait_until grep -q '"status": "SERVING"' "$T/watch.out" || fail "Watch: $(cat "$T/watch.out")"
kill -TERM "$router"
wait_until grep -q '"status": "NOT_SERVING"' "$T/watch.out" \
  || fail "Watch did not see NOT_SERVING: $(cat "$T/watch.out")"
wait "$router" || fail "the router exited with $?: $(tail -n 5 "$T/router.log")"
# The router ends Watch streams with OK once they have seen NOT_SERVING
# (rather than leaving them to be cancelled when its shutdown times out).
wait "$watch" || fail "Watch did not end with OK: $(cat "$T/watch.out")"
echo "router buf curl e2e: 1 passed, 0 failed"
