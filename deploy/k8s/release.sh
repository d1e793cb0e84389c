#!/usr/bin/env bash
# Renders a release of deploy/k8s for one environment with the images the
# pipeline built, by digest, and validates it; the pipeline then applies what
# it wrote. The committed overlays carry a placeholder digest that no image
# has, so only a release rendered here deploys real images.
#
#   deploy/k8s/release.sh ENV OUT_DIR QUERY_IMAGE INDEXER_IMAGE
#   deploy/k8s/release.sh prod /tmp/release \
#       ghcr.io/imagesearch/imagesearch-query@sha256:<64 hex> \
#       ghcr.io/imagesearch/imagesearch-indexer@sha256:<64 hex>
#
# ENV is dev, prod or sharded. Writes OUT_DIR/service.yaml (overlays/ENV, or
# sharded/) and OUT_DIR/indexing.yaml (its indexing/). Refuses an image that is not name@sha256:<digest>
# (a tag, even a commit tag, can be pushed again). Needs kubectl >= 1.27 (or
# kustomize v5) and node/npm for the validation (validate.sh installs its npm
# packages into BUILD_DIR/npm-k8s; BUILD_DIR defaults to build).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '7,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -eq 4 ]] || usage
ENV="$1" OUT="$2" QUERY_IMAGE="$3" INDEXER_IMAGE="$4"
case "$ENV" in
  dev | prod) DIR="overlays/$ENV" ;;
  sharded) DIR=sharded ;;
  *) echo "release.sh: ENV must be dev, prod or sharded, got '$ENV'" >&2; exit 2 ;;
esac
DIGEST_REF='^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$'
for pair in "imagesearch-query=$QUERY_IMAGE" "imagesearch-indexer=$INDEXER_IMAGE"; do
  name="${pair%%=*}" image="${pair#*=}"
  if [[ ! "$image" =~ $DIGEST_REF ]]; then
    echo "release.sh: $name image '$image' is not name@sha256:<64 hex>; deploy by digest" >&2
    exit 2
  fi
  repo="${image%@*}"
  [[ "${repo##*/}" == "$name" ]] || { echo "release.sh: '$image' is not an $name image" >&2; exit 2; }
done

if command -v kustomize >/dev/null; then RENDER=(kustomize build); else RENDER=(kubectl kustomize); fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$HERE/base" "$HERE/overlays" "$HERE/sharded" "$WORK/"
# wrap OUT_NAME DIR IMAGE...: a kustomization over DIR that sets each image's
# digest (kustomize matches the name the overlay renders).
wrap() {
  local dir="$WORK/release/$1" overlay="$2"; shift 2
  mkdir -p "$dir"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "  - ../../$overlay"
    echo "images:"
    for image in "$@"; do
      local repo="${image%@*}"
      echo "  - name: ghcr.io/imagesearch/${repo##*/}"
      echo "    newName: $repo"
      echo "    digest: ${image#*@}"
    done
  } >"$dir/kustomization.yaml"
}
wrap service "$DIR" "$QUERY_IMAGE"
wrap indexing "$DIR/indexing" "$INDEXER_IMAGE"
mkdir -p "$OUT"
"${RENDER[@]}" "$WORK/release/service" >"$OUT/service.yaml"
"${RENDER[@]}" "$WORK/release/indexing" >"$OUT/indexing.yaml"
"$HERE/validate.sh" "${BUILD_DIR:-build}" --release "$ENV" "$OUT"
echo "release $ENV: $OUT/service.yaml and $OUT/indexing.yaml"
