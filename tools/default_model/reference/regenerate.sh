#!/usr/bin/env bash
# Regenerates tests/data/default_model/ (inputs + TensorFlow.js reference) from
# scratch. Needs npm (registry access), node and /usr/bin/python3 with PIL.
#   tools/default_model/reference/regenerate.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../../.." && pwd)"
data="${repo}/tests/data/default_model"
python="${IMAGESEARCH_TORCH_PYTHON:-/usr/bin/python3}"

(cd "${here}" && "${NPM:-npm}" ci --no-audit --no-fund --silent)
tarball="$("${here}/../fetch_nsfwjs.sh")"
work="$(mktemp -d "${TMPDIR:-/tmp}/imagesearch_reference.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
tar -xzf "${tarball}" -C "${work}" package/dist/models/mobilenet_v2_mid

rm -rf "${data}/inputs"
"${python}" "${here}/make_inputs.py" "${repo}/tests/data/images" "${data}/inputs"
"${NODE:-node}" "${here}/make_reference.js" "${work}/package/dist/models/mobilenet_v2_mid" \
  "${data}/inputs" "${data}"
