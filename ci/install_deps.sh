#!/usr/bin/env bash
# Installs everything imagesearch needs on Debian 12, from Debian's archive.
# Idempotent. Run as root (or with sudo).
set -euo pipefail
SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO="sudo"
PACKAGES=(
  # Toolchain
  build-essential cmake pkg-config ccache git curl openssl
  # libFuzzer targets (tests/fuzz, ci/fuzz.sh)
  clang libclang-rt-14-dev
  # Serving stack
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libssl-dev libxxhash-dev nlohmann-json3-dev
  # Index, images, model
  libhnswlib-dev libvips-dev libtorch-dev libicu-dev zlib1g-dev
  # HTTP front end (libevent), metrics; cpp-httplib: the load generator's HTTP client
  libevent-dev libcpp-httplib-dev prometheus-cpp-dev
  # OpenBLAS as the system BLAS (libblas.so.3): LibTorch's BLAS calls must never
  # fall back to netlib's reference implementation.
  libopenblas0-pthread
  # Tests and tools (chromium: the browser test of the query service's web page;
  # libfaiss-dev: the faiss peer in tools/bench, optional; shellcheck: ci/lint.sh;
  # python3-yaml: ci/run_workflow_job.py reads the workflow)
  catch2 nginx chromium libfaiss-dev python3-grpcio python3-protobuf python3-numpy python3-yaml
  python3-torch python3-torchvision python3-pil python3-regex shellcheck
)
# Node.js and npm (the default model's weights and buf come from the npm
# registry); keep an existing Node.js install, e.g. NodeSource's.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Make OpenBLAS the system BLAS/LAPACK even if an admin pinned netlib's.
for lib in libblas.so.3 liblapack.so.3; do
  alt="/usr/lib/x86_64-linux-gnu/openblas-pthread/$lib"
  [[ -e $alt ]] && $SUDO update-alternatives --set "$lib-x86_64-linux-gnu" "$alt" >/dev/null
done
exit 0
