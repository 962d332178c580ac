#!/usr/bin/env bash
# Builds scripts/device/device_check on a machine that has a (CUDA) libtorch but none of our Debian
# packages: the PyTorch wheel's headers and libraries, our library code without the OpenCV/HDF5 modules,
# fmt header-only, and ICU/fmt/nlohmann headers + ICU libraries unpacked from DEPS_TARBALL (made on a Debian
# machine by scripts/device/pack_deps.sh).
#   TORCH_DIR=<site-packages/torch> DEPS_TARBALL=.devdeps/deps.tar.xz OUT_BIN=/tmp/device_check build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
TORCH_DIR=${TORCH_DIR:-$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')}
DEPS_TARBALL=${DEPS_TARBALL:-.devdeps/deps.tar.xz}
DEPS_DIR=${DEPS_DIR:-/tmp/collage_devdeps}
OUT_BIN=${OUT_BIN:-/tmp/device_check}
OBJ_DIR=${OBJ_DIR:-/tmp/collage_device_obj}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$DEPS_DIR" "$OBJ_DIR"
if [ -f "$DEPS_TARBALL" ]; then tar xJf "$DEPS_TARBALL" -C "$DEPS_DIR"; fi
ABI=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)

SOURCES=(
  framework/core/{compare,json,paths,process,safetensors,version}.cpp
  framework/models/*.cpp
  framework/diffusion/*.cpp
  framework/parity/{attention_parity,bench,recorder,table,tokenizer_parity,text_encoder_parity,unet_parity,vae_parity,schedulers_parity,pipeline_parity}.cpp
  framework/training/{trainer,evaluate}.cpp
  datasets/shapesworld/{world,render,analyse}.cpp
  scripts/device/device_check.cpp
)
CXXFLAGS=(-O2 -std=c++17 -fPIC -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DFMT_HEADER_ONLY
  "-DCOLLAGE_VERSION=\"device\"" "-DCOLLAGE_GIT_REVISION=\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\""
  -Iframework -I. -I"$DEPS_DIR/usr/include" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include"
  -Wno-deprecated-declarations)  # our fmt 9 before any fmt the wheel ships (fmt 11 moved fmt::join)
echo "compiling ${#SOURCES[@]} files with $JOBS jobs against $TORCH_DIR"
export OBJ_DIR
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'o="$OBJ_DIR/$(echo {} | tr / _).o"; [ "$o" -nt {} ] || g++ '"$(printf "'%s' " "${CXXFLAGS[@]}")"' -c {} -o "$o" || { echo "FAILED: {}"; exit 255; }'
OBJS=()
for s in "${SOURCES[@]}"; do OBJS+=("$OBJ_DIR/$(echo "$s" | tr / _).o"); done
TORCH_LIBS=(-ltorch -ltorch_cpu -lc10)
[ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] && TORCH_LIBS=(-ltorch -ltorch_cuda -ltorch_cpu -lc10_cuda -lc10)
# libstdc++ first among the needed libraries: the wheel's libtorch_cpu carries its own (older) copy of
# std::filesystem, and the first run's checkpoint pruning (fs::remove_all) crashed with SIGSEGV, probably by
# binding to it (unverified: no device time was left to test this).
g++ -o "$OUT_BIN" "${OBJS[@]}" -Wl,--no-as-needed -lstdc++ -L"$TORCH_DIR/lib" -Wl,-rpath,"$TORCH_DIR/lib" "${TORCH_LIBS[@]}" \
  -Wl,--as-needed -L"$DEPS_DIR/usr/lib/x86_64-linux-gnu" -Wl,-rpath,"$DEPS_DIR/usr/lib/x86_64-linux-gnu" \
  -Wl,--disable-new-dtags \
  -licui18n -licuuc -licudata -lpthread
echo "built $OUT_BIN"
