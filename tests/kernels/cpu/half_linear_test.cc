// kernels/cpu/half_linear: every 16-bit value widens exactly on every instruction set this CPU
// has; the decode kernel and the attention kernels of each instruction set and HalfLinear (decode
// rows and widened tiles + sgemm, inline and on a multi-threaded pool) against a double-precision
// product of the widened weights, over lengths around the vector widths and unrolls, rows around
// the row group, padded x / y rows (x padding poisoned with NaN so a read shows up, y padding
// checked untouched). The same kernels on float32 weights and rows (Linear's decode rows). The
// bf16-products kernel (HalfProducts::kBf16) against double on the same bf16 values, and
// HalfLinear with it within its rounding bound of the float32 activations' product.
#include "kernels/cpu/half_linear.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {
namespace {

constexpr float kPoison = -12345.5f;

float Reference(uint16_t h, WeightType type) {
  return type == WeightType::kBF16 ? BFloat16ToFloat(h) : HalfToFloat(h);
}

uint16_t Narrow(float f, WeightType type) {
  return type == WeightType::kBF16 ? FloatToBFloat16(f) : FloatToHalf(f);
}

std::string Name(WeightType type) {
  return type == WeightType::kBF16 ? "bf16" : type == WeightType::kF16 ? "f16" : "f32";
}

// Every bit pattern through the decode kernel as a 1×1 product with x = 1: the widened weight
// itself (infinities and NaN included), on each instruction set; and through WidenRow.
TEST(HalfLinearTest, EveryValueWidensExactly) {
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    std::vector<uint16_t> all(65536);
    for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    std::vector<float> widened(all.size());
    WidenRow(all.data(), type, 1.0f, widened.data(), static_cast<int64_t>(all.size()));
    for (HalfIsa isa : SupportedHalfIsas()) {
      int wrong = 0;
      for (uint32_t i = 0; i < 65536; ++i) {
        const float one = 1.0f;
        float y = 0.0f;
        HalfGemvRows(isa, &one, 1, &all[i], type, nullptr, &y, 1, 1, 1, 1);
        const float want = Reference(all[i], type);
        const bool same = std::isnan(want) ? std::isnan(y) : y == want;
        const bool same_row = std::isnan(want) ? std::isnan(widened[i]) : widened[i] == want;
        if (!same || !same_row) {
          if (++wrong < 5) {
            ADD_FAILURE() << Name(type) << " " << HalfIsaName(isa) << " 0x" << std::hex << i
                          << std::dec << ": gemv " << y << ", row " << widened[i] << ", want "
                          << want;
          }
        }
      }
      EXPECT_EQ(wrong, 0) << Name(type) << " " << HalfIsaName(isa);
    }
  }
}

TEST(HalfLinearTest, WidenRowScales) {
  const std::vector<uint16_t> row = {Narrow(1.5f, WeightType::kF16),
                                     Narrow(-2.0f, WeightType::kF16),
                                     Narrow(0.25f, WeightType::kF16)};
  std::vector<float> out(3);
  WidenRow(row.data(), WeightType::kF16, 4.0f, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{6.0f, -8.0f, 1.0f}));
}

// A product's operands: 16-bit weights in `w`, or float32 ones in `wf` (type kF32).
struct Problem {
  int64_t rows, in, out, ldx, ldy;
  std::vector<float> x, bias;
  std::vector<uint16_t> w;
  std::vector<float> wf;

  double Weight(WeightType type, int64_t at) const {
    return type == WeightType::kF32 ? wf[at] : Reference(w[at], type);
  }
};

Problem MakeProblem(int64_t rows, int64_t in, int64_t out, WeightType type, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Problem p{rows, in, out, in + 3, out + 5, {}, {}, {}, {}};
  p.x.assign(static_cast<size_t>(rows * p.ldx), std::numeric_limits<float>::quiet_NaN());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < in; ++i) p.x[r * p.ldx + i] = dist(rng);
  }
  if (type == WeightType::kF32) {
    p.wf.resize(static_cast<size_t>(out * in));
    for (float& v : p.wf) v = dist(rng);
  } else {
    p.w.resize(static_cast<size_t>(out * in));
    for (uint16_t& v : p.w) v = Narrow(dist(rng), type);
  }
  p.bias.resize(static_cast<size_t>(out));
  for (float& b : p.bias) b = dist(rng);
  return p;
}

