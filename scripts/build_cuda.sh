#!/usr/bin/env bash
# Builds `collage` against a CUDA libtorch instead of Debian's CPU libtorch, into its own build folder.
# Usage: scripts/build_cuda.sh LIBTORCH [BUILD_DIR=build-cuda]
#   LIBTORCH: an unpacked libtorch archive (https://pytorch.org, "LibTorch", C++/Java, CUDA, the cxx11 ABI
#   build), or the torch folder of a PyTorch wheel (python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))').
# The other libraries (fmt, OpenCV, HDF5, ICU, ...) come from Debian (scripts/setup.sh), which builds with the
# C++11 ABI, so the libtorch must use it too: the script stops when it does not. CMake's Torch package also
# needs the CUDA toolkit (nvcc) it was built for on the build machine. docs/cluster.md has the whole recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
libtorch="${1:?usage: scripts/build_cuda.sh LIBTORCH [BUILD_DIR]}"; build="${2:-build-cuda}"
libtorch="$(cd "$libtorch" && pwd)"
torch_dir="$libtorch/share/cmake/Torch"
[ -f "$torch_dir/TorchConfig.cmake" ] || { echo "no $torch_dir/TorchConfig.cmake: not a libtorch folder" >&2; exit 2; }
if grep -q "_GLIBCXX_USE_CXX11_ABI=0" "$torch_dir/TorchConfig.cmake"; then
  echo "$libtorch uses the pre-C++11 ABI; Debian's fmt/OpenCV/HDF5 use the C++11 ABI: take the cxx11-ABI" >&2
  echo "libtorch archive (or a wheel where torch._C._GLIBCXX_USE_CXX11_ABI is True)" >&2
  exit 2
fi
ls "$libtorch"/lib/libtorch_cuda*.so >/dev/null 2>&1 || echo "warning: $libtorch has no libtorch_cuda: a CPU-only libtorch" >&2
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTorch_DIR="$torch_dir" \
  -DCMAKE_BUILD_RPATH="$libtorch/lib" -DCOLLAGE_BUILD_TESTS="${COLLAGE_BUILD_TESTS:-OFF}"
cmake --build "$build" -j"$(nproc)" --target collage
echo "built $build/collage against $libtorch"
echo "check: $build/collage --device cuda bench unet --config sd15 --latent 64"
