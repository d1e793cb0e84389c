#!/usr/bin/env bash
# Pins a kustomize overlay to exact images without editing it: writes
# OUT_DIR/kustomization.yaml, which takes OVERLAY_DIR as its resource and sets
# each IMAGE (REPOSITORY/NAME@sha256:DIGEST: a tag can be pushed again), renders it
# with kubectl's built-in kustomize into OUT_DIR/rendered.yaml, and checks the
# render: each IMAGE is used, and no container image of those repositories is
# left on another tag or digest (for example when the overlay names another
# registry than IMAGE).
#   ci/pin_overlay.sh OVERLAY_DIR OUT_DIR IMAGE...
# ci/reindex.sh applies the render. OUT_DIR names OVERLAY_DIR
# by its path relative to OUT_DIR.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 OVERLAY_DIR OUT_DIR IMAGE..." >&2; exit 2; }
OVERLAY="$1" OUT="$2"; shift 2
fail() { echo "ci/pin_overlay.sh: $*" >&2; exit 1; }
[[ -f "$OVERLAY/kustomization.yaml" ]] || fail "$OVERLAY has no kustomization.yaml"
mkdir -p "$OUT"
{
  echo "# Written by ci/pin_overlay.sh: $OVERLAY with its images pinned."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - $(realpath --relative-to="$OUT" "$OVERLAY")"
  echo "images:"
  for image in "$@"; do
    if [[ "$image" =~ ^([a-z0-9./_-]+)@(sha256:[0-9a-f]{64})$ ]]; then
      printf '  - name: %s\n    digest: %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
      fail "'$image' is not REPOSITORY/NAME@sha256:DIGEST"
    fi
  done
} >"$OUT/kustomization.yaml"
kubectl kustomize "$OUT" >"$OUT/rendered.yaml"
used="$(sed -n 's/^[[:space:]-]*image:[[:space:]]*//p' "$OUT/rendered.yaml" | tr -d "\"'" | sort -u)"
for image in "$@"; do
  grep -qxF "$image" <<<"$used" || fail "the render of $OVERLAY does not use $image; its images: ${used//$'\n'/ }"
  name="${image%%[@:]*}"; name="${name##*/}"
  while read -r other; do
    [[ "$other" == "$image" ]] || fail "the render of $OVERLAY still uses $other beside $image"
  done < <(grep -E "(^|/)$name([:@]|$)" <<<"$used")
done
echo "pinned $OVERLAY: $*"