// y against Σ_i x·widen(w) + bias in double, within the float32 summation bound in any order
// ((in + 1)·2⁻²⁴ of Σ|x·w| + |bias|: a wrong or shifted weight is off by far more), and y's
// padding untouched.
void ExpectMatches(const Problem& p, WeightType type, bool with_bias, const std::vector<float>& y,
                   const std::string& what) {
  int wrong = 0;
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t o = 0; o < p.out; ++o) {
      double sum = with_bias ? p.bias[o] : 0.0, magnitude = with_bias ? std::fabs(p.bias[o]) : 0.0;
      for (int64_t i = 0; i < p.in; ++i) {
        const double term = static_cast<double>(p.x[r * p.ldx + i]) * p.Weight(type, o * p.in + i);
        sum += term;
        magnitude += std::fabs(term);
      }
      const float got = y[r * p.ldy + o];
      const double bound = static_cast<double>(p.in + 1) * 0x1p-24 * magnitude;
      if (!(std::fabs(got - sum) <= bound) && ++wrong < 4) {
        ADD_FAILURE() << what << " y[" << r << "," << o << "] = " << got << ", want " << sum;
      }
    }
    for (int64_t o = p.out; o < p.ldy; ++o) {
      if (y[r * p.ldy + o] != kPoison && ++wrong < 4) {
        ADD_FAILURE() << what << " wrote padding y[" << r << "," << o << "]";
      }
    }
  }
  EXPECT_EQ(wrong, 0) << what;
}

TEST(HalfLinearTest, DecodeKernelOfEveryIsaMatchesDouble) {
  std::mt19937 rng(5);
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    for (HalfIsa isa : SupportedHalfIsas()) {
      for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 11, 32}) {
        for (int64_t in : {1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100, 513}) {
          for (bool with_bias : {false, true}) {
            // 61 outputs: two full panels of weight rows and a short one, whole tiles and single
            // rows in each.
            const Problem p = MakeProblem(rows, in, 61, type, rng);
            std::vector<float> y(static_cast<size_t>(rows * p.ldy), kPoison);
            HalfGemvRows(isa, p.x.data(), p.ldx, p.w.data(), type,
                         with_bias ? p.bias.data() : nullptr, y.data(), p.ldy, rows, in, p.out);
            ExpectMatches(p, type, with_bias, y,
                          absl::StrCat(Name(type), " ", HalfIsaName(isa), " rows ", rows, " in ",
                                       in, with_bias ? " bias" : ""));
          }
        }
      }
    }
  }
}

// A batch of rows computes what each row does alone, bit for bit, on every instruction set: the
// kernels' grouping of rows and weight rows never changes the order of a sum (batched decode
// returns what single-session decode does).
TEST(HalfLinearTest, BatchRowsMatchSingleRowsExactly) {
  std::mt19937 rng(9);
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    for (HalfIsa isa : SupportedHalfIsas()) {
      for (int64_t in : {5, 64, 300}) {
        const Problem p = MakeProblem(13, in, 41, type, rng);
        std::vector<float> batch(static_cast<size_t>(p.rows * p.ldy), kPoison);
        HalfGemvRows(isa, p.x.data(), p.ldx, p.w.data(), type, p.bias.data(), batch.data(), p.ldy,
                     p.rows, in, p.out);
        for (int64_t r = 0; r < p.rows; ++r) {
          std::vector<float> single(static_cast<size_t>(p.out), kPoison);
          HalfGemvRows(isa, p.x.data() + r * p.ldx, p.ldx, p.w.data(), type, p.bias.data(),
                       single.data(), p.out, 1, in, p.out);
          for (int64_t o = 0; o < p.out; ++o) {
            ASSERT_EQ(batch[r * p.ldy + o], single[o])
                << Name(type) << " " << HalfIsaName(isa) << " in " << in << " row " << r << " out "
                << o;
          }
        }
      }
    }
  }
}

