// Weight matrices stored sparsely for y = x·Wᵀ on the CPU (MODEL-SPEC §8): CSR for unstructured
// pruning and the 2:4 layout for structured pruning. Decode is bandwidth-bound, so a format pays
// when it moves fewer bytes than the dense f32 matrix: CSR with 16-bit columns costs 6 bytes per
// nonzero (dense: 4 per element, so it wins below ~2/3 density and by ~6.7× at 10%); 2:4 costs
// 2 + 0.25 bytes per element kept in half (≈ 1.8× fewer than dense).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

// Unstructured: the nonzeros of each row, in column order.
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<int64_t> row_start;  // [rows + 1]
  std::vector<uint16_t> col16;     // [nnz] column of each nonzero when cols ≤ 65536
  std::vector<int32_t> col32;      // [nnz] otherwise
  std::vector<float> values;       // [nnz]
  int64_t nnz() const { return static_cast<int64_t>(values.size()); }
  size_t bytes() const;  // storage of the arrays above
};

// 2:4 structured: in every group of 4 consecutive columns of a row at most 2 are nonzero; each
// group keeps 2 values (zeros padded) and their in-group indices.
struct Sparse24Matrix {
  int64_t rows = 0;
  int64_t cols = 0;           // a multiple of 4
  std::vector<float> values;  // [rows, cols / 2]: group g's two values at 2g, 2g + 1
  std::vector<uint8_t> meta;  // [rows, cols / 4]: index of value 2g in bits 0–1, of 2g + 1 in
                              // bits 2–3
  size_t bytes() const;
};

// The CSR form of the dense row-major w [rows, cols]: every element that compares unequal to
// zero is kept (so NaNs are kept, and -0.0 is dropped).
CsrMatrix ToCsr(const float* w, int64_t rows, int64_t cols);
// Whether every group of 4 consecutive columns of every row has at most 2 nonzeros
// (false when cols is not a multiple of 4; true for an all-zero matrix).
bool Is24Sparse(const float* w, int64_t rows, int64_t cols);
// The 2:4 form of w [rows, cols]; requires Is24Sparse(w, rows, cols) (asserted in debug builds).
// Each group stores its nonzeros in column order; a group with fewer than two is padded with
// zero values at the lowest unused in-group indices, so the two indices of a group always differ
// and ascend (group [0, 0, 5, 0] → values [0, 5], indices [0, 2]).
Sparse24Matrix To24(const float* w, int64_t rows, int64_t cols);

// y[i, o] = Σ_k x[i, k]·W[o, k] (+ bias[o]) for i < n: x [n, ldx] (first w.cols used), bias
// [w.rows] or null, y [n, ldy] (first w.rows written; the rest of each row is left untouched).
// Accumulates in f32. Work is split over output rows on `pool` in contiguous blocks (CSR: blocks
// of about equal nonzero count); small products run on the calling thread. Must not be called
// from inside a `pool.ParallelFor` job. Thread-safe for concurrent calls (the pool serialises).
void CsrMatmul(const CsrMatrix& w, const float* x, int64_t n, int64_t ldx, const float* bias,
               float* y, int64_t ldy, ThreadPool& pool);
void Sparse24Matmul(const Sparse24Matrix& w, const float* x, int64_t n, int64_t ldx,
                    const float* bias, float* y, int64_t ldy, ThreadPool& pool);

}  // namespace mnemo::kernels
