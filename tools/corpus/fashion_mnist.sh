#!/usr/bin/env bash
# Fetches Fashion-MNIST from Debian's archive (dataset-fashion-mnist, Expat)
# and writes PER_CLASS images of each of its 10 classes as PNG files plus a
# JSONL manifest with the class as an attribute:
#   tools/corpus/fashion_mnist.sh OUT_DIR [PER_CLASS=200] [SPLIT=test]
# Output: OUT_DIR/images/<class>/<n>.png, OUT_DIR/manifest.jsonl
set -euo pipefail
OUT="$1"; PER_CLASS="${2:-200}"; SPLIT="${3:-test}"
CACHE="${IMAGESEARCH_CACHE:-${HOME:-/root}/.cache/imagesearch}"
mkdir -p "$CACHE" "$OUT"
DATA="$CACHE/fashion-mnist/usr/share/datasets/fashion-mnist"
if [[ ! -d "$DATA" ]]; then
  tmp="$(mktemp -d)"
  # apt-get download needs package lists; fetch them once if it fails.
  (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) ||
    { apt-get update -qq >/dev/null 2>&1 || true
      (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null); } || {
    echo "apt-get download dataset-fashion-mnist failed" >&2; exit 1; }
  dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$CACHE/fashion-mnist"
  rm -rf "$tmp"
fi
/usr/bin/python3 "$(dirname "$0")/fashion_mnist_to_png.py" "$DATA" "$OUT" "$PER_CLASS" "$SPLIT"
