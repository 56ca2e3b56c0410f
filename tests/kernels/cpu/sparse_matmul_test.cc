// kernels/cpu/sparse_matmul: ToCsr / Is24Sparse / To24 conversions exactly, and CsrMatmul /
// Sparse24Matmul against a double-precision dense y = x·Wᵀ + bias over shapes around the tile
// and unroll widths, densities from 0 to 1, all-zero rows, n from 1 (decode) to 64, with and
// without bias, padded x / y rows (x padding poisoned with NaN so a read shows up, y padding
// checked untouched), on an inline pool and a multi-threaded one.
#include "kernels/cpu/sparse_matmul.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"

#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {
namespace {

constexpr float kPoison = -12345.5f;

// Dense [rows, cols] with each element nonzero (uniform in ±[0.1, 1]) with probability
// `density`; every third row is entirely zero when `zero_rows`.
std::vector<float> RandomSparse(int64_t rows, int64_t cols, double density, bool zero_rows,
                                std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(0.1f, 1.0f);
  std::bernoulli_distribution keep(density), negative(0.5);
  std::vector<float> w(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    if (zero_rows && r % 3 == 1) continue;
    for (int64_t k = 0; k < cols; ++k) {
      if (keep(rng)) w[r * cols + k] = negative(rng) ? -mag(rng) : mag(rng);
    }
  }
  return w;
}

// Dense [rows, cols] (cols a multiple of 4) whose every group of 4 holds 0, 1 or 2 nonzeros at
// random positions; `full` forces exactly 2 per group.
std::vector<float> Random24(int64_t rows, int64_t cols, bool full, std::mt19937& rng) {
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pos(0, 3), how_many(0, 2);
  std::vector<float> w(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t g = 0; g < rows * cols / 4; ++g) {
    const int count = full ? 2 : how_many(rng);
    for (int placed = 0; placed < count;) {
      float& slot = w[4 * g + pos(rng)];
      if (slot != 0.0f) continue;
      slot = val(rng);
      if (slot != 0.0f) ++placed;
    }
  }
  return w;
}

struct Inputs {
  std::vector<float> x;     // [n, ldx], NaN in the padding
  std::vector<float> bias;  // [rows]
  int64_t ldx = 0;
};

Inputs MakeInputs(int64_t n, int64_t cols, int64_t rows, int64_t x_pad, std::mt19937& rng) {
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  Inputs in;
  in.ldx = cols + x_pad;
  in.x.assign(static_cast<size_t>(n * in.ldx), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < cols; ++k) in.x[i * in.ldx + k] = val(rng);
  }
  in.bias.resize(static_cast<size_t>(rows));
  for (float& b : in.bias) b = val(rng);
  return in;
}

// Checks y [n, ldy] against the double-precision dense product of w [rows, cols]: each element
// within 1e-5 of Σ|x·w| + |bias| (the scale of the terms summed in f32), and the padding of
// every y row still kPoison.
void ExpectMatchesDense(const std::vector<float>& w, int64_t rows, int64_t cols, const Inputs& in,
                        const float* bias, int64_t n, const std::vector<float>& y, int64_t ldy) {
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 5; ++i) {
    const float* xi = in.x.data() + i * in.ldx;
    for (int64_t o = 0; o < rows && failures < 5; ++o) {
      double ref = bias != nullptr ? bias[o] : 0.0;
      double scale = std::abs(ref);
      for (int64_t k = 0; k < cols; ++k) {
        const double term = static_cast<double>(xi[k]) * w[o * cols + k];
        ref += term;
        scale += std::abs(term);
      }
      const float got = y[i * ldy + o];
      if (!(std::abs(got - ref) <= 1e-5 * scale)) {
        ADD_FAILURE() << "y[" << i << ", " << o << "] = " << got << ", want " << ref << " (scale "
                      << scale << ")";
        ++failures;
      }
    }
    for (int64_t o = rows; o < ldy; ++o) {
      if (y[i * ldy + o] != kPoison) {
        ADD_FAILURE() << "padding y[" << i << ", " << o << "] written";
        ++failures;
      }
    }
  }
}

