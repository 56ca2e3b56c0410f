#!/usr/bin/env bash
# The quick start's "run" command: installs build dependencies, builds the release preset and
# starts the gRPC server on the embedded default model (models/teacher, trained on the King James
# Bible) in the foreground (Ctrl-C or SIGTERM drains and stops it).
#   tools/run.sh [extra mnemo-server flags…]      e.g. --listen 0.0.0.0:50051 --device cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools/setup.sh build
cmake --preset release -DMNEMO_BUILD_TESTS=OFF >/dev/null
targets=(mnemo mnemo-server mnemo_proto_python)
[ -f clients/cpp/CMakeLists.txt ] && targets+=(mnemo-client)
cmake --build --preset release --target "${targets[@]}"
model=${MNEMO_MODEL:-models/teacher}
exec build/release/mnemo-server --model "default=$model" --listen "${MNEMO_LISTEN:-127.0.0.1:50051}" \
  --metrics-listen "${MNEMO_METRICS_LISTEN:-127.0.0.1:9464}" "$@"
