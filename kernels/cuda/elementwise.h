// Launchers for the row-wise and element-wise kernels of the CUDA backend. Every launcher
// enqueues on `stream` and returns the launch error (cudaSuccess when queued).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kinds.h"

namespace mnemo::kernels::cuda {

// y[n, :] = scale · table[ids[n], :] for n < count; ids on the device, already range-checked.
// 16-bit tables are widened to float32.
cudaError_t EmbeddingGather(const void* table, WeightType table_type, const int32_t* ids,
                            int64_t count, int64_t dim, float scale, float* y, cudaStream_t stream);
// dst[i] = src[i] rounded to bfloat16 (to_bf16) or float16, nearest-even: the inputs of a
// tensor-core product.
cudaError_t NarrowFloat(const float* src, uint16_t* dst, int64_t n, bool to_bf16,
                        cudaStream_t stream);
// Row-wise LayerNorm over `cols`; y may be x. Two-pass (mean, then centred variance) in float32,
// as the CPU oracle does.
cudaError_t LayerNorm(const float* x, const float* gamma, const float* beta, float eps, float* y,
                      int64_t rows, int64_t cols, cudaStream_t stream);
// x += delta, then y = LayerNorm(x), row-wise (y may be x).
cudaError_t AddLayerNorm(float* x, const float* delta, const float* gamma, const float* beta,
                         float eps, float* y, int64_t rows, int64_t cols, cudaStream_t stream);
// Row-wise RMSNorm over `cols`: y = x / sqrt(mean(x²) + eps) · gamma (y may be x).
cudaError_t RmsNorm(const float* x, const float* gamma, float eps, float* y, int64_t rows,
                    int64_t cols, cudaStream_t stream);
// Gated MLP: y[r, i] = act(x[r, i]) · x[r, cols + i] for x[rows, 2·cols].
cudaError_t GatedActivation(const float* x, Activation act, float* y, int64_t rows, int64_t cols,
                            cudaStream_t stream);
// y = act(y + bias) row-wise (GELU in its erf form).
cudaError_t BiasActivation(float* y, const float* bias, int64_t rows, int64_t cols, Activation act,
                           cudaStream_t stream);
// y = a + b over n elements (y may alias a or b).
cudaError_t Add(const float* a, const float* b, float* y, int64_t n, cudaStream_t stream);
// dst[r, :] = row[:] for r < rows.
cudaError_t FillRows(const float* row, float* dst, int64_t rows, int64_t cols, cudaStream_t stream);
// y[i, :] = x[rows[i], :] for i < count; rows on the device.
cudaError_t GatherRows(const float* x, const int64_t* rows, int64_t count, int64_t cols, float* y,
                       cudaStream_t stream);
// For i < count: copy `cols` floats from src[i] to dst[i] (pointer pairs on the device). Used to
// write new keys/values into session memory rings at their slots, every sequence in one launch.
cudaError_t CopyRowsIndirect(const float* const* src, float* const* dst, int64_t count,
                             int64_t cols, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
