#!/usr/bin/env bash
# The test command: installs dependencies, builds everything, runs every test.
#   ci/test.sh
# Also builds and smoke-tests the container images (CONTAINERS=0 skips it),
# runs an ASan+UBSan build of the libraries that do not link LibTorch
# (SANITIZE=0 skips it), fuzzes each libFuzzer target for 30 s (FUZZ=0 skips
# it) and runs the concurrent tests under ThreadSanitizer (TSAN=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install_deps.sh
# HOME may be unset in CI; fall back to the invoking user's home.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
ci/build.sh
ctest --test-dir build --output-on-failure -j2 --timeout 900
# The container images (query, indexer, SageMaker), built from these binaries
# with podman and smoke-tested (set CONTAINERS=0 to skip).
if [[ "${CONTAINERS:-1}" == 1 ]]; then
  ci/containers.sh build
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
