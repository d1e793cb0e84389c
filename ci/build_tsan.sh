#!/usr/bin/env bash
# ThreadSanitizer build and run of the concurrent code: the mmap searcher
# (parallel build, concurrent searches), the snapshot manager (watcher thread,
# swaps), the dynamic batcher and the batching embedder (worker threads,
# deadlines), the query core, the router's core (merges across shards from
# four threads with every shard call hedged), the ingest service's core
# (publisher, two merge lanes, writers and flushes on other threads), libs/rpc
# (served calls, health Watch streams and reflection on two threads), and the
# integration test whose "Publishing under concurrent load" case hot-swaps a
# snapshot under four client threads against the real imagesearch-query
# (built TSan-instrumented too).
#
# The ingest core links LibTorch (image upserts), so this build has it; its
# test is vector-only and never runs LibTorch code, which is not instrumented.
#
# Debian's gRPC, protobuf and abseil are not instrumented; ci/tsan.supp
# silences what TSan cannot see inside them (third-party frames only).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build-tsan}"
# Optimised by default: TSan's run time is what counts here (CI: < 6 minutes).
BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"
TARGETS=(imagesearch_index_test imagesearch_serving_test imagesearch_batcher_test
         imagesearch_integration_test imagesearch_http_server_test imagesearch_ingest_test
         imagesearch_rpc_test imagesearch_rpc_health_reflection_test)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DIMAGESEARCH_TSAN=ON \
  -DIMAGESEARCH_SANITIZE=OFF -DIMAGESEARCH_WITH_TORCH=ON -DIMAGESEARCH_DEFAULT_MODEL=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target "${TARGETS[@]}" imagesearch-query
# Reports go to files, one per process: the imagesearch-query processes the
# integration test starts inherit TSAN_OPTIONS, and a report of theirs must
# fail the job even when the test itself passes. halt_on_error: the first
# report ends the process that made it.
LOG_DIR="$PWD/$BUILD_DIR/tsan-reports"
rm -rf "$LOG_DIR" && mkdir -p "$LOG_DIR"
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:history_size=4:suppressions=$PWD/ci/tsan.supp:log_path=$LOG_DIR/tsan"
report() {
  if compgen -G "$LOG_DIR/tsan.*" >/dev/null; then
    cat "$LOG_DIR"/tsan.*
    echo "tsan: reports above (from $LOG_DIR)"
    exit 1
  fi
}
trap report EXIT
# Which cases run: the concurrent ones (the rest of each binary is checked by
# ci/build_sanitized.sh). Under TSan the 20k x 512 recall cases of the index
# test and the filter-recall cases of the serving test alone take minutes.
declare -A CASES=(
  [imagesearch_index_test]="Vector(row) returns*,Concurrent searches*"
  [imagesearch_serving_test]="[#query_core_test],[#snapshot_manager_test],[#batching_embedder_test]"
  [imagesearch_batcher_test]=""
  # Every case, the router's too. The completion queues of imagesearch-query
  # and the router (libs/rpc) hand each operation's tag through libgrpc, which TSan cannot see; CqTag::GrpcTag and
  # CompletionThreads::Poll tell it of that hand-off (__tsan_release and
  # __tsan_acquire), and ci/tsan.supp covers the one copy gRPC's headers make
  # before Poll gets the tag.
  [imagesearch_integration_test]=""
  [imagesearch_http_server_test]=""
  [imagesearch_ingest_test]=""
  # ServedCall's two tags (answer, end) on two threads; CompletionThreads'
  # standby thread joining and leaving the polling.
  [imagesearch_rpc_test]=""
  # Health's Watch streams told of changes made on other threads, and
  # reflection streams, on two completion threads.
  [imagesearch_rpc_health_reflection_test]=""
)
# Lock-order (deadlock) detection is off where a process builds hnswlib
# graphs (the test fixtures publish snapshots): hnswlib holds two std::mutex
# per element plus 65536 update locks per index and never destroys them as
# pthread mutexes, so TSan's lock-order graph links unrelated mutexes reused
# at the same address and reports cycles with lost stacks that no
# suppression can match. Data races are still checked everywhere; the
# batcher test (worker threads, our locks only) keeps deadlock detection.
declare -A DEADLOCKS=(
  [imagesearch_index_test]=0 [imagesearch_serving_test]=0
  [imagesearch_batcher_test]=1 [imagesearch_integration_test]=0
  [imagesearch_http_server_test]=0 [imagesearch_ingest_test]=0 [imagesearch_rpc_test]=1
  [imagesearch_rpc_health_reflection_test]=1
)
passed=0
for t in "${TARGETS[@]}"; do
  bin="$(find "$BUILD_DIR" -type f -name "$t" -perm -u+x | head -1)"
  [[ -n "$bin" ]] || { echo "TSan build lacks $t"; exit 1; }
  echo "== $t (TSan)"
  start=$SECONDS
  args=()
  [[ "$t" == imagesearch_serving_test ]] && args+=(-#)
  [[ -n "${CASES[$t]}" ]] && args+=("${CASES[$t]}")
  TSAN_OPTIONS="$TSAN_OPTIONS:detect_deadlocks=${DEADLOCKS[$t]}" "$bin" "${args[@]}"
  echo "   $t: $((SECONDS - start)) s"
  passed=$((passed + 1))
done
trap - EXIT
report
echo "tsan: $passed passed, 0 failed"
