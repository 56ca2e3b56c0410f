// y[out] = W[out, in] · x[in] (+ bias[out]) in float32: the matrix-vector product of a decode
// step, where every weight is read once and the kernel is bound by memory bandwidth. 16-byte
// loads, four rows per block with the `in` dimension split over its threads (so even out = 1024
// gives 256 blocks), the bias and activation fused.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>

#include "kernels/kinds.h"

namespace mnemo::kernels::cuda {

// Whether Gemv handles this shape and these addresses (16-byte aligned W rows and x, `in` a
// multiple of 4, of 8 for 16-bit W); otherwise use a BLAS.
bool GemvSupported(WeightType type, const void* w, const float* x, int64_t in);

// act (none: std::nullopt) is applied after the bias.
cudaError_t Gemv(WeightType type, const void* w, const float* x, const float* bias,
                 std::optional<Activation> act, float* y, int64_t out, int64_t in,
                 cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
