#!/usr/bin/env bash
# buf lint of proto/, then buf breaking of proto/ against an earlier commit,
# both configured by proto/buf.yaml. ci/test.sh and CI's proto job run it.
#   [AGAINST=COMMIT] ci/proto.sh [BUILD_DIR=build]
# AGAINST: the commit to compare with. CI's proto job passes the pull
# request's base commit, or for a push the commit main was at before it; it
# must then be in this clone's history (fetch-depth: 0), and all zeros (a
# first push) skips the comparison. Unset, it is HEAD~1, and the comparison is
# skipped with a message where this clone has no parent commit (a shallow
# clone, or the first commit).
# buf is the npm package pinned in tests/e2e/package.json, installed into
# BUILD_DIR/npm-buf once.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/e2e/lib.sh
BUF="$(ensure_buf "${1:-build}/npm-buf")"
"$BUF" lint proto
echo "buf lint: proto/ passes"

if [[ -n "${AGAINST:-}" ]]; then
  if [[ "$AGAINST" =~ ^0+$ ]]; then
    echo "buf breaking: skipped: AGAINST is all zeros (a first push), no commit to compare with"
    exit 0
  fi
  base="$(git rev-parse -q --verify "$AGAINST^{commit}")" ||
    { echo "ci/proto.sh: commit $AGAINST is not in this clone (check out with fetch-depth: 0)" >&2; exit 1; }
elif ! base="$(git rev-parse -q --verify 'HEAD~1^{commit}')"; then
  if [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
    echo "buf breaking: skipped: this is a shallow clone without HEAD~1 (fetch it, or set AGAINST)"
  else
    echo "buf breaking: skipped: HEAD is the first commit, there is no HEAD~1 to compare with"
  fi
  exit 0
fi
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: skipped: ${AGAINST:-HEAD~1} ($base) has no proto/"
  exit 0
fi
"$BUF" breaking proto --against ".git#ref=$base,subdir=proto"
echo "buf breaking: proto/ is compatible with ${AGAINST:-HEAD~1} ($base)"
