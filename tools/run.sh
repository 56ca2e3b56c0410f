#!/usr/bin/env bash
# The quick start's "run" command: installs build dependencies, builds the release preset, makes
# the small default checkpoint if it is not there yet, and generates from it.
#   tools/run.sh [extra `mnemo generate` flags…]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh build
cmake --preset release -DMNEMO_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target mnemo
model=${MNEMO_MODEL:-build/models/tiny}
if [ ! -f "$model/model.safetensors" ]; then
  /usr/bin/python3 tools/make_tiny_model.py "$model"
fi
if [ $# -eq 0 ]; then
  set -- --prompt "This program is free software" --max-tokens 48 --seed 1
fi
exec build/release/mnemo generate --model "$model" "$@"
