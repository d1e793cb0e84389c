#!/usr/bin/env bash
# CI's push-images job: loads the images that the containers job built and
# tested (IMAGES_TAR, written by `SAVE_IMAGES=... ci/containers.sh`), checks
# that they were built from this commit, tags each as
# $IMAGE_REPO/imagesearch-{query,indexer,sagemaker}:$COMMIT and pushes it.
# Prints each pushed digest, and with GITHUB_OUTPUT set writes them as the
# step outputs query-digest, indexer-digest and sagemaker-digest (ci/deploy.sh
# deploys by digest).
#   ci/push_images.sh
# Env: IMAGES_TAR (images.tar), IMAGE_REPO (e.g. ghcr.io/imagesearch), REGISTRY
#      (the host to log in to), REGISTRY_USER, REGISTRY_TOKEN, COMMIT
#      (GITHUB_SHA, or this checkout's HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "ci/push_images.sh: $*" >&2; exit 1; }
IMAGES_TAR="${IMAGES_TAR:-images.tar}"
COMMIT="${COMMIT:-${GITHUB_SHA:-$(git rev-parse HEAD)}}"
: "${IMAGE_REPO:?set IMAGE_REPO}" "${REGISTRY:?set REGISTRY}"
: "${REGISTRY_USER:?set REGISTRY_USER (a secret)}" "${REGISTRY_TOKEN:?set REGISTRY_TOKEN (a secret)}"
[[ -f "$IMAGES_TAR" ]] || fail "no $IMAGES_TAR (the containers job saves it on pushes to main)"
podman load -q -i "$IMAGES_TAR"
printf '%s' "$REGISTRY_TOKEN" | podman login "$REGISTRY" -u "$REGISTRY_USER" --password-stdin
digests="$(mktemp -d)"
trap 'rm -rf "$digests"' EXIT
for target in query indexer sagemaker; do
  local_name="localhost/imagesearch-$target:latest"
  podman image exists "$local_name" || fail "$IMAGES_TAR holds no $local_name"
  # ci/containers.sh labels each image with `git rev-parse --short HEAD`.
  revision="$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$local_name")"
  [[ -n "$revision" && "$COMMIT" == "$revision"* ]] ||
    fail "$local_name was built from '$revision', not from $COMMIT"
  remote="$IMAGE_REPO/imagesearch-$target:$COMMIT"
  podman tag "$local_name" "$remote"
  podman push -q --digestfile "$digests/$target" "$remote"
  digest="$(cat "$digests/$target")"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "push of $remote gave no digest ('$digest')"
  echo "pushed $remote ($digest)"
  [[ -z "${GITHUB_OUTPUT:-}" ]] || echo "$target-digest=$digest" >>"$GITHUB_OUTPUT"
done
