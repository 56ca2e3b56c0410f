#!/usr/bin/env bash
# Runs clang-tidy (the repo's .clang-tidy, warnings are errors) over the C++ sources of base/,
# engine/, kernels/ (host C++), tools/, bench/, server/ and clients/cpp/, using BUILD_DIR's
# compile_commands.json.
#   tools/check_tidy.sh [BUILD_DIR]     (default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
# The sentencepiece wrapper is excluded: its third-party header is what it exists to contain.
mapfile -t files < <(git ls-files 'base/*.cc' 'engine/*.cc' 'kernels/cpu/*.cc' 'kernels/cuda/*.cc' 'tools/*.cc' \
  'bench/*.cc' 'server/*.cc' 'clients/cpp/*.cc' 'proto/*.cc' | grep -v 'sentencepiece_module.cc')
printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet
echo "clang-tidy: ok (${#files[@]} files)"