// The attention kernels over 16-bit rows `ldw` apart (16-bit session memory), on each
// instruction set: a query against n key rows (HalfDotRows) and probabilities times n value rows
// added to y (HalfRowSum), against double, over column counts around the vector widths and the
// 64-column blocks; the elements between rows are poisoned (a read would show), y's padding and
// the keys' unused outputs are checked untouched.
// A query against n rows (`dot(x, y)`: y[j] = Σ_c x[c]·w[j, c]) and probabilities times n rows
// added to y (`row_sum(p, y)`), row j's `cols` weights being weight(j, c), against double within
// the float32 summation bound; the kernels' outputs past n (dot) and past cols (row_sum) must stay
// untouched.
template <typename Weight, typename Dot, typename RowSum>
void ExpectAttentionKernelsMatchDouble(const std::string& what, int64_t cols, int64_t n,
                                       std::mt19937& rng, const Weight& weight, const Dot& dot,
                                       const RowSum& row_sum) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(cols)), p(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  for (float& v : p) v = dist(rng);

  std::vector<float> dots(static_cast<size_t>(n + 2), kPoison);
  dot(x.data(), dots.data());
  for (int64_t j = 0; j < n; ++j) {
    double want = 0, magnitude = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double term = static_cast<double>(x[c]) * weight(j, c);
      want += term;
      magnitude += std::fabs(term);
    }
    EXPECT_LE(std::fabs(dots[j] - want), (cols + 1) * 0x1p-24 * magnitude) << what << " key " << j;
  }
  EXPECT_EQ(dots[n], kPoison) << what;

  std::vector<float> y(static_cast<size_t>(cols + 3), kPoison);
  std::vector<double> start(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) y[c] = start[c] = dist(rng);
  row_sum(p.data(), y.data());
  for (int64_t c = 0; c < cols; ++c) {
    double want = start[c], magnitude = std::fabs(start[c]);
    for (int64_t j = 0; j < n; ++j) {
      const double term = static_cast<double>(p[j]) * weight(j, c);
      want += term;
      magnitude += std::fabs(term);
    }
    EXPECT_LE(std::fabs(y[c] - want), (n + 1) * 0x1p-24 * magnitude) << what << " column " << c;
  }
  for (int64_t c = cols; c < cols + 3; ++c) EXPECT_EQ(y[c], kPoison) << what;
}

TEST(HalfLinearTest, AttentionKernelsOfEveryIsaMatchDouble) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    const uint16_t poison = Narrow(std::numeric_limits<float>::quiet_NaN(), type);
    for (HalfIsa isa : SupportedHalfIsas()) {
      for (int64_t cols : {1, 7, 8, 9, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 128, 130}) {
        for (int64_t n : {1, 3, 40}) {
          const int64_t ldw = cols + 5;
          std::vector<uint16_t> w(static_cast<size_t>(n * ldw), poison);
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t c = 0; c < cols; ++c) w[j * ldw + c] = Narrow(dist(rng), type);
          }
          ExpectAttentionKernelsMatchDouble(
              absl::StrCat(Name(type), " ", HalfIsaName(isa), " cols ", cols, " rows ", n), cols, n,
              rng, [&](int64_t j, int64_t c) { return Reference(w[j * ldw + c], type); },
              [&](const float* x, float* y) {
                HalfDotRows(isa, x, w.data(), ldw, type, n, cols, y);
              },
              [&](const float* p, float* y) {
                HalfRowSum(isa, p, w.data(), ldw, type, n, cols, y);
              });
        }
      }
    }
  }
}

