// The CPU products (blas.h) on single-threaded OpenBLAS, split over the thread pool by blocks of
// output columns.
#include "kernels/cpu/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {

namespace {

// Below this many multiply-adds a product runs on the calling thread: waking workers costs more.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
constexpr int64_t kColumnAlign = 16;  // keep column blocks a multiple of the vector width

void LinearBlock(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                 int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  if (rows <= kDecodeKernelMaxRows && FloatDecodeKernelAvailable()) {
    FloatGemvRows(x, ldx, w, bias, y, ldy, rows, in, out);
    return;
  }
  // With a bias, y starts as the bias and BLAS accumulates into it (beta = 1): one pass over y.
  float beta = 0.0f;
  if (bias != nullptr) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * ldy, bias, out * sizeof(float));
    beta = 1.0f;
  }
  if (rows == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w,
                static_cast<int>(in), x, 1, beta, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
                static_cast<int>(out), static_cast<int>(in), 1.0f, x, static_cast<int>(ldx), w,
                static_cast<int>(in), beta, y, static_cast<int>(ldy));
  }
}

}  // namespace

void UseSingleThreadedBlas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

int64_t ColumnBlockWidth(int64_t rows, int64_t in, int64_t out, const ThreadPool& pool) {
  if (pool.num_threads() == 1 || rows * in * out < kMinParallelWork) return 0;
  const int64_t wanted = pool.max_chunks();
  const int64_t block = (out + wanted - 1) / wanted;
  return (block + kColumnAlign - 1) / kColumnAlign * kColumnAlign;
}

void Linear(const float* x, int64_t ldx, const float* w, const float* bias, float* y, int64_t ldy,
            int64_t rows, int64_t in, int64_t out, ThreadPool& pool) {
  if (rows <= 0 || out <= 0) return;
  UseSingleThreadedBlas();
  ForColumnBlocks(rows, in, out, pool, [&](int64_t o0, int64_t n) {
    LinearBlock(x, ldx, w + o0 * in, bias != nullptr ? bias + o0 : nullptr, y + o0, ldy, rows, in,
                n);
  });
}

void Gemv(int64_t rows, int64_t cols, const float* a, int64_t lda, const float* x, float beta,
          float* y) {
  if (rows <= 0) return;
  UseSingleThreadedBlas();
  cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0f, a,
              static_cast<int>(lda), x, 1, beta, y, 1);
}

void GemvT(int64_t rows, int64_t cols, const float* a, int64_t lda, const float* x, float beta,
           float* y) {
  if (rows <= 0) return;
  UseSingleThreadedBlas();
  cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0f, a,
              static_cast<int>(lda), x, 1, beta, y, 1);
}

void GemmNT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  UseSingleThreadedBlas();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void GemmNN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  UseSingleThreadedBlas();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void GemmNN(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
            const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  UseSingleThreadedBlas();
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void GemmTN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  UseSingleThreadedBlas();
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

}  // namespace mnemo::kernels