// Runs both formats that apply to w on the case and checks each against the dense product.
void CheckCase(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t n, bool use_bias,
               ThreadPool& pool, std::mt19937& rng) {
  SCOPED_TRACE(absl::StrCat("rows ", rows, " cols ", cols, " n ", n, " bias ", use_bias,
                            " threads ", pool.num_threads()));
  const int64_t x_pad = n % 2 == 0 ? 0 : 3, y_pad = n % 3 == 0 ? 0 : 5;
  const Inputs in = MakeInputs(n, cols, rows, x_pad, rng);
  const float* bias = use_bias ? in.bias.data() : nullptr;
  const int64_t ldy = rows + y_pad;
  {
    SCOPED_TRACE("csr");
    const CsrMatrix csr = ToCsr(w.data(), rows, cols);
    std::vector<float> y(static_cast<size_t>(n * ldy), kPoison);
    CsrMatmul(csr, in.x.data(), n, in.ldx, bias, y.data(), ldy, pool);
    ExpectMatchesDense(w, rows, cols, in, bias, n, y, ldy);
  }
  if (Is24Sparse(w.data(), rows, cols)) {
    SCOPED_TRACE("2:4");
    const Sparse24Matrix s24 = To24(w.data(), rows, cols);
    std::vector<float> y(static_cast<size_t>(n * ldy), kPoison);
    Sparse24Matmul(s24, in.x.data(), n, in.ldx, bias, y.data(), ldy, pool);
    ExpectMatchesDense(w, rows, cols, in, bias, n, y, ldy);
  }
}

// The dense matrix a Sparse24Matrix stands for.
std::vector<float> Expand24(const Sparse24Matrix& s) {
  std::vector<float> w(static_cast<size_t>(s.rows * s.cols), 0.0f);
  for (int64_t g = 0; g < s.rows * s.cols / 4; ++g) {
    const unsigned m = s.meta[g];
    EXPECT_NE(m & 3u, (m >> 2) & 3u) << "group " << g << " repeats an index";
    EXPECT_EQ(m >> 4, 0u) << "group " << g << " uses bits 4-7";
    w[4 * g + (m & 3u)] += s.values[2 * g];
    w[4 * g + ((m >> 2) & 3u)] += s.values[2 * g + 1];
  }
  return w;
}

constexpr int64_t kDims[] = {1, 3, 4, 8, 64, 100, 1024};
constexpr double kDensities[] = {0.0, 0.01, 0.1, 0.5, 1.0};

TEST(SparseMatmulTest, CsrMatchesDenseAcrossShapesDensitiesAndBatch) {
  std::mt19937 rng(1);
  ThreadPool inline_pool(1), pool(4);
  for (int64_t rows : kDims) {
    for (int64_t cols : kDims) {
      for (double density : kDensities) {
        SCOPED_TRACE(absl::StrCat("density ", density));
        const std::vector<float> w = RandomSparse(rows, cols, density, rows >= 3, rng);
        for (int64_t n : {1, 3, 9}) {
          CheckCase(w, rows, cols, n, n != 3, n == 9 ? inline_pool : pool, rng);
        }
      }
    }
  }
}

TEST(SparseMatmulTest, Sparse24MatchesDenseAcrossShapesAndBatch) {
  std::mt19937 rng(2);
  ThreadPool inline_pool(1), pool(4);
  for (int64_t rows : kDims) {
    for (int64_t cols : {4, 8, 12, 64, 100, 1024}) {
      for (bool full : {false, true}) {
        const std::vector<float> w = Random24(rows, cols, full, rng);
        ASSERT_TRUE(Is24Sparse(w.data(), rows, cols));
        for (int64_t n : {1, 2, 8, 17}) {
          CheckCase(w, rows, cols, n, n != 2, n == 17 ? inline_pool : pool, rng);
        }
      }
    }
  }
}

TEST(SparseMatmulTest, BatchUpTo64) {
  std::mt19937 rng(3);
  ThreadPool pool(4);
  for (int64_t n : {7, 8, 16, 63, 64}) {
    CheckCase(RandomSparse(100, 1024, 0.1, true, rng), 100, 1024, n, true, pool, rng);
    CheckCase(Random24(64, 256, false, rng), 64, 256, n, n % 2 == 0, pool, rng);
  }
}