// The every-head kernels (HeadDots, HeadRowSums) against the head-by-head ones, bit for bit, on
// float32, bf16 and f16 rows `ldw` apart whose padding is poisoned with NaN: row counts around
// their 16-row blocks, head counts around their groups of heads, outputs beyond n / lds and y's
// padding checked untouched.
TEST(HalfLinearTest, HeadKernelsMatchHeadByHeadBitForBit) {
  EXPECT_FALSE(HeadKernelsAvailable(48));
  EXPECT_FALSE(HeadKernelsAvailable(8));
  if (!HeadKernelsAvailable(64)) GTEST_SKIP() << "no AVX-512: attention runs head by head";
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const HalfIsa isa = SupportedHalfIsas().front();
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kF16}) {
    for (int head_dim : {16, 32, 64, 128}) {
      for (int heads : {1, 3, 5, 8, 17}) {
        for (int64_t n : {1, 15, 16, 17, 40}) {
          const std::string what =
              absl::StrCat(Name(type), " head_dim ", head_dim, " heads ", heads, " rows ", n);
          const int64_t width = int64_t{heads} * head_dim, ldw = width + 7, lds = n + 3;
          std::vector<float> wf(static_cast<size_t>(n * ldw), std::nanf(""));
          std::vector<uint16_t> w16(wf.size(), Narrow(std::nanf(""), WeightType::kBF16));
          if (type == WeightType::kF16)
            std::fill(w16.begin(), w16.end(), Narrow(std::nanf(""), type));
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t c = 0; c < width; ++c) {
              wf[j * ldw + c] = dist(rng);
              w16[j * ldw + c] = Narrow(wf[j * ldw + c], type);
            }
          }
          std::vector<float> x(static_cast<size_t>(width)), p(static_cast<size_t>(heads * lds));
          for (float& v : x) v = dist(rng);
          for (float& v : p) v = dist(rng);

          std::vector<float> want(static_cast<size_t>(heads * lds), kPoison), got = want;
          for (int h = 0; h < heads; ++h) {
            const int64_t at = int64_t{h} * head_dim;
            if (type == WeightType::kF32) {
              FloatDotRows(x.data() + at, wf.data() + at, ldw, n, head_dim, want.data() + h * lds);
            } else {
              HalfDotRows(isa, x.data() + at, w16.data() + at, ldw, type, n, head_dim,
                          want.data() + h * lds);
            }
          }
          if (type == WeightType::kF32) {
            HeadDots(x.data(), wf.data(), ldw, n, heads, head_dim, got.data(), lds);
          } else {
            HeadDots(x.data(), w16.data(), type, ldw, n, heads, head_dim, got.data(), lds);
          }
          for (size_t k = 0; k < want.size(); ++k) {
            ASSERT_EQ(std::bit_cast<uint32_t>(got[k]), std::bit_cast<uint32_t>(want[k]))
                << what << " dot " << k << ": " << got[k] << " want " << want[k];
          }

          std::vector<float> sum_want(static_cast<size_t>(width + 5), kPoison);
          for (int64_t c = 0; c < width; ++c) sum_want[c] = dist(rng);
          std::vector<float> sum_got = sum_want;
          for (int h = 0; h < heads; ++h) {
            const int64_t at = int64_t{h} * head_dim;
            if (type == WeightType::kF32) {
              FloatRowSum(p.data() + h * lds, wf.data() + at, ldw, n, head_dim,
                          sum_want.data() + at);
            } else {
              HalfRowSum(isa, p.data() + h * lds, w16.data() + at, ldw, type, n, head_dim,
                         sum_want.data() + at);
            }
          }
          if (type == WeightType::kF32) {
            HeadRowSums(p.data(), lds, wf.data(), ldw, n, heads, head_dim, sum_got.data());
          } else {
            HeadRowSums(p.data(), lds, w16.data(), type, ldw, n, heads, head_dim, sum_got.data());
          }
          for (size_t k = 0; k < sum_want.size(); ++k) {
            ASSERT_EQ(std::bit_cast<uint32_t>(sum_got[k]), std::bit_cast<uint32_t>(sum_want[k]))
                << what << " sum " << k << ": " << sum_got[k] << " want " << sum_want[k];
          }
        }
      }
    }
  }
}

// HalfLinear takes the decode kernel up to kDecodeKernelMaxRows rows and widened tiles beyond, on
// one thread or split by column blocks (out spans several 128-column tiles and ragged blocks).
TEST(HalfLinearTest, LinearMatchesDoubleInlineAndThreaded) {
  std::mt19937 rng(9);
  ThreadPool inline_pool(1), threaded(3);
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    for (ThreadPool* pool : {&inline_pool, &threaded}) {
      for (int64_t rows :
           {int64_t{1}, int64_t{13}, kDecodeKernelMaxRows, kDecodeKernelMaxRows + 1, int64_t{37}}) {
        for (int64_t out : {1, 33, 300}) {
          for (bool with_bias : {false, true}) {
            const Problem p = MakeProblem(rows, 72, out, type, rng);
            std::vector<float> y(static_cast<size_t>(rows * p.ldy), kPoison);
            HalfLinear(p.x.data(), p.ldx, p.w.data(), type, with_bias ? p.bias.data() : nullptr,
                       y.data(), p.ldy, rows, p.in, out, *pool);
            ExpectMatches(p, type, with_bias, y,
                          absl::StrCat(Name(type), " threads ", pool->num_threads(), " rows ", rows,
                                       " out ", out, with_bias ? " bias" : ""));
          }
        }
      }
    }
  }
}

