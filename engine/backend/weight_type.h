// The kernels' name for a weight tensor's dtype: how the CPU and CUDA products read a matrix.
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
