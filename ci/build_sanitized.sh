#!/usr/bin/env bash
# ASan+UBSan build and run of the unit tests, the ingest core's test
# (vector-only), and the image path through LibTorch: the encoder's tests and
# the indexer over tests/data/images (decode, resize, encode, graph, publish;
# a decompression bomb, a truncated JPEG and a non-image among them), then an
# incremental build on top of that version, both with a tiny CLIP made by
# tools/export_clip (the default model is too slow to run instrumented).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build-asan}"
TARGETS=(imagesearch_common_test imagesearch_index_test imagesearch_snapshot_test
         imagesearch_serving_test imagesearch_image_test
         imagesearch_text_test imagesearch_batcher_test imagesearch_ingest_test
         imagesearch_encoder_test imagesearch_rpc_test
         imagesearch_rpc_health_reflection_test)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DIMAGESEARCH_SANITIZE=ON \
  -DIMAGESEARCH_WITH_TORCH=ON -DIMAGESEARCH_DEFAULT_MODEL=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target "${TARGETS[@]}" imagesearch-indexer
# The encoder test's model (its ctest fixture, made here by hand).
/usr/bin/python3 tools/export_clip/make_tiny_clip.py --out "$BUILD_DIR/tiny_clip" \
  --vocab tests/data/clip/bpe_simple_vocab_16e6.txt.gz
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
passed=0
for t in "${TARGETS[@]}"; do
  bin="$(find "$BUILD_DIR" -type f -name "$t" -perm -u+x | head -1)"
  [[ -n "$bin" ]] || { echo "sanitized build lacks $t"; exit 1; }
  echo "== $t (ASan+UBSan)"
  "$bin"
  passed=$((passed + 1))
done
echo "== imagesearch-indexer on tests/data/images, then --base (ASan+UBSan)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/in" "$work/more"
cp tests/data/images/*.* "$work/in/"
head -c 3000 tests/data/images/chelsea.jpg > "$work/in/truncated.jpg"
echo "not an image" > "$work/in/garbage.png"
cp tests/data/images/rocket.jpg tests/data/images/coffee.png "$work/more/"
indexer="$BUILD_DIR/services/indexer/imagesearch-indexer"
run_indexer() {  # LOG FLAGS...
  local log="$1"
  shift
  "$indexer" "$@" --root="$work/root" --model="$BUILD_DIR/tiny_clip/model.pt" --progress=none \
    --max_reject_ratio=0.5 2>&1 | tee "$log"
}
run_indexer "$work/log1" --input="$work/in"
run_indexer "$work/log2" --input="$work/more" --base=v1
grep -qE "^published v1: .* [1-9][0-9]* indexed" "$work/log1" ||
  { echo "the instrumented indexer's first run did not publish v1 as expected"; exit 1; }
for bad in bomb_50000x50000.png truncated.jpg garbage.png; do
  grep -q "\"id\":\"$bad\"" "$work/root/v1/rejects.jsonl" ||
    { echo "the instrumented indexer did not reject $bad"; exit 1; }
done
grep -qE "^published v2: 2 listed, 2 indexed, 0 rejected" "$work/log2" ||
  { echo "the instrumented indexer's --base run did not publish v2 as expected"; exit 1; }
passed=$((passed + 1))
echo "sanitizers: $passed passed, 0 failed"
