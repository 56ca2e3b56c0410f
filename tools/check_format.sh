#!/usr/bin/env bash
# Fails when a C++/CUDA source differs from what clang-format (the repo's .clang-format) makes.
#   tools/check_format.sh          check
#   tools/check_format.sh --fix    rewrite the files in place
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
[ ${#files[@]} -gt 0 ] || exit 0
if [ "${1:-}" = --fix ]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run --Werror "${files[@]}"
  echo "format: ok (${#files[@]} files)"
fi