TEST(SparseMatmulTest, CsrWideThinMatrixUsesCol32) {
  std::mt19937 rng(4);
  ThreadPool pool(4);
  for (int64_t cols : {65536, 65537, 70001}) {
    for (double density : {0.01, 0.5, 1.0}) {
      SCOPED_TRACE(absl::StrCat("density ", density));
      const std::vector<float> w = RandomSparse(3, cols, density, false, rng);
      const CsrMatrix csr = ToCsr(w.data(), 3, cols);
      if (cols > 65536) {
        EXPECT_TRUE(csr.col16.empty());
        EXPECT_EQ(static_cast<int64_t>(csr.col32.size()), csr.nnz());
      } else {
        EXPECT_TRUE(csr.col32.empty());
        EXPECT_EQ(static_cast<int64_t>(csr.col16.size()), csr.nnz());
      }
      for (int64_t n : {1, 5}) CheckCase(w, 3, cols, n, n == 1, pool, rng);
    }
  }
  // The last column of a wide row is reachable.
  std::vector<float> w(2 * 70001, 0.0f);
  w[70000] = 2.0f;
  w[70001 + 69999] = -3.0f;
  CheckCase(w, 2, 70001, 1, false, pool, rng);
}

TEST(SparseMatmulTest, NonzerosConcentratedInFewRowsStillSplitCorrectly) {
  // Row costs differ by 1000×, so the nonzero-balanced split puts block edges far from
  // rows / threads; every row must still be computed exactly once.
  std::mt19937 rng(5);
  ThreadPool pool(4);
  std::vector<float> w = RandomSparse(1024, 1024, 0.001, false, rng);
  const std::vector<float> dense = RandomSparse(3, 1024, 1.0, false, rng);
  std::copy(dense.begin(), dense.end(), w.begin() + 500 * 1024);
  for (int64_t n : {1, 4}) CheckCase(w, 1024, 1024, n, true, pool, rng);
}

TEST(SparseMatmulTest, EmptyShapesAreHandled) {
  ThreadPool pool(2);
  const float x[4] = {1, 2, 3, 4};
  const float bias[3] = {0.5f, -1.0f, 2.0f};
  // cols = 0: y is the bias (or zero); the 2:4 form of a [3, 0] matrix is empty too.
  std::vector<float> y(3, kPoison);
  CsrMatmul(ToCsr(nullptr, 3, 0), x, 1, 0, bias, y.data(), 3, pool);
  EXPECT_EQ(y, (std::vector<float>{0.5f, -1.0f, 2.0f}));
  y.assign(3, kPoison);
  Sparse24Matmul(To24(nullptr, 3, 0), x, 1, 0, nullptr, y.data(), 3, pool);
  EXPECT_EQ(y, (std::vector<float>{0.0f, 0.0f, 0.0f}));
  // n = 0 and rows = 0 write nothing.
  y.assign(3, kPoison);
  const std::vector<float> w(12, 1.0f);
  CsrMatmul(ToCsr(w.data(), 3, 4), x, 0, 4, bias, y.data(), 3, pool);
  CsrMatmul(ToCsr(nullptr, 0, 4), x, 1, 4, nullptr, y.data(), 3, pool);
  Sparse24Matmul(To24(nullptr, 0, 4), x, 1, 4, nullptr, y.data(), 3, pool);
  EXPECT_EQ(y, (std::vector<float>(3, kPoison)));
}

TEST(ToCsrTest, LayoutAndBytes) {
  const float w[] = {0, 1.5f, 0, -2,  //
                     0, 0,    0, 0,   //
                     3, 0,    0, 4};
  const CsrMatrix csr = ToCsr(w, 3, 4);
  EXPECT_EQ(csr.rows, 3);
  EXPECT_EQ(csr.cols, 4);
  EXPECT_EQ(csr.row_start, (std::vector<int64_t>{0, 2, 2, 4}));
  EXPECT_EQ(csr.col16, (std::vector<uint16_t>{1, 3, 0, 3}));
  EXPECT_TRUE(csr.col32.empty());
  EXPECT_EQ(csr.values, (std::vector<float>{1.5f, -2, 3, 4}));
  EXPECT_EQ(csr.nnz(), 4);
  EXPECT_EQ(csr.bytes(), 4 * 8 + 4 * 2 + 4 * 4u);
}