// ---- HalfProducts::kBf16: bf16 activations × bf16 weights (AVX-512 BF16) ----

// RoundToBf16 rounds to nearest even like base/dtype's FloatToBFloat16 (ties both ways,
// infinities, NaN kept NaN, lengths around the 16-lane vector), writing nothing past n.
TEST(HalfLinearTest, Bf16ProductsRoundActivationsToNearestEven) {
  if (!Bf16ProductsAvailable()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (int64_t n : {1, 15, 16, 17, 40}) {
    std::vector<float> src(static_cast<size_t>(n));
    for (float& v : src) v = dist(rng);
    // Exact ties (round to even both ways), the largest finite float, infinities and NaN.
    const float specials[] = {
        std::bit_cast<float>(0x3f808000u),       std::bit_cast<float>(0x3f818000u),
        std::numeric_limits<float>::max(),       std::numeric_limits<float>::infinity(),
        -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
    for (size_t k = 0; k < std::size(specials) && k < src.size(); ++k) src[k] = specials[k];
    std::vector<uint16_t> dst(static_cast<size_t>(n + 3), 0xabcd);
    RoundToBf16(src.data(), dst.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(src[i])) {
        EXPECT_TRUE(std::isnan(BFloat16ToFloat(dst[i]))) << "n " << n << " at " << i;
      } else {
        EXPECT_EQ(dst[i], FloatToBFloat16(src[i])) << "n " << n << " at " << i << " " << src[i];
      }
    }
    for (int64_t i = n; i < n + 3; ++i) EXPECT_EQ(dst[i], 0xabcd) << "wrote past n " << n;
  }
}

// A product's operands for Bf16GemvRows: a Problem whose activations are bf16 values, in float
// (p.x, for the double reference) and bf16 (xb, rows p.ldx apart, padding poisoned with NaN).
std::vector<uint16_t> RoundedActivations(Problem& p) {
  std::vector<uint16_t> xb(p.x.size(), 0x7fc0);
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t i = 0; i < p.in; ++i) {
      const size_t at = static_cast<size_t>(r * p.ldx + i);
      xb[at] = FloatToBFloat16(p.x[at]);
      p.x[at] = BFloat16ToFloat(xb[at]);
    }
  }
  return xb;
}

