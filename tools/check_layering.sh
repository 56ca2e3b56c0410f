#!/usr/bin/env bash
# Enforces DESIGN.md §1: arrows point down only.
#   engine/, kernels/, base/ never include gRPC or protobuf;
#   kernels/ and base/ never include engine/ or server/; engine/ never includes server/;
#   clients/ include neither engine/, server/ nor kernels/ (only the contract and base/);
#   server/ and tools/cli/ see the engine only through engine/api/ (never its internals, kernels/
#   or engine/api/model_access.h);
#   sentencepiece is included only by engine/tokenizer/sentencepiece_module.cc;
#   CUDA headers only under kernels/cuda/ (and engine/backend/cuda/).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
check() {  # check DESCRIPTION PATTERN PATHS...
  local what=$1 pattern=$2
  shift 2
  local hits
  hits=$(grep -rnE "$pattern" "$@" --include='*.h' --include='*.cc' --include='*.cu' --include='*.cuh' 2>/dev/null || true)
  if [ -n "$hits" ]; then
    echo "layering: $what:"
    echo "$hits"
    fail=1
  fi
}
check "gRPC/protobuf below server/" '#include\s*[<"](grpc|grpcpp|google/protobuf)' base engine kernels
check "kernels/ or base/ including engine/ or server/" '#include\s*"(engine|server)/' base kernels
check "engine/ including server/" '#include\s*"server/' engine
check "clients/ including engine/, server/ or kernels/" '#include\s*"(engine|server|kernels)/' clients
seam=$(grep -rnE '#include\s*"(engine|kernels)/' server tools/cli --include='*.h' --include='*.cc' 2>/dev/null | grep -vE '#include\s*"engine/api/' || true)
if [ -n "$seam" ]; then echo "layering: server/ or tools/cli/ including engine internals or kernels/ (only engine/api/):"; echo "$seam"; fail=1; fi
access=$(grep -rnE '#include\s*"engine/api/model_access.h"' server tools/cli --include='*.h' --include='*.cc' 2>/dev/null || true)
if [ -n "$access" ]; then echo "layering: engine/api/model_access.h is the engine's own:"; echo "$access"; fail=1; fi
spm=$(grep -rlnE '#include\s*[<"]sentencepiece' base engine kernels tools 2>/dev/null | grep -v '^engine/tokenizer/sentencepiece_module.cc$' || true)
if [ -n "$spm" ]; then echo "layering: sentencepiece included outside its wrapper: $spm"; fail=1; fi
cuda=$(grep -rlnE '#include\s*[<"](cuda_runtime|cuda\.h|cublas|cusparse|cuda_fp16|cuda_bf16)' base engine kernels 2>/dev/null | grep -vE '^(kernels/cuda/|engine/backend/cuda/)' || true)
if [ -n "$cuda" ]; then echo "layering: CUDA headers outside kernels/cuda and engine/backend/cuda: $cuda"; fail=1; fi
[ $fail -eq 0 ] && echo "layering: ok"
exit $fail
