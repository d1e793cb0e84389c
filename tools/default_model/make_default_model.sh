#!/usr/bin/env bash
# Makes the project's default, offline model: TF-Hub's MobileNetV2 1.4
# feature extractor as shipped in npm `nsfwjs@4.4.0`, converted to a
# TorchScript archive that follows libs/encoder/MODEL_CONTRACT.md.
#
#   make_default_model.sh OUT_MODEL_PT
#
# Idempotent: the npm tarball is fetched once into the cache folder
# ($IMAGESEARCH_CACHE, default ~/.cache/imagesearch) and checked against its
# pinned sha512 (fetch_nsfwjs.sh); OUT_MODEL_PT is replaced atomically and comes
# out byte-identical on every run. The only network access is `npm pack`.
# nsfwjs's MIT licence is copied next to it as LICENSE.nsfwjs.
#
# Environment: IMAGESEARCH_CACHE, NODE (default node), NPM (default npm),
# IMAGESEARCH_TORCH_PYTHON (default /usr/bin/python3, Debian's python with
# python3-torch and python3-torchvision).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_MODEL_PT" >&2
  exit 2
fi

readonly kModelSubdir="package/dist/models/mobilenet_v2_mid"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
node="${NODE:-node}"
python="${IMAGESEARCH_TORCH_PYTHON:-/usr/bin/python3}"

tarball="$("${here}/fetch_nsfwjs.sh")"

work="$(mktemp -d "${TMPDIR:-/tmp}/imagesearch_default_model.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

tar -xzf "${tarball}" -C "${work}" "${kModelSubdir}" package/LICENSE
"${node}" "${here}/tfjs_artifacts.js" "${work}/${kModelSubdir}" "${work}/weights" >&2

# The archive's inner folder is named after the file, so always write model.pt
# and move it; a fixed hash seed keeps TorchScript's constant order stable.
PYTHONHASHSEED=0 "${python}" "${here}/convert_to_torchscript.py" "${work}/weights" \
  "${work}/model.pt" >&2

mkdir -p "$(dirname "${out}")"
cp "${work}/package/LICENSE" "$(dirname "${out}")/LICENSE.nsfwjs"
cp "${work}/model.pt" "${out}.tmp.$$"
mv -f "${out}.tmp.$$" "${out}"
echo "default model: ${out}" >&2
