#!/usr/bin/env bash
# Renders deploy/k8s (base, dev, prod: the query service and the indexing Jobs)
# with kubectl kustomize and validates every object offline, with no cluster:
# Kubernetes API schemas (npm kubernetes-models) plus the invariants in
# validate.mjs.
#   deploy/k8s/validate.sh BUILD_DIR
#   deploy/k8s/validate.sh BUILD_DIR --release ENV DIR   (what release.sh rendered)
# Installs the npm packages pinned in package.json / package-lock.json into
# BUILD_DIR/npm-k8s once. Without kubectl (or kustomize) v5 on PATH it exits 77
# (skipped), or with K8S_KUSTOMIZE=require fails (validate.mjs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
[[ $# -eq 1 || ($# -eq 4 && "$2" == --release) ]] || {
  echo "usage: $0 BUILD_DIR [--release ENV DIR]" >&2; exit 2; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "validate.sh: node and npm are required (ci/install_deps.sh installs them)" >&2
  exit 1
fi
mkdir -p "$1"
DEPS="$(cd "$1" && pwd)/npm-k8s"
STAMP="$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$DEPS/.installed" 2>/dev/null)" != "$STAMP" ]]; then
  # Install beside, then swap in: an interrupted install is never reused.
  rm -rf "$DEPS.tmp"
  mkdir -p "$DEPS.tmp"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$DEPS.tmp/"
  (cd "$DEPS.tmp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$STAMP" >"$DEPS.tmp/.installed"
  rm -rf "$DEPS"
  mv "$DEPS.tmp" "$DEPS"
fi
# Bare imports resolve from the importing file's folder (ESM ignores NODE_PATH):
# deps.mjs re-exports the packages from inside the install.
cp "$HERE/deps.mjs" "$DEPS/deps.mjs"
if [[ $# -eq 4 ]]; then
  exec node "$HERE/validate.mjs" --deps "$DEPS/deps.mjs" --release "$3" "$4"
fi
exec node "$HERE/validate.mjs" --deps "$DEPS/deps.mjs" "$HERE"
