#!/usr/bin/env bash
# The test command, and the entry point of CI's `test` job: installs
# dependencies, lints the CI definitions, the C++ formatting (ci/lint.sh) and
# the protos (ci/proto.sh: buf lint,
# and buf breaking against HEAD~1), builds everything, runs every test.
#   ci/test.sh
# Then, each on unless set to 0:
#   CONTAINERS          builds the container images (query, indexer, SageMaker)
#                       from these binaries and smoke-tests them (ci/containers.sh)
#   CI_CONTAINER_CHECK  runs ci.yml's `test` job here as GitHub's runner would:
#                       its steps in an unprivileged debian:12 container under
#                       podman, granted exactly the job's container options, on
#                       a reduced set (ci/test_job_in_container.sh)
#   SANITIZE            an ASan+UBSan build of the unit tests that do not run
#                       LibTorch
#   FUZZ                each libFuzzer target for 30 s
#   TSAN                the concurrent tests under ThreadSanitizer
# Env: JOBS (build parallelism, 2), CTEST_ARGS (more ctest arguments, e.g. a
#      label subset), BINARIES_TAR=FILE (packs what ci/containers.sh needs into
#      FILE after the tests), CCACHE_DIR (~/.cache/ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install_deps.sh
# HOME may be unset in CI; fall back to the invoking user's home.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths under the checkout are hashed relative to it, and the locale (LANG is
# unset in CI's container) not at all, so a clone in another folder or a
# container's workspace hits what this one cached.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:+$CCACHE_SLOPPINESS,}locale"
ci/lint.sh
ci/proto.sh
ccache_counts() {
  ccache --print-stats 2>/dev/null |
    awk '$1 ~ /^(direct|preprocessed)_cache_hit$/ {h += $2} $1 == "cache_miss" {m += $2} END {print h + 0, m + 0}'
}
read -r hits0 misses0 < <(ccache_counts)
ci/build.sh
read -r hits1 misses1 < <(ccache_counts)
echo "ccache ($CCACHE_DIR): $((hits1 - hits0)) hits, $((misses1 - misses0)) misses in this build"
read -r -a ctest_args <<<"${CTEST_ARGS:-}"
ctest_rc=0
ctest --test-dir build --output-on-failure -j2 --timeout 900 --output-junit ctest-junit.xml \
  "${ctest_args[@]}" || ctest_rc=$?
# Every test's time is in build/ctest-junit.xml; the ten slowest, also when some failed.
/usr/bin/python3 ci/slowest_tests.py build/ctest-junit.xml 10 || true
((ctest_rc == 0)) || exit "$ctest_rc"
if [[ -n "${BINARIES_TAR:-}" ]]; then
  ci/containers.sh --pack build "$BINARIES_TAR"
fi
if [[ "${CONTAINERS:-1}" == 1 ]]; then
  ci/containers.sh build
fi
if [[ "${CI_CONTAINER_CHECK:-1}" == 1 ]]; then
  ci/test_job_in_container.sh
fi
if [[ "${SANITIZE:-1}" == 1 ]]; then
  BUILD_DIR=build-asan BUILD_TYPE=Debug JOBS=2 ci/build_sanitized.sh
fi
if [[ "${FUZZ:-1}" == 1 ]]; then
  ci/fuzz.sh
fi
if [[ "${TSAN:-1}" == 1 ]]; then
  JOBS=2 ci/build_tsan.sh
fi
