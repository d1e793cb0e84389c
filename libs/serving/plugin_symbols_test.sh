#!/usr/bin/env bash
# The model-runtime plugin must not carry its own copy of the libraries the
# query service holds (serving, snapshot, index, common): any registry,
# counter or setting in them would exist twice in one process.
#   plugin_symbols_test.sh PLUGIN.so LIBIMAGESEARCH_COMMON.so
set -euo pipefail
plugin=$1 common=$2
# Strong definitions (text, data, bss) in the imagesearch namespace, outside
# what the plugin is for (model, encoder, image, text).
dupes=$(nm -DC --defined-only "$plugin" | awk '$2 ~ /^[TDBR]$/' | cut -d' ' -f3- |
  grep '^imagesearch::' | grep -Ev '^imagesearch::(model|encoder|image|text)::' || true)
if [[ -n $dupes ]]; then
  echo "FAIL: $plugin defines service-side symbols:"; echo "$dupes" | head -20; exit 1
fi
# Sanity: nm does read the plugin (its entry point is there), so an empty
# list above means something.
nm -D --defined-only "$plugin" | grep ' imagesearch_load_model_runtime_v1$' >/dev/null ||
  { echo "FAIL: $plugin has no imagesearch_load_model_runtime_v1"; exit 1; }
# libs/common is a shared library: anything of it the plugin uses is
# undefined there and bound to the process's one copy.
nm -DC --defined-only "$common" | grep ' imagesearch::LogLine(' >/dev/null ||
  { echo "FAIL: $common does not define imagesearch::LogLine"; exit 1; }
echo "ok: $plugin defines no serving/snapshot/index/common symbols"