// Bf16GemvRows against the double product of the same bf16 values (each product exact, float32
// sums: ExpectMatches's bound), over lengths around the 32-column step and rows around the
// row group; a batch computes what each row does alone, bit for bit.
TEST(HalfLinearTest, Bf16ProductsMatchDoubleAndSingleRows) {
  if (!Bf16ProductsAvailable()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  std::mt19937 rng(23);
  for (int64_t rows : {1, 2, 3, 5, 8, 11, 32}) {
    for (int64_t in : {1, 2, 31, 32, 33, 63, 64, 65, 100, 513}) {
      for (bool with_bias : {false, true}) {
        Problem p = MakeProblem(rows, in, 61, WeightType::kBF16, rng);
        const std::vector<uint16_t> xb = RoundedActivations(p);
        std::vector<float> y(static_cast<size_t>(rows * p.ldy), kPoison);
        Bf16GemvRows(xb.data(), p.ldx, p.w.data(), with_bias ? p.bias.data() : nullptr, y.data(),
                     p.ldy, rows, in, p.out);
        const std::string what =
            absl::StrCat("bf16 products rows ", rows, " in ", in, with_bias ? " bias" : "");
        ExpectMatches(p, WeightType::kBF16, with_bias, y, what);
        for (int64_t r = 0; r < rows; ++r) {
          std::vector<float> single(static_cast<size_t>(p.out), kPoison);
          Bf16GemvRows(xb.data() + r * p.ldx, p.ldx, p.w.data(),
                       with_bias ? p.bias.data() : nullptr, single.data(), p.out, 1, in, p.out);
          for (int64_t o = 0; o < p.out; ++o) {
            ASSERT_EQ(std::bit_cast<uint32_t>(y[r * p.ldy + o]), std::bit_cast<uint32_t>(single[o]))
                << what << " row " << r << " out " << o;
          }
        }
      }
    }
  }
}

// HalfLinear with HalfProducts::kBf16: decode rows against bf16 weights within the rounding
// bound of the float32 activations' product (2⁻⁹ of Σ|x·w| for the rounding, plus the float32
// sums'), inline and threaded alike bit for bit; f16 weights and prefill rows (more than
// kDecodeKernelMaxRows) compute what HalfProducts::kFloat32 does on the same pool, bit for bit.
TEST(HalfLinearTest, LinearWithBf16ProductsWithinRoundingBound) {
  if (!Bf16ProductsAvailable()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  std::mt19937 rng(29);
  ThreadPool inline_pool(1), threaded(3);
  for (WeightType type : {WeightType::kBF16, WeightType::kF16}) {
    for (int64_t rows : {int64_t{1}, int64_t{13}, kDecodeKernelMaxRows, int64_t{37}}) {
      const Problem p = MakeProblem(rows, 200, 300, type, rng);
      std::vector<float> y(static_cast<size_t>(rows * p.ldy), kPoison);
      std::vector<float> threaded_y = y, exact_y = y;
      HalfLinear(p.x.data(), p.ldx, p.w.data(), type, p.bias.data(), y.data(), p.ldy, rows, p.in,
                 p.out, inline_pool, HalfProducts::kBf16);
      HalfLinear(p.x.data(), p.ldx, p.w.data(), type, p.bias.data(), threaded_y.data(), p.ldy, rows,
                 p.in, p.out, threaded, HalfProducts::kBf16);
      HalfLinear(p.x.data(), p.ldx, p.w.data(), type, p.bias.data(), exact_y.data(), p.ldy, rows,
                 p.in, p.out, inline_pool, HalfProducts::kFloat32);
      const std::string what = absl::StrCat(Name(type), " rows ", rows);
      const bool rounded = type == WeightType::kBF16 && rows <= kDecodeKernelMaxRows;
      int wrong = 0, differ = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < p.ldy; ++o) {
          const size_t at = static_cast<size_t>(r * p.ldy + o);
          if (!rounded || o >= p.out) {
            ASSERT_EQ(std::bit_cast<uint32_t>(y[at]), std::bit_cast<uint32_t>(exact_y[at]))
                << what << " y[" << r << "," << o << "]";
            continue;
          }
          double sum = p.bias[o], magnitude = std::fabs(p.bias[o]);
          for (int64_t i = 0; i < p.in; ++i) {
            const double term =
                static_cast<double>(p.x[r * p.ldx + i]) * p.Weight(type, o * p.in + i);
            sum += term;
            magnitude += std::fabs(term);
          }
          const double bound = (0x1p-9 + static_cast<double>(p.in + 1) * 0x1p-24) * magnitude;
          if (!(std::fabs(y[at] - sum) <= bound) && ++wrong < 4) {
            ADD_FAILURE() << what << " y[" << r << "," << o << "] = " << y[at] << ", want " << sum;
          }
          differ += y[at] != exact_y[at];
          // The kernel's sums do not depend on the column blocks the pool splits the product in.
          ASSERT_EQ(std::bit_cast<uint32_t>(y[at]), std::bit_cast<uint32_t>(threaded_y[at]))
              << what << " threaded, y[" << r << "," << o << "]";
        }
      }
      EXPECT_EQ(wrong, 0) << what;
      if (rounded) {
        EXPECT_GT(differ, 0) << what << ": the activations were not rounded";
      }
    }
  }
}

