#!/usr/bin/env bash
# CI's proto job: `buf lint` of proto/, then `buf breaking` against the commit
# AGAINST (CI passes the pull request's base commit, or for a push the commit
# main was at before it). Without AGAINST, or for a first push (all zeros),
# only the lint runs. AGAINST must be in this clone's history (fetch-depth: 0).
#   [AGAINST=COMMIT] ci/proto.sh [BUILD_DIR=build]
# buf is the npm package pinned in tests/e2e/package.json, installed into
# BUILD_DIR/npm-buf once.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/e2e/lib.sh
BUF="$(ensure_buf "${1:-build}/npm-buf")"
# Inline until proto/ has a buf.yaml: the vendored grpc/ health proto keeps its
# upstream names, and renaming the ImageSearch service (SERVICE_SUFFIX) would
# itself be a breaking change.
CONFIG='{"version":"v1","lint":{"use":["STANDARD"],"except":["SERVICE_SUFFIX"],"ignore":["grpc"]},"breaking":{"use":["FILE"]}}'
"$BUF" lint proto --config "$CONFIG"
echo "buf lint: proto/ passes"
AGAINST="${AGAINST:-}"
if [[ -z "$AGAINST" || "$AGAINST" =~ ^0+$ ]]; then
  echo "buf breaking: no commit to compare with (AGAINST unset or a first push), skipped"
  exit 0
fi
git cat-file -e "$AGAINST^{commit}" 2>/dev/null ||
  { echo "ci/proto.sh: commit $AGAINST is not in this clone (check out with fetch-depth: 0)" >&2; exit 1; }
"$BUF" breaking proto --config "$CONFIG" --against ".git#ref=$AGAINST,subdir=proto"
echo "buf breaking: proto/ is compatible with $AGAINST"
