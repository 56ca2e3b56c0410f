// The CPU backend's dense products, through OpenBLAS (Debian's libopenblas).
// OpenBLAS runs single-threaded: all parallelism comes from our ThreadPool, which splits
// products by output columns (and attention by heads), so two thread pools never compete for
// the same cores and pool workers can call BLAS concurrently.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

// Makes OpenBLAS single-threaded (once per process). Called by every function here; call it
// directly before using cblas_* elsewhere.
void UseSingleThreadedBlas();

// y[rows, out] = x[rows, in] · w[out, in]ᵀ (+ bias[out] when not null), split over `pool` by
// blocks of output columns. Strides are in elements. A single row goes through sgemv: OpenBLAS's
// sgemv is several times faster than sgemm with M = 1, and decode is made of such rows.
void Linear(const float* x, int64_t ldx, const float* w, const float* bias, float* y, int64_t ldy,
            int64_t rows, int64_t in, int64_t out, ThreadPool& pool);

// The width of the column blocks ForColumnBlocks splits a product of `rows` × `in` × `out`
// multiply-adds into: 0 when it is small enough for the calling thread, else a multiple of 16
// columns giving as many blocks as `pool` has chunks.
int64_t ColumnBlockWidth(int64_t rows, int64_t in, int64_t out, const ThreadPool& pool);

// Runs fn(o0, n) over blocks [o0, o0 + n) of `out` output columns (ColumnBlockWidth): on the
// calling thread when the product is small, else on `pool`, so a thread the OS deschedules holds
// up one small block while the others take the rest. The blocks depend only on the shape and the
// pool's size, so each column is computed the same way on every run. A template, so that a small
// product (every decode step has many) wraps nothing in a std::function.
template <typename Fn>
void ForColumnBlocks(int64_t rows, int64_t in, int64_t out, ThreadPool& pool, const Fn& fn) {
  const int64_t block = ColumnBlockWidth(rows, in, out, pool);
  if (block == 0) {
    fn(int64_t{0}, out);
    return;
  }
  const auto run = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b * block, std::min(block, out - b * block));
  };
  pool.ParallelFor((out + block - 1) / block, 1, std::cref(run));  // a reference: no allocation
}

// Single-threaded products for callers that parallelise themselves.
// y[rows] = a[rows, cols] · x[cols] + beta·y  (a row-major with row stride lda).
void Gemv(int64_t rows, int64_t cols, const float* a, int64_t lda, const float* x, float beta,
          float* y);
// y[cols] = a[rows, cols]ᵀ · x[rows] + beta·y  (a row-major with row stride lda).
void GemvT(int64_t rows, int64_t cols, const float* a, int64_t lda, const float* x, float beta,
           float* y);

// c[m, n] = alpha · a[m, k] · b[n, k]ᵀ + beta · c  (row-major, strides in elements).
void GemmNT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// c[m, n] = alpha · a[m, k] · b[k, n] + beta · c  (row-major, strides in elements).
void GemmNN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The same in double (small products that rounding would spoil: Nyström's pseudo-inverse).
void GemmNN(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
            const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// c[m, n] = alpha · a[k, m]ᵀ · b[k, n] + beta · c  (row-major, strides in elements).
void GemmTN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace mnemo::kernels
