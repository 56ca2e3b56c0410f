#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz; the fuzz preset: clang-14, ASan + UBSan) and runs each
# one, one at a time, on its committed seed corpus (tests/fuzz/corpus/<target>), which it only
# reads: what a run finds goes to a scratch corpus. A crash, hang, leak or sanitizer report fails
# the run and its input is kept under build/fuzz/artifacts/.
#   tools/fuzz.sh                       every target for MNEMO_FUZZ_SECONDS (default 25) each
#   tools/fuzz.sh TARGET [LIBFUZZER_ARGS...]
#                                       one target with extra libFuzzer arguments, e.g. a long run:
#                                       tools/fuzz.sh snapshot_fuzzer -runs=10000000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
targets=(safetensors_fuzzer model_config_fuzzer utf8_fuzzer snapshot_fuzzer request_fuzzer
  request_bounds_fuzzer)
# Targets that read another target's inputs take its seed corpus.
seeds_of() { case "$1" in request_bounds_fuzzer) echo request_fuzzer ;; *) echo "$1" ;; esac; }
seconds=${MNEMO_FUZZ_SECONDS:-25}
extra=()
if [ $# -gt 0 ]; then
  targets=("$1")
  shift
  extra=("$@")
fi

cmake --preset fuzz >/dev/null
cmake --build build/fuzz --target "${targets[@]}" -j "$(nproc)"

artifacts=$root/build/fuzz/artifacts
mkdir -p "$artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in "${targets[@]}"; do
  echo "== fuzz: $t"
  mkdir -p "$scratch/$t"
  args=(-timeout=25 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/$t-")
  if [ ${#extra[@]} -eq 0 ]; then
    args+=(-max_total_time="$seconds")
  fi
  "build/fuzz/$t" "${args[@]}" "${extra[@]}" "$scratch/$t" "tests/fuzz/corpus/$(seeds_of "$t")"
done
echo "== fuzz: ok (${targets[*]})"
