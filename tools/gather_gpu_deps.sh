#!/usr/bin/env bash
# Gathers the Debian packages the engine build needs beyond what a bare CUDA machine has
# (Abseil, OpenBLAS, sentencepiece, nlohmann-json, GoogleTest, pkg-config) into .gpu-deps/,
# unpacked with dpkg -x, so that machine (no network, no apt) can build engine/ + kernels/ +
# the GPU tests. gRPC is not needed there (MNEMO_BUILD_SERVER=OFF).
#   tools/gather_gpu_deps.sh            (here, with network: fills .gpu-deps/)
#   tools/gpu_build.sh                   (there: configures with .gpu-deps/, builds, runs ctest)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/.gpu-deps
pkgs=(
  libabsl-dev libabsl20220623
  libopenblas-dev libopenblas-pthread-dev libopenblas0 libopenblas0-pthread libgfortran5
  libsentencepiece-dev libsentencepiece0 libprotobuf-lite32
  nlohmann-json3-dev libxxhash-dev libxxhash0
  libgtest-dev
  pkgconf pkgconf-bin libpkgconf3
)
rm -rf "$out"
mkdir -p "$out/debs" "$out/root"
(cd "$out/debs" && apt-get download "${pkgs[@]}" >/dev/null)
for deb in "$out"/debs/*.deb; do dpkg -x "$deb" "$out/root"; done
# Debian selects the OpenBLAS variant through update-alternatives, which dpkg -x does not run:
# point the generic names at the pthread variant by hand (relative links, so the tree moves).
lib=$out/root/usr/lib/x86_64-linux-gnu
for f in libopenblas.so libopenblas.so.0 libblas.so libblas.so.3 liblapack.so liblapack.so.3; do
  src=$(ls "$lib/openblas-pthread/$f" 2>/dev/null || true)
  [ -n "$src" ] && ln -sfn "openblas-pthread/$f" "$lib/$f"
done
# Keep the carried tree small (the device tool carries at most 64 MiB): shared libraries only,
# except GoogleTest, which Debian ships static; no documentation.
find "$out/root" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
rm -rf "$out/debs" "$out/root/usr/share/doc" "$out/root/usr/share/man"
du -sh "$out" | awk '{print "gather_gpu_deps: " $1 " in .gpu-deps/"}'
