#!/usr/bin/env bash
# release.sh renders an environment with the given digests and nothing else:
# every container of the release runs its image by digest (no placeholder
# left), a tag is refused before rendering, and validate.sh --release refuses
# a rendered release that names an image by tag.
#   deploy/k8s/release_test.sh BUILD_DIR
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUILD="$1"
if ! command -v kustomize >/dev/null && ! command -v kubectl >/dev/null; then
  echo "SKIP: release.sh renders with kubectl or kustomize; neither is on PATH"
  exit 77
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
Q="ghcr.io/imagesearch/imagesearch-query@sha256:$(printf '1%.0s' {1..64})"
I="registry.example:5000/team/imagesearch-indexer@sha256:$(printf '2%.0s' {1..64})"
# Query-image containers: one replica Deployment, or two shards' and the router.
declare -A QUERY_CONTAINERS=([dev]=1 [prod]=1 [sharded]=3)
for env in dev prod sharded; do
  BUILD_DIR="$BUILD" "$HERE/release.sh" "$env" "$OUT/$env" "$Q" "$I"
  [[ "$(grep -c "image: $Q$" "$OUT/$env/service.yaml")" == "${QUERY_CONTAINERS[$env]}" ]] ||
    fail "$env: query image not set in its ${QUERY_CONTAINERS[$env]} containers"
  [[ "$(grep -c "image: $I$" "$OUT/$env/indexing.yaml")" == 4 ]] || fail "$env: indexer image not set in the 3 Jobs and the ingest Deployment"
  ! grep -q "sha256:0000" "$OUT/$env"/*.yaml || fail "$env: the placeholder digest is left"
done
echo "1. dev, prod and sharded rendered with the given digests in every container"

if out="$(BUILD_DIR="$BUILD" "$HERE/release.sh" prod "$OUT/tag" "${Q%@*}:dev" "$I" 2>&1)"; then
  fail "a :dev tag was accepted"
fi
[[ "$out" == *"imagesearch-query image 'ghcr.io/imagesearch/imagesearch-query:dev' is not name@sha256:<64 hex>"* ]] ||
  fail "unexpected refusal: $out"
commit="$(printf 'c%.0s' {1..40})"
sed -i "s|image: $Q$|image: ${Q%@*}:$commit|" "$OUT/prod/service.yaml"
if out="$("$HERE/validate.sh" "$BUILD" --release prod "$OUT/prod" 2>&1)"; then
  fail "a release by commit tag passed validation"
fi
[[ "$out" == *"imagesearch-query:$commit is not deployed by digest"* ]] || fail "unexpected refusal: $out"
echo "2. a tag is refused by release.sh, and a rendered release naming one by validate.sh --release"
echo "release by digest: PASS"