TEST(Is24SparseTest, ExactDetection) {
  std::vector<float> w(4 * 16, 0.0f);
  EXPECT_TRUE(Is24Sparse(w.data(), 4, 16)) << "all zero";
  EXPECT_TRUE(Is24Sparse(w.data(), 0, 16)) << "no rows";
  EXPECT_TRUE(Is24Sparse(w.data(), 4, 0)) << "no columns";
  // Two nonzeros in every group is still 2:4.
  for (int64_t g = 0; g < 16; ++g) {
    w[4 * g + g % 4] = 1.0f;
    w[4 * g + (g + 1) % 4] = -1.0f;
  }
  EXPECT_TRUE(Is24Sparse(w.data(), 4, 16));
  // A single third nonzero anywhere breaks it.
  for (int64_t g = 0; g < 16; ++g) {
    const int64_t slot = 4 * g + (g + 2) % 4;
    w[slot] = 0.25f;
    EXPECT_FALSE(Is24Sparse(w.data(), 4, 16)) << "group " << g;
    w[slot] = 0.0f;
  }
  EXPECT_TRUE(Is24Sparse(w.data(), 4, 16));
  // Columns not a multiple of 4.
  const std::vector<float> zeros(3 * 10, 0.0f);
  for (int64_t cols : {1, 2, 3, 5, 6, 10}) {
    EXPECT_FALSE(Is24Sparse(zeros.data(), 3, cols)) << "cols " << cols;
  }
  // Groups follow each row's columns: one nonzero at the end of row 0 and two at the start of
  // row 1 make 1 + 2, not 3.
  std::vector<float> two_rows(2 * 4, 0.0f);
  two_rows[3] = two_rows[4] = two_rows[5] = 1.0f;
  EXPECT_TRUE(Is24Sparse(two_rows.data(), 2, 4));
}

TEST(To24Test, RoundTripIsExact) {
  std::mt19937 rng(6);
  for (int64_t rows : {1, 3, 64}) {
    for (int64_t cols : {4, 8, 100, 1024}) {
      for (bool full : {false, true}) {
        const std::vector<float> w = Random24(rows, cols, full, rng);
        const Sparse24Matrix s = To24(w.data(), rows, cols);
        ASSERT_EQ(s.values.size(), static_cast<size_t>(rows * cols / 2));
        ASSERT_EQ(s.meta.size(), static_cast<size_t>(rows * cols / 4));
        EXPECT_EQ(s.bytes(), static_cast<size_t>(rows * cols / 2 * 4 + rows * cols / 4));
        EXPECT_EQ(Expand24(s), w) << "rows " << rows << " cols " << cols;
      }
    }
  }
}

TEST(To24Test, PadsShortGroupsDeterministically) {
  // One group per case: values in column order, zeros at the lowest unused indices.
  struct Case {
    float w[4];
    float values[2];
    unsigned first, second;
  };
  const Case cases[] = {
      {{0, 0, 0, 0}, {0, 0}, 0, 1}, {{7, 0, 0, 0}, {7, 0}, 0, 1}, {{0, 7, 0, 0}, {0, 7}, 0, 1},
      {{0, 0, 7, 0}, {0, 7}, 0, 2}, {{0, 0, 0, 7}, {0, 7}, 0, 3}, {{1, 2, 0, 0}, {1, 2}, 0, 1},
      {{0, 0, 1, 2}, {1, 2}, 2, 3}, {{1, 0, 0, 2}, {1, 2}, 0, 3}, {{0, -1, 2, 0}, {-1, 2}, 1, 2},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.w[0], " ", c.w[1], " ", c.w[2], " ", c.w[3]));
    const Sparse24Matrix s = To24(c.w, 1, 4);
    EXPECT_EQ(s.values, (std::vector<float>{c.values[0], c.values[1]}));
    EXPECT_EQ(s.meta, (std::vector<uint8_t>{static_cast<uint8_t>(c.first | (c.second << 2))}));
  }
}

}  // namespace
}  // namespace mnemo::kernels
