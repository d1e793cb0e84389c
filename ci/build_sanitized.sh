#!/usr/bin/env bash
# ASan+UBSan build and run of the unit tests, and of the ingest core's test
# (vector-only: it links LibTorch for image upserts but never runs it; the
# indexer's image tests, which do, need the default model and are left to
# the normal build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build-asan}"
TARGETS=(imagesearch_common_test imagesearch_index_test imagesearch_snapshot_test
         imagesearch_serving_test imagesearch_image_test
         imagesearch_text_test imagesearch_batcher_test imagesearch_ingest_test)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DIMAGESEARCH_SANITIZE=ON \
  -DIMAGESEARCH_WITH_TORCH=ON -DIMAGESEARCH_DEFAULT_MODEL=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target "${TARGETS[@]}"
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
echo "sanitizers: $passed passed, 0 failed"
