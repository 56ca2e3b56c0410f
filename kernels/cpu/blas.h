// The CPU backend's dense products, through OpenBLAS (Debian's libopenblas).
#pragma once

#include <cstdint>

namespace mnemo::kernels {

// y[rows, out] = x[rows, in] · w[out, in]ᵀ (+ bias[out] when not null).
// Strides are in elements. A single row goes through sgemv: OpenBLAS's sgemv is several times
// faster than sgemm with M = 1, and decode is made of such rows.
void Linear(const float* x, int64_t ldx, const float* w, const float* bias, float* y, int64_t ldy,
            int64_t rows, int64_t in, int64_t out);

// c[m, n] = alpha · a[m, k] · b[n, k]ᵀ + beta · c  (row-major, strides in elements).
void GemmNT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// c[m, n] = alpha · a[m, k] · b[k, n] + beta · c  (row-major, strides in elements).
void GemmNN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace mnemo::kernels
