#!/usr/bin/env bash
# One-time set-up on a fresh Debian (bookworm) machine: installs the Debian packages the project
# needs, then configures and builds it into build/. Idempotent: a second run installs nothing new and
# only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev            # libtorch 1.13 (CPU)
  libopenblas0-openmp     # libtorch otherwise links the reference BLAS, ~30x slower
  libeigen3-dev libhdf5-dev libfmt-dev libcli11-dev libopencv-dev libgtest-dev
  nlohmann-json3-dev libicu-dev
  python3-h5py python3-numpy python3-matplotlib   # scripts/ (figures, golden export checks)
  slurm-wlm munge bc      # the SLURM sweep test (a one-node cluster) and scripts/bench_contention.sh
  chromium                # the results page test loads the page in a headless browser
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# Make sure the optimised BLAS is the one selected (libtorch resolves libblas.so.3 at load time).
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3
if [ -e "$blas" ] && [ "$(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null)" != "$blas" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "setup: done (binary: build/collage)"
