#!/usr/bin/env bash
# Pull-and-start time of query images from a local registry: how long a node
# that does not have the image takes from `podman pull` to a replica that
# answers GET /ping with 200 (what the HPA waits for when it adds a pod).
#
#   tools/bench/image_pull.sh [IMAGE...]     (default: localhost/imagesearch-query:latest)
#
# For each image, side by side, REPEAT times (default 3), alternating:
#   1. push it to a registry (Debian's docker-registry 2.8 on a free loopback
#      port, storage in a temp folder), once;
#   2. `podman pull` it into an empty, temporary podman store (so no layer is
#      already present: a new node);
#   3. `podman run` it on the snapshot root SNAPSHOTS (read-only) on free
#      loopback ports and poll GET /ping every 50 ms until it answers 200.
# Prints per image: its size, the bytes the registry holds for it (what a
# pull transfers, compressed), and the median pull, start and total seconds.
# Loopback has no bandwidth limit, so pull time here is decompressing and
# writing layers; over a network add size / bandwidth.
#
# Env: SNAPSHOTS (a snapshot root with a model; default: one made from four
#      test images with INDEXER, default localhost/imagesearch-indexer:latest),
#      REPEAT (3). Needs root (rootful podman), docker-registry, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ "$(id -u)" == 0 ]] || { echo "image_pull.sh: run as root (rootful podman)" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "image_pull.sh: apt-get install docker-registry" >&2; exit 1; }
IMAGES=("$@")
((${#IMAGES[@]})) || IMAGES=(localhost/imagesearch-query:latest)
REPEAT="${REPEAT:-3}"
INDEXER="${INDEXER:-localhost/imagesearch-indexer:latest}"
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { echo "$EPOCHREALTIME"; }

W="$(mktemp -d /var/tmp/imagesearch-pull.XXXXXX)"
chmod 755 "$W"
REGISTRY_PID=""
STORE=""
cleanup() {
  if [[ -n "$STORE" ]]; then
    pm --root "$STORE/root" --runroot "$STORE/run" rm -a -f -t 0 >/dev/null 2>&1 || true
    pm --root "$STORE/root" --runroot "$STORE/run" rmi -a -f >/dev/null 2>&1 || true
  fi
  [[ -z "$REGISTRY_PID" ]] || kill "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

# ---- snapshot root
if [[ -z "${SNAPSHOTS:-}" ]]; then
  SNAPSHOTS="$W/snapshots"
  mkdir -p "$W/input" "$SNAPSHOTS"
  cp tests/data/images/{astronaut.png,camera.png,chelsea.jpg,coffee.png} "$W/input/"
  chown 10001:10001 "$SNAPSHOTS"
  pm run --rm --network=none --security-opt no-new-privileges -v "$W/input:/input:ro" \
    -v "$SNAPSHOTS:/snapshots" "$INDEXER" >"$W/indexer.log" 2>&1 ||
    { tail "$W/indexer.log"; echo "indexer $INDEXER failed" >&2; exit 1; }
fi

# ---- registry
PORT="$(free_port)"
REG="127.0.0.1:$PORT"
cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
EOF
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
  curl -sf "http://$REG/v2/" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$REG/v2/" >/dev/null || { cat "$W/registry.log"; echo "registry did not start" >&2; exit 1; }
echo "registry: docker-registry $(docker-registry --version | awk '{print $3}') on $REG"

declare -A REMOTE PULLS STARTS
for img in "${IMAGES[@]}"; do
  name="${img##*/}"; name="bench-${name//:/-}"
  REMOTE[$img]="$REG/$name:bench"
  pm push -q --tls-verify=false "$img" "${REMOTE[$img]}" >/dev/null
done

# pull_and_start IMAGE: appends this run's pull and start seconds.
pull_and_start() {
  local img="$1" t0 t1 t2 grpc http cid
  STORE="$W/store"
  mkdir -p "$STORE"
  t0="$(now)"
  pm --root "$STORE/root" --runroot "$STORE/run" pull -q --tls-verify=false "${REMOTE[$img]}" >/dev/null
  t1="$(now)"
  grpc="$(free_port)"; http="$(free_port)"
  cid="$(pm --root "$STORE/root" --runroot "$STORE/run" run -d --network=host \
    --security-opt no-new-privileges -v "$SNAPSHOTS:/snapshots:ro" "${REMOTE[$img]}" \
    --host=127.0.0.1 --port="$grpc" --http_port="$http")"
  until [[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$http/ping")" == 200 ]]; do
    if [[ "$(pm --root "$STORE/root" --runroot "$STORE/run" inspect --format '{{.State.Running}}' "$cid")" != true ]]; then
      pm --root "$STORE/root" --runroot "$STORE/run" logs "$cid" | tail; echo "$img exited" >&2; exit 1
    fi
    if (( $(echo "$(now) - $t1 > 120" | bc) )); then echo "$img: no /ping 200 in 120 s" >&2; exit 1; fi
    sleep 0.05
  done
  t2="$(now)"
  PULLS[$img]+="$(echo "$t1 - $t0" | bc) "
  STARTS[$img]+="$(echo "$t2 - $t1" | bc) "
  pm --root "$STORE/root" --runroot "$STORE/run" rm -f -t 0 "$cid" >/dev/null
  pm --root "$STORE/root" --runroot "$STORE/run" rmi -a -f >/dev/null
  rm -rf "$STORE"; STORE=""
}
for ((i = 1; i <= REPEAT; i++)); do
  for img in "${IMAGES[@]}"; do pull_and_start "$img"; done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.1f", m}'; }
# compressed bytes of the image in the registry: the sum of its layer blobs
pushed_mb() {
  local repo="${1#*/}"; repo="${repo%:*}"
  curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$REG/v2/$repo/manifests/bench" |
    /usr/bin/python3 -c 'import json, sys; print(round(sum(l["size"] for l in json.load(sys.stdin)["layers"]) / 1e6))'
}
printf '\n%-44s %8s %10s %6s %7s %7s %7s\n' image size pushed files pull_s start_s total_s
for img in "${IMAGES[@]}"; do
  pull="$(median <<<"${PULLS[$img]}")"; start="$(median <<<"${STARTS[$img]}")"
  mnt="$(pm image mount "$img")"; files="$(find "$mnt" -xdev ! -type d | wc -l)"; pm image unmount "$img" >/dev/null
  printf '%-44s %6sMB %8sMB %6s %7s %7s %7s\n' "$img" \
    "$(( $(pm image inspect --format '{{.Size}}' "$img") / 1000000 ))" "$(pushed_mb "${REMOTE[$img]}")" \
    "$files" "$pull" "$start" "$(echo "$pull + $start" | bc)"
  echo "  runs: pull ${PULLS[$img]}| start ${STARTS[$img]}"
done
