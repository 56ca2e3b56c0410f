// The kernels' name for a tensor's dtype: how the CPU and CUDA kernels read a weight matrix or a
// 16-bit key/value ring.
#pragma once

#include "base/dtype.h"
#include "kernels/kinds.h"

namespace mnemo::engine {

// float32, bfloat16 or float16 (an int32 tensor is never a weight: float32).
inline kernels::WeightType WeightTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return kernels::WeightType::kBF16;
    case DType::kF16:
      return kernels::WeightType::kF16;
    default:
      return kernels::WeightType::kF32;
  }
}

}  // namespace mnemo::engine
