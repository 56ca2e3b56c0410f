// y[i, o] = Σ_k x[i, k]·W[o, k] (+ bias[o]) for a pruned W stored sparsely (MODEL-SPEC §8), on
// the GPU: the device twins of kernels/cpu/sparse_matmul.h for decode steps and small batches,
// which are bound by the bytes of W. One warp per output row; its lanes stride over the row's
// nonzeros (CSR) or groups of four inputs (2:4) and accumulate up to 8 input rows at once, so
// every nonzero is read once per 8 rows. Arrays as the CPU forms lay them out (CsrMatrix,
// Sparse24Matrix), copied to the device; float32 values and activations, float32 accumulation.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mnemo::kernels::cuda {

// row_start [rows + 1]; exactly one of col16 / col32 [nnz] non-null; values [nnz].
// x [n, ldx] (first `cols` used), bias [rows] or null, y [n, ldy] (first `rows` written).
cudaError_t CsrMatmul(const int64_t* row_start, const uint16_t* col16, const int32_t* col32,
                      const float* values, int64_t rows, const float* x, int64_t n, int64_t ldx,
                      const float* bias, float* y, int64_t ldy, cudaStream_t stream);

// values [rows, cols / 2] (group g's two values at 2g, 2g + 1), meta [rows, cols / 4] (in-group
// index of value 2g in bits 0–1, of 2g + 1 in bits 2–3); cols a multiple of 4.
cudaError_t Sparse24Matmul(const float* values, const uint8_t* meta, int64_t rows, int64_t cols,
                           const float* x, int64_t n, int64_t ldx, const float* bias, float* y,
                           int64_t ldy, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
