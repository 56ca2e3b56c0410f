#!/usr/bin/env bash
# The quick start's "test" command: installs what the tests need, builds from scratch and runs
# every test: the release build (engine, CLI, CUDA sources compiled when nvcc exists, the Python
# parity tests against PyTorch and Hugging Face), the engine tests under ASan + UBSan and under
# TSan, the format, layering, documentation-link, deployment (tools/check_deploy.sh) and clang-tidy
# checks, clang's thread-safety analysis of the lock annotations, a bounded run of every libFuzzer
# target on its seed corpus (tools/fuzz.sh), and (as root) the container image recipe in a fresh
# Debian root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh test
jobs=$(nproc)

echo "== format and layering checks"
tools/check_format.sh
tools/check_layering.sh
tools/check_doc_links.sh
tools/check_deploy.sh

for preset in release asan tsan; do
  echo "== $preset: configure and build from scratch"
  rm -rf "build/$preset"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "== $preset: tests"
  ctest --preset "$preset" -j "$jobs"
  if [ "$preset" = release ]; then
    echo "== clang-tidy"
    tools/check_tidy.sh "build/$preset"
    # The container image recipe, run in a fresh Debian root (mounts and chroot: root only).
    if [ "$(id -u)" -eq 0 ]; then
      tools/check_image.sh "build/$preset"
    else
      echo "== image: skipped (tools/check_image.sh needs root)"
    fi
  fi
done

# The server binary (server core, engine, kernels: every class with annotated locks) built by
# clang with -Wthread-safety as errors. Build only: the annotations change no code.
echo "== thread-safety: clang's lock analysis"
rm -rf build/thread-safety
cmake --preset thread-safety >/dev/null
cmake --build --preset thread-safety -j "$jobs"
# The parsers' libFuzzer targets under ASan + UBSan, 15 s each on their seed corpora (long runs:
# tools/fuzz.sh TARGET -runs=N, docs/testing.md).
echo "== fuzz: every target, bounded"
rm -rf build/fuzz
MNEMO_FUZZ_SECONDS=15 tools/fuzz.sh
echo "== all tests passed"
