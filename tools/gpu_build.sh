#!/usr/bin/env bash
# On a CUDA machine without Debian's development packages: builds engine/ + kernels/ + tests with
# the libraries tools/gather_gpu_deps.sh unpacked into .gpu-deps/, then runs ctest (the CUDA
# tests run there; the Python parity tests are not part of this build).
#   tools/gpu_build.sh [ctest args…]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps=$root/.gpu-deps/root
[ -d "$deps" ] || { echo "gpu_build: run tools/gather_gpu_deps.sh first (and carry .gpu-deps)" >&2; exit 1; }
lib=$deps/usr/lib/x86_64-linux-gnu
export PKG_CONFIG="$deps/usr/bin/pkgconf"
export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$lib/openblas-pthread/pkgconfig:$deps/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$deps"
export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
build=$root/build/engine-gpu
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMNEMO_BUILD_SERVER=OFF -DMNEMO_CUDA=ON -DMNEMO_PYTHON_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$deps/usr" -DCMAKE_CXX_FLAGS="-isystem $deps/usr/include" \
  -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG"
cmake --build "$build" -j "$(nproc)"
cd "$build" && ctest --output-on-failure "$@"