// The decode kernel on float32 weights, which Linear (blas.h) takes for up to
// kDecodeKernelMaxRows rows: against double like the 16-bit kernels, a batch bit for bit what
// its rows compute alone (FloatGemvRows and Linear, inline and threaded), and the attention forms
// over rows `ldw` apart.
TEST(HalfLinearTest, FloatDecodeKernelMatchesDoubleAndSingleRows) {
  if (!FloatDecodeKernelAvailable()) GTEST_SKIP() << "no AVX-512: Linear runs OpenBLAS";
  std::mt19937 rng(17);
  for (int64_t rows : {1, 2, 3, 5, 8, 11, 32}) {
    for (int64_t in : {1, 7, 16, 17, 33, 64, 513}) {
      for (bool with_bias : {false, true}) {
        const Problem p = MakeProblem(rows, in, 61, WeightType::kF32, rng);
        std::vector<float> y(static_cast<size_t>(rows * p.ldy), kPoison);
        FloatGemvRows(p.x.data(), p.ldx, p.wf.data(), with_bias ? p.bias.data() : nullptr, y.data(),
                      p.ldy, rows, in, p.out);
        ExpectMatches(p, WeightType::kF32, with_bias, y,
                      absl::StrCat("f32 rows ", rows, " in ", in, with_bias ? " bias" : ""));
      }
    }
  }
  ThreadPool inline_pool(1), threaded(3);
  for (ThreadPool* pool : {&inline_pool, &threaded}) {
    for (int64_t in : {5, 64, 300}) {
      const Problem p = MakeProblem(kDecodeKernelMaxRows, in, 300, WeightType::kF32, rng);
      std::vector<float> batch(static_cast<size_t>(p.rows * p.ldy), kPoison);
      Linear(p.x.data(), p.ldx, p.wf.data(), p.bias.data(), batch.data(), p.ldy, p.rows, in, p.out,
             *pool);
      ExpectMatches(p, WeightType::kF32, true, batch,
                    absl::StrCat("Linear threads ", pool->num_threads(), " in ", in));
      for (int64_t r = 0; r < p.rows; ++r) {
        std::vector<float> single(static_cast<size_t>(p.out), kPoison);
        Linear(p.x.data() + r * p.ldx, p.ldx, p.wf.data(), p.bias.data(), single.data(), p.out, 1,
               in, p.out, *pool);
        for (int64_t o = 0; o < p.out; ++o) {
          ASSERT_EQ(batch[r * p.ldy + o], single[o])
              << "threads " << pool->num_threads() << " in " << in << " row " << r << " out " << o;
        }
      }
    }
  }
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t cols : {1, 15, 16, 17, 64, 65, 130}) {
    for (int64_t n : {1, 3, 40}) {
      const int64_t ldw = cols + 5;
      std::vector<float> w(static_cast<size_t>(n * ldw), std::numeric_limits<float>::quiet_NaN());
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < cols; ++c) w[j * ldw + c] = dist(rng);
      }
      ExpectAttentionKernelsMatchDouble(
          absl::StrCat("f32 attention cols ", cols, " rows ", n), cols, n, rng,
          [&](int64_t j, int64_t c) { return w[j * ldw + c]; },
          [&](const float* x, float* y) { FloatDotRows(x, w.data(), ldw, n, cols, y); },
          [&](const float* p, float* y) { FloatRowSum(p, w.data(), ldw, n, cols, y); });
    }
  }
}

TEST(HalfLinearTest, EmptyProductsWriteNothing) {
  ThreadPool pool(2);
  std::vector<float> y(4, kPoison);
  const std::vector<uint16_t> w(4, 0x3c00);
  const std::vector<float> x(4, 1.0f);
  HalfLinear(x.data(), 4, w.data(), WeightType::kF16, nullptr, y.data(), 4, 0, 4, 1, pool);
  HalfLinear(x.data(), 4, w.data(), WeightType::kF16, nullptr, y.data(), 4, 1, 4, 0, pool);
  EXPECT_EQ(y, std::vector<float>(4, kPoison));
}

TEST(HalfLinearTest, ScalarIsAlwaysSupportedAndLast) {
  ASSERT_FALSE(SupportedHalfIsas().empty());
  EXPECT_EQ(SupportedHalfIsas().back(), HalfIsa::kScalar);
}

}  // namespace
}  // namespace mnemo::kernels
