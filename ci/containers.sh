#!/usr/bin/env bash
# Builds the container images of deploy/containers/Containerfile (query,
# indexer, sagemaker, query-debug, indexer-debug) from the binaries BUILD_DIR
# already holds, then smoke-tests them with podman, every container with
# --security-opt no-new-privileges, and every check from outside (the images
# have no shell):
#   1. the file systems (podman image mount): no setuid/setgid file, nothing
#      in /usr/bin or /usr/sbin (no shell, no package manager, no compiler),
#      no package database, no header; non-root user; libblas.so.3 is
#      OpenBLAS; each binary in each image runs (--help); the debug images
#      have a shell;
#   2. the indexer image indexes 100 Fashion-MNIST images (read-only corpus
#      mount, read-only root, no network) into a snapshot;
#   3. the query image serves that snapshot mounted read-only and answers
#      gRPC (buf curl, via reflection) Search by id, by PNG bytes and by AVIF
#      bytes (libvips' dlopen'ed HEIF module), and HTTP /ping; the process
#      has mapped OpenBLAS, the LibTorch plugin and the HEIF module, and no
#      log says a library is missing;
#   4. the sagemaker image runs as SageMaker runs it, `IMAGE serve` with the
#      snapshot version at /opt/ml/model: HTTP on 8080 (and on
#      $SAGEMAKER_BIND_TO_PORT), GET /ping 200, POST /invocations with a PNG
#      finds that image first, SIGTERM stops it cleanly.
# The containers run in a private network namespace with only loopback (so
# the fixed ports 50051/8080 cannot clash with anything on the host); NETNS=0
# (or no `ip netns`) runs them on the host network on free loopback ports.
#
#   ci/containers.sh [BUILD_DIR=build | BINARIES.tar.gz]
#   ci/containers.sh --pack BUILD_DIR BINARIES.tar.gz
# --pack writes the files of BUILD_DIR that the images are made of into a
# tarball (CI's test job hands it to the containers job), and the tarball
# takes BUILD_DIR's place.
# Env: IMAGE_TAG (default latest), KEEP=1 (keep the work folder),
#      SAVE_IMAGES=FILE (after the checks pass, `podman save` the three
#      images into FILE, a multi-image archive, for CI's push-images job),
#      IMAGESEARCH_CACHE (debootstrap tarball, Fashion-MNIST; ~/.cache/imagesearch),
#      DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, NETNS=0.
# Needs root (apt-get, rootful podman); re-runs itself under sudo otherwise.
set -euo pipefail
# The build outputs the images hold, relative to BUILD_DIR.
BINARIES=(services/query/imagesearch-query services/query/libimagesearch_torch_plugin.so
          services/router/imagesearch-router
          services/indexer/imagesearch-indexer tools/make_snapshot/imagesearch-snapshot
          libs/common/libimagesearch_common.so models/default CMakeCache.txt)
