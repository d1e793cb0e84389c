#!/usr/bin/env bash
# The test command: installs dependencies, builds everything, runs every test.
#   ci/test.sh
# Also runs an ASan+UBSan build of the libraries that do not link LibTorch
# (set SANITIZE=0 to skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install_deps.sh
# HOME may be unset in CI; fall back to the invoking user's home.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
ci/build.sh
ctest --test-dir build --output-on-failure -j2 --timeout 900
if [[ "${SANITIZE:-1}" == 1 ]]; then
  BUILD_DIR=build-asan BUILD_TYPE=Debug JOBS=2 ci/build_sanitized.sh
fi
