#!/usr/bin/env bash
# What CI's reindex job applies: ci/pin_overlay.sh pins the prod overlay
# (query) and the prod indexing overlay (indexer) by digest with kubectl's
# kustomize, replacing the overlays' placeholder digest, and every container of those images
# uses exactly the pinned reference; an image the overlay does not name, a tag
# or a malformed reference is refused. ci/reindex.sh refuses a wait longer than the
# reindex workflow's job limit allows. Skips (77) without kubectl.
# Usage: ci_pin_overlay_test.sh SOURCE_DIR
set -euo pipefail
SRC="$1"
command -v kubectl >/dev/null || { echo "SKIP: no kubectl (kubectl kustomize renders the overlays)"; exit 77; }
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
D="sha256:$(printf 'test' | sha256sum | cut -d' ' -f1)"
REPO=ghcr.io/imagesearch
cd "$SRC"

ci/pin_overlay.sh deploy/k8s/overlays/prod "$T/prod" "$REPO/imagesearch-query@$D" >/dev/null
images="$(grep -E '^\s*(- )?image:' "$T/prod/rendered.yaml" | sed 's/.*image: *//' | sort | uniq -c)"
[[ "$(wc -l <<<"$images")" == 1 && "$images" == *" $REPO/imagesearch-query@$D" ]] ||
  fail "prod render: expected only $REPO/imagesearch-query@$D, got: $images"
echo "ok: prod overlay pinned by digest (containers: $(awk '{print $1}' <<<"$images"))"

ref="$REPO/imagesearch-indexer@$D"
ci/pin_overlay.sh deploy/k8s/overlays/prod/indexing "$T/indexing" "$ref" >/dev/null
n="$(grep -cE "image: *$ref\$" "$T/indexing/rendered.yaml")"
others="$(grep -E 'image:' "$T/indexing/rendered.yaml" | grep -vcE "image: *$ref\$" || true)"
((n >= 3 && others == 0)) || fail "indexing render: $n containers on $ref, $others on other images"
echo "ok: indexing overlay pinned to $ref (containers: $n)"

if out="$(ci/pin_overlay.sh deploy/k8s/overlays/prod "$T/x" "example.com/other/imagesearch-query@$D" 2>&1)"; then
  fail "an image the overlay does not name was accepted"
fi
[[ "$out" == *"does not use example.com/other/imagesearch-query@$D"* ]] || fail "unclear refusal: $out"
echo "ok: an image of another repository is refused ($out)"
for bad in "$REPO/imagesearch-query@sha256:abc" "$REPO/imagesearch-query:0123abc" "$REPO/imagesearch-query"; do
  if ci/pin_overlay.sh deploy/k8s/overlays/prod "$T/x" "$bad" >/dev/null 2>&1; then
    fail "malformed reference '$bad' was accepted"
  fi
done
echo "ok: tags and malformed references are refused"

if out="$(IMAGE_REPO=$REPO INDEXER_DIGEST=$D TIMEOUT_S=20401 RENDER_ONLY=1 ci/reindex.sh 2>&1)"; then
  fail "ci/reindex.sh accepted TIMEOUT_S=20401"
fi
[[ "$out" == *"must be 1..20400 seconds"* ]] || fail "unclear refusal: $out"
echo "ok: ci/reindex.sh refuses a wait past the workflow's job limit ($out)"
echo "ci_pin_overlay: 5 passed, 0 failed"