if [[ "${1:-}" == --pack ]]; then
  [[ $# == 3 ]] || { echo "usage: $0 --pack BUILD_DIR BINARIES.tar.gz" >&2; exit 2; }
  tar -C "$2" -czf "$3" "${BINARIES[@]}"
  echo "packed ${BINARIES[*]} of $2 into $3 ($(du -h "$3" | cut -f1))"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "ci/containers.sh: run as root" >&2; exit 1; }
  exec sudo --preserve-env bash "$(readlink -f "$0")" "$@"
fi
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
START=$SECONDS
BUILD_ARG="${1:-build}"
[[ -d "$BUILD_ARG" || "$BUILD_ARG" == *.tar.gz && -f "$BUILD_ARG" ]] ||
  { echo "FAIL: no build folder or tarball '$BUILD_ARG' (ci/build.sh makes it)" >&2; exit 1; }
TAG="${IMAGE_TAG:-latest}"
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
BASE_IMAGE=localhost/debian:12
IMG_QUERY="localhost/imagesearch-query:$TAG"
IMG_INDEXER="localhost/imagesearch-indexer:$TAG"
IMG_SAGEMAKER="localhost/imagesearch-sagemaker:$TAG"
IMG_QUERY_DEBUG="localhost/imagesearch-query-debug:$TAG"
IMG_INDEXER_DEBUG="localhost/imagesearch-indexer-debug:$TAG"

step() { echo "== [$((SECONDS - START))s] $*"; }
ok() { echo "   ok: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# podman as this machine needs it: runc (crun refuses hybrid cgroups), cgroupfs.
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
# Every container: no privilege gain through setuid files or file capabilities.
run_secure() { pm run --security-opt no-new-privileges "$@"; }

# ---------------------------------------------------------------- tools, base image
step "podman, runc, debootstrap; base image $BASE_IMAGE"
extra=(iproute2 curl binutils python3 python3-pil ca-certificates)
command -v npm >/dev/null 2>&1 || extra+=(nodejs npm)   # buf comes from the npm registry
"$ROOT/ci/podman_base.sh" "${extra[@]}"
podman --version

# ---------------------------------------------------------------- stage
WORK="$(mktemp -d /var/tmp/imagesearch-containers.XXXXXX)"
chmod 755 "$WORK"
NS=""
CONTAINERS=()
cleanup() {
  local rc=$?
  for c in "${CONTAINERS[@]}"; do
    if [[ $rc != 0 ]] && pm container exists "$c" 2>/dev/null; then
      echo "--- logs of $c:"; pm logs "$c" 2>&1 | tail -20
    fi
    pm rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  [[ -z "$NS" ]] || ip netns delete "$NS" 2>/dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -d "$BUILD_ARG" ]]; then
  BUILD="$(cd "$BUILD_ARG" && pwd)"
else
  BUILD="$WORK/build"
  mkdir -p "$BUILD" && tar -C "$BUILD" -xzf "$BUILD_ARG"
fi
step "stage prebuilt binaries from $BUILD"
STAGE="$WORK/binaries"
for f in "${BINARIES[@]}" models/default/model.pt; do
  [[ -e "$BUILD/$f" ]] || fail "$BUILD/$f is missing: build first (ci/build.sh)"
done
install -D -m755 -t "$STAGE/usr/local/bin" \
  "$BUILD/services/query/imagesearch-query" "$BUILD/services/query/libimagesearch_torch_plugin.so" \
  "$BUILD/services/router/imagesearch-router" \
  "$BUILD/services/indexer/imagesearch-indexer" "$BUILD/tools/make_snapshot/imagesearch-snapshot"
install -D -m644 -t "$STAGE/usr/local/lib" "$BUILD/libs/common/libimagesearch_common.so"
install -D -m644 -t "$STAGE/usr/local/share/imagesearch/models/default" "$BUILD"/models/default/*
# Debug info stays in the build tree; the images get the symbols only.
strip --strip-debug "$STAGE"/usr/local/bin/* "$STAGE"/usr/local/lib/*.so
NATIVE="$(sed -n 's/^IMAGESEARCH_NATIVE:BOOL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)"
if [[ "$NATIVE" != OFF ]]; then
  echo "note: $BUILD was configured with IMAGESEARCH_NATIVE=${NATIVE:-?} (-march=native): these images run"
  echo "      on CPUs like this one only. Images to ship: configure with -DIMAGESEARCH_NATIVE=OFF or"
  echo "      build without --build-context (the Containerfile's builder stage)."
fi
REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ---------------------------------------------------------------- build
for target in query indexer sagemaker query-debug indexer-debug; do
  step "podman build --target $target"
  log="$WORK/build-$target.log"
  previous="$(pm image inspect --format '{{.Id}}' "localhost/imagesearch-$target:$TAG" 2>/dev/null || true)"
  timeout 1800 podman --runtime runc --cgroup-manager=cgroupfs build --network=host \
    -f "$ROOT/deploy/containers/Containerfile" --target "$target" \
    --build-arg BASE="$BASE_IMAGE" --build-context binaries="$STAGE" \
    --label org.opencontainers.image.revision="$REVISION" \
    --label imagesearch.binaries="prebuilt, IMAGESEARCH_NATIVE=${NATIVE:-?}" \
    -t "localhost/imagesearch-$target:$TAG" "$ROOT" >"$log" 2>&1 ||
    { tail -40 "$log"; fail "podman build --target $target"; }
  ok "localhost/imagesearch-$target:$TAG ($(grep -c '^--> Using cache' "$log" || true) cached steps)"
  # slim_rootfs.py's totals, when the assemble step ran in this build
  grep -E '^ +[0-9]+ total: ' "$log" | sed 's/^ */   closure: /' || true
  # The image this tag named before, now untagged: remove it (not if still in use).
  if [[ -n "$previous" && "$previous" != "$(pm image inspect --format '{{.Id}}' "localhost/imagesearch-$target:$TAG")" &&
        "$(pm image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" == 0 ]]; then
    pm rmi "$previous" >/dev/null 2>&1 || true
  fi
done

# ---------------------------------------------------------------- 1. static checks
step "images: binaries and libraries only, non-root, OpenBLAS"
# image_files IMAGE: facts about its file system, read from outside through
# `podman image mount`; a non-empty answer is a failure.
image_files() {
  local mnt; mnt="$(pm image mount "$1")" || { echo "podman image mount $1 failed"; return; }
  find "$mnt" -xdev -perm /6000 ! -type l -printf 'setuid/setgid: /%P\n'
  find "$mnt/usr/bin" "$mnt/usr/sbin" -mindepth 1 -maxdepth 1 -printf 'program: /usr/%P\n' 2>/dev/null
  find "$mnt/usr/include" "$mnt/usr/local/include" "$mnt/var/lib/dpkg" "$mnt/var/lib/apt" \
    -maxdepth 0 -printf 'present: /%P\n' 2>/dev/null
  readelf -dW "$mnt/usr/lib/x86_64-linux-gnu/libblas.so.3" 2>/dev/null | grep -q 'libopenblas\.so' ||
    echo "libblas.so.3 is not OpenBLAS's"
  pm image unmount "$1" >/dev/null
}
for img in "$IMG_QUERY" "$IMG_INDEXER" "$IMG_SAGEMAKER"; do
  user="$(pm image inspect --format '{{.Config.User}}' "$img")"
  [[ "$user" == 10001:10001 ]] || fail "$img runs as '$user', not 10001:10001"
  out="$(image_files "$img")"
  [[ -z "$out" ]] || fail "$img: $out"
done
ok "no setuid/setgid file, no /usr/bin or /usr/sbin program, no dpkg/apt, no header; uid 10001; libblas.so.3 = OpenBLAS"
[[ "$(pm image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMG_SAGEMAKER")" == \
   '["/usr/local/bin/imagesearch-query"] ["serve"]' ]] || fail "$IMG_SAGEMAKER: wrong ENTRYPOINT/CMD"
ok "sagemaker ENTRYPOINT [\"/usr/local/bin/imagesearch-query\"], CMD [\"serve\"]"
# Every binary starts in every image it is in: all its DT_NEEDED libraries
# load (imagesearch-query --help also loads nothing lazily; the smoke below
# covers the plugin and the HEIF module).
for pair in "$IMG_QUERY imagesearch-query" "$IMG_QUERY imagesearch-router" "$IMG_QUERY imagesearch-snapshot" \
            "$IMG_INDEXER imagesearch-indexer" "$IMG_INDEXER imagesearch-snapshot" \
            "$IMG_QUERY_DEBUG imagesearch-query" "$IMG_INDEXER_DEBUG imagesearch-indexer"; do
  read -r img bin <<<"$pair"
  out="$(run_secure --rm --network=none --read-only --entrypoint "/usr/local/bin/$bin" "$img" --help 2>&1 || true)"
  [[ "$out" == "$bin: "* ]] || fail "$img: $bin --help: $(head -5 <<<"$out")"
done
ok "imagesearch-query, -router, -indexer, -snapshot --help run in their images"
for img in "$IMG_QUERY_DEBUG" "$IMG_INDEXER_DEBUG"; do
  out="$(run_secure --rm --network=none --entrypoint /bin/sh "$img" -c 'id -u; ls /usr/local/bin' 2>&1)" ||
    fail "$img: /bin/sh: $out"
  [[ "$(head -1 <<<"$out")" == 10001 && "$out" == *imagesearch-snapshot* ]] || fail "$img: /bin/sh said: $out"
  out="$(image_files "$img" | grep -v '^program: ' || true)"
  [[ -z "$out" ]] || fail "$img: $out"
done
ok "debug images: /bin/sh (busybox) runs as 10001 and sees the binaries; no setuid/setgid file"

# ---------------------------------------------------------------- 2. indexer image
step "corpus: Fashion-MNIST, 10 per class"
tools/corpus/fashion_mnist.sh "$WORK/corpus" 10 >/dev/null
read -r IMG_ID IMG_PATH < <(/usr/bin/python3 -c '
import json, sys
d = json.loads(open(sys.argv[1]).readline()); print(d["id"], d["path"])' "$WORK/corpus/manifest.jsonl")
[[ -f "$WORK/corpus/$IMG_PATH" ]] || fail "corpus image $IMG_PATH missing"
SNAP="$WORK/snapshots"
mkdir -p "$SNAP" && chown 10001:10001 "$SNAP"
step "indexer image: corpus (ro) -> $SNAP"
timeout 300 podman --runtime runc --cgroup-manager=cgroupfs run --rm --read-only --network=none \
  --security-opt no-new-privileges \
  -v "$WORK/corpus:/corpus:ro" -v "$SNAP:/snapshots" "$IMG_INDEXER" \
  --input=/corpus/manifest.jsonl --root=/snapshots >"$WORK/indexer.log" 2>&1 ||
  { tail -20 "$WORK/indexer.log"; fail "indexer image"; }
grep -q 'published v1: 100 listed, 100 indexed' "$WORK/indexer.log" ||
  { cat "$WORK/indexer.log"; fail "indexer image did not publish v1 with 100 images"; }
[[ -f "$SNAP/v1/MANIFEST.json" && -f "$SNAP/v1/model.pt" ]] || fail "no snapshot v1 with its model"
run_secure --rm --network=none --entrypoint /usr/local/bin/imagesearch-snapshot -v "$SNAP:/snapshots:ro" \
  "$IMG_INDEXER" verify --root=/snapshots >"$WORK/verify.log" 2>&1 ||
  { cat "$WORK/verify.log"; fail "imagesearch-snapshot verify"; }
ok "published v1 (100 images, default model); imagesearch-snapshot verify passes"
# SageMaker mounts one self-contained version directory (model.tar.gz): the
# version's files with its segments inside.
MODEL_DIR="$WORK/sagemaker-model"
"$BUILD/tools/make_snapshot/imagesearch-snapshot" export --root="$SNAP" --version=v1 \
  --out="$MODEL_DIR" >/dev/null || fail "imagesearch-snapshot export"
ok "exported v1 as a self-contained version directory for SageMaker"

# ---------------------------------------------------------------- network
source tests/e2e/lib.sh
BUF="$(ensure_buf "$BUILD")"
if [[ "${NETNS:-1}" == 1 ]] && ip netns add "imagesearch-ci-$$" 2>/dev/null; then
  NS="imagesearch-ci-$$"
  ip netns exec "$NS" ip link set lo up
  NET=(--network="ns:/run/netns/$NS")
  net() { ip netns exec "$NS" "$@"; }
  GRPC_PORT=50051 HTTP_PORT=8080 SM_GRPC_PORT=50051 SM_PORT=8080 SM_PORT2=8081
  QUERY_ARGS=()         # the image's own CMD: --port=50051 --http_port=8080
  SM_ARGS=(serve)       # exactly what SageMaker runs
  echo "   containers in network namespace $NS (loopback only)"
else
  NET=(--network=host)
  net() { "$@"; }
  free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  GRPC_PORT=$(free_port) HTTP_PORT=$(free_port) SM_GRPC_PORT=$(free_port) SM_PORT=$(free_port) SM_PORT2=$(free_port)
  QUERY_ARGS=(--host=127.0.0.1 --port="$GRPC_PORT" --http_port="$HTTP_PORT")
  # Host network: keep gRPC off the shared port 50051 and everything on loopback.
  SM_ARGS=(serve --host=127.0.0.1 --port="$SM_GRPC_PORT")
  echo "   host network, loopback ports $GRPC_PORT $HTTP_PORT $SM_GRPC_PORT $SM_PORT $SM_PORT2"
fi
# wait_for SECONDS CONTAINER WHAT CMD...: retries CMD while CONTAINER runs.
wait_for() {
  local limit="$1" c="$2" what="$3"; shift 3
  local end=$((SECONDS + limit))
  while ((SECONDS < end)); do
    "$@" >/dev/null 2>&1 && return 0
    [[ "$(pm inspect --format '{{.State.Running}}' "$c" 2>/dev/null)" == true ]] ||
      fail "$c exited while waiting for $what"
    sleep 0.5
  done
  fail "$c: no $what within ${limit}s"
}
# json_ok EXPR: the JSON on stdin, as d, makes the Python expression EXPR true.
json_ok() {
  /usr/bin/python3 -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"
}
grpc() { net timeout 30 "$BUF" curl --protocol grpc --http2-prior-knowledge "$@"; }
http_code() { net curl -s -o /dev/null -m "${2:-10}" -w '%{http_code}' "$1"; }
stop_clean() {  # SIGTERM, then the exit status must be 0, and no library was missing
  local c="$1" log
  pm stop -t 30 "$c" >/dev/null
  [[ "$(pm inspect --format '{{.State.ExitCode}}' "$c")" == 0 ]] ||
    fail "$c: exit status $(pm inspect --format '{{.State.ExitCode}}' "$c") after SIGTERM"
  log="$(pm logs "$c" 2>&1)"
  grep -q ' stopped$' <<<"$log" || fail "$c: no 'stopped' log line after SIGTERM"
  ! grep -E 'cannot open shared object|is left out of this image|error while loading shared' <<<"$log" ||
    fail "$c: a library is missing from the image"
}
IMG_B64="$(base64 -w0 "$WORK/corpus/$IMG_PATH")"

# ---------------------------------------------------------------- 3. query image
step "query image: snapshot root mounted read-only at /snapshots"
QC="imagesearch-ci-query-$$"; CONTAINERS+=("$QC")
run_secure -d --name "$QC" --read-only "${NET[@]}" -v "$SNAP:/snapshots:ro" "$IMG_QUERY" \
  "${QUERY_ARGS[@]}" >/dev/null
G="http://127.0.0.1:$GRPC_PORT"
serving() {
  grpc -d '{"service":"imagesearch.v1.ImageSearch"}' "$G/grpc.health.v1.Health/Check" |
    json_ok 'd.get("status") == "SERVING"'
}
wait_for 90 "$QC" "SERVING health" serving
ok "gRPC health SERVING on :$GRPC_PORT"
grep -qx imagesearch.v1.ImageSearch <<<"$(grpc --list-services "$G")" || fail "reflection lists no imagesearch.v1.ImageSearch"
grpc -d '{"id":"fmnist-test-00001","top_k":3}' "$G/imagesearch.v1.ImageSearch/Search" >"$WORK/by_id.json" ||
  fail "Search by id: $(cat "$WORK/by_id.json")"
json_ok 'len(d["hits"]) == 3 and all(h["id"].startswith("fmnist-test-") for h in d["hits"])' <"$WORK/by_id.json" ||
  fail "Search by id: expected 3 hits, got $(cat "$WORK/by_id.json")"
ok "buf curl Search {\"id\":\"fmnist-test-00001\",\"top_k\":3}: 3 hits (reflection)"
printf '{"image":"%s","top_k":3}' "$IMG_B64" >"$WORK/by_image.req.json"
grpc -d @"$WORK/by_image.req.json" "$G/imagesearch.v1.ImageSearch/Search" >"$WORK/by_image.json" ||
  fail "Search by image bytes: $(cat "$WORK/by_image.json")"
json_ok "d['hits'][0]['id'] == '$IMG_ID'" <"$WORK/by_image.json" ||
  fail "Search by image: $IMG_ID not first: $(cat "$WORK/by_image.json")"
ok "buf curl Search by image bytes ($IMG_PATH): $IMG_ID first (LibTorch plugin in the image)"
AVIF="$ROOT/tests/data/images/chelsea_small.avif"
printf '{"image":"%s","top_k":3}' "$(base64 -w0 "$AVIF")" >"$WORK/by_avif.req.json"
grpc -d @"$WORK/by_avif.req.json" "$G/imagesearch.v1.ImageSearch/Search" >"$WORK/by_avif.json" ||
  fail "Search by AVIF bytes: $(cat "$WORK/by_avif.json")"
json_ok 'len(d["hits"]) == 3' <"$WORK/by_avif.json" ||
  fail "Search by AVIF bytes: expected 3 hits, got $(cat "$WORK/by_avif.json")"
ok "buf curl Search by AVIF bytes: 3 hits (libvips' HEIF module in the image)"
[[ "$(http_code "http://127.0.0.1:$HTTP_PORT/ping")" == 200 ]] || fail "query image: GET /ping != 200"
ok "HTTP GET /ping 200 on :$HTTP_PORT"
# The process, seen from the host (the image has no shell to exec).
QPID="$(pm inspect --format '{{.State.Pid}}' "$QC")"
[[ "$(awk '/^Uid:/{print $2}' "/proc/$QPID/status")" == 10001 ]] || fail "query service does not run as uid 10001"
[[ "$(awk '/^NoNewPrivs:/{print $2}' "/proc/$QPID/status")" == 1 ]] || fail "query service: NoNewPrivs is not set"
awk '$5 == "/snapshots" {print $6}' "/proc/$QPID/mountinfo" | grep -q '^ro' || fail "/snapshots is not mounted read-only"
ok "runs as uid 10001 with NoNewPrivs; /snapshots is mounted read-only"
maps="$(awk '$6 ~ /\.so/ {print $6}' "/proc/$QPID/maps" | sort -u)"
for lib in /libopenblas.so.0 /libimagesearch_torch_plugin.so /vips-heif.so /libtorch_cpu.so.1.13; do
  grep -qF "$lib" <<<"$maps" || fail "query service has not loaded *$lib"
done
ok "$(wc -l <<<"$maps") shared objects mapped, among them OpenBLAS, the LibTorch plugin, libvips' HEIF module"
stop_clean "$QC"
ok "SIGTERM: drained and exited 0"

# ---------------------------------------------------------------- 4. sagemaker image
step "sagemaker image: podman run -v EXPORTED_V1:/opt/ml/model:ro IMAGE ${SM_ARGS[*]}"
SC="imagesearch-ci-sagemaker-$$"; CONTAINERS+=("$SC")
SM_ENV=()
[[ -n "$NS" ]] || SM_ENV=(-e SAGEMAKER_BIND_TO_PORT="$SM_PORT")
run_secure -d --name "$SC" "${NET[@]}" "${SM_ENV[@]}" -v "$MODEL_DIR:/opt/ml/model:ro" "$IMG_SAGEMAKER" \
  "${SM_ARGS[@]}" >/dev/null
H="http://127.0.0.1:$SM_PORT"
# SageMaker wants /ping answered within 2 s: each try has -m 2.
ping_ok() { [[ "$(http_code "$H/ping" 2)" == 200 ]]; }
wait_for 90 "$SC" "GET /ping 200 on :$SM_PORT" ping_ok
grep -qx "http listening on port $SM_PORT" <<<"$(pm logs "$SC" 2>/dev/null)" ||
  fail "no 'http listening on port $SM_PORT' in the log"
ok "GET /ping 200; log says 'http listening on port $SM_PORT'$([[ -n "$NS" ]] && echo ' (the default)')"
net curl -s -m 30 -H 'Content-Type: image/png' --data-binary @"$WORK/corpus/$IMG_PATH" \
  "$H/invocations?top_k=3" >"$WORK/invocations.json" || fail "POST /invocations"
json_ok "len(d['hits']) == 3 and d['hits'][0]['id'] == '$IMG_ID' and d['snapshot_version'] == '1'" \
  <"$WORK/invocations.json" || fail "POST /invocations: $IMG_ID not first: $(cat "$WORK/invocations.json")"
ok "POST /invocations (image/png $IMG_PATH): 3 hits, $IMG_ID first, snapshot_version 1"
stop_clean "$SC"
ok "SIGTERM: drained and exited 0"
if [[ -n "$NS" ]]; then
  step "sagemaker image with SAGEMAKER_BIND_TO_PORT=$SM_PORT2 (inference pipelines)"
  SC2="imagesearch-ci-sagemaker2-$$"; CONTAINERS+=("$SC2")
  run_secure -d --name "$SC2" "${NET[@]}" -e SAGEMAKER_BIND_TO_PORT="$SM_PORT2" \
    -v "$MODEL_DIR:/opt/ml/model:ro" "$IMG_SAGEMAKER" serve >/dev/null
  H="http://127.0.0.1:$SM_PORT2"
  wait_for 90 "$SC2" "GET /ping 200 on :$SM_PORT2" ping_ok
  ok "GET /ping 200 on :$SM_PORT2"
  stop_clean "$SC2"
fi

# ---------------------------------------------------------------- sizes
step "images"
for img in "$IMG_QUERY" "$IMG_SAGEMAKER" "$IMG_INDEXER" "$IMG_QUERY_DEBUG" "$IMG_INDEXER_DEBUG"; do
  mnt="$(pm image mount "$img")"
  printf '   %-48s %s, %s files (%s ELF), %s layers\n' "$img" \
    "$(pm image inspect --format '{{.Size}}' "$img" | numfmt --to=si --suffix=B)" \
    "$(find "$mnt" -xdev ! -type d | wc -l)" \
    "$(find "$mnt" -xdev -type f -print0 | xargs -0 readelf -h 2>/dev/null | grep -c '^ELF Header:')" \
    "$(pm image inspect --format '{{len .RootFS.Layers}}' "$img")"
  pm image unmount "$img" >/dev/null
done
if [[ -n "${SAVE_IMAGES:-}" ]]; then
  step "podman save the tested images into $SAVE_IMAGES"
  pm save -q --multi-image-archive -o "$SAVE_IMAGES" "$IMG_QUERY" "$IMG_INDEXER" "$IMG_SAGEMAKER"
  # For the user who ran this script (it re-ran itself under sudo).
  [[ -z "${SUDO_UID:-}" ]] || chown "$SUDO_UID" "$SAVE_IMAGES"
  ok "$SAVE_IMAGES ($(du -h "$SAVE_IMAGES" | cut -f1))"
fi
echo "containers.sh: all checks passed in $((SECONDS - START))s"
