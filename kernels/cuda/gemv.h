// y[out] = W[out, in] · x[in] (+ bias[out]) in float32: the matrix-vector product of a decode
// step, where every weight is read once and the kernel is bound by memory bandwidth. 16-byte
// loads, four rows per block with the `in` dimension split over its threads (so even out = 1024
// gives 256 blocks), the bias and activation fused.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mnemo::kernels::cuda {

// Whether Gemv handles this shape and these addresses (16-byte aligned W rows and x, `in` a
// multiple of 4); otherwise use a BLAS.
bool GemvSupported(const float* w, const float* x, int64_t in);

// act: −1 none, 0 ReLU, 1 GELU (erf form), applied after the bias.
cudaError_t Gemv(const float* w, const float* x, const float* bias, int act, float* y, int64_t out,
                 int64_t in, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
