// kernels/cpu/elementwise: every vector loop against a plain double-precision loop over sizes
// around the SIMD widths (1, 7, 63, 64, 65, 1000), on unaligned pointers too.
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

constexpr int64_t kSizes[] = {1, 7, 63, 64, 65, 1000};

// A buffer of n random floats starting `offset` floats into its storage (offset 1 breaks every
// vector alignment).
class Buffer {
 public:
  Buffer(int64_t n, int offset, std::mt19937& rng, float lo = -2.0f, float hi = 2.0f)
      : storage_(static_cast<size_t>(n + offset)), offset_(offset), n_(n) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (float& v : storage_) v = dist(rng);
  }
  float* data() { return storage_.data() + offset_; }
  std::vector<float> values() const {
    return std::vector<float>(storage_.begin() + offset_, storage_.end());
  }
  int64_t size() const { return n_; }

 private:
  std::vector<float> storage_;
  int offset_;
  int64_t n_;
};

class VectorOpsTest : public ::testing::TestWithParam<std::pair<int64_t, int>> {
 protected:
  int64_t n() const { return GetParam().first; }
  int offset() const { return GetParam().second; }
  std::mt19937 rng_{static_cast<uint32_t>(GetParam().first * 31 + GetParam().second)};
};

TEST_P(VectorOpsTest, AddVectorsAndAddBiasMatchDouble) {
  Buffer a(n(), offset(), rng_), b(n(), 0, rng_), y(n(), 0, rng_);
  AddVectors(a.data(), b.data(), y.data(), n());
  for (int64_t i = 0; i < n(); ++i) {
    ASSERT_EQ(y.data()[i], a.data()[i] + b.data()[i]) << i;  // one rounding: exact
  }
  const std::vector<float> a0 = a.values();
  AddVectors(a.data(), b.data(), a.data(), n());  // y aliasing a
  for (int64_t i = 0; i < n(); ++i) ASSERT_EQ(a.data()[i], a0[i] + b.data()[i]) << i;
  const std::vector<float> y0 = y.values();
  AddBias(y.data(), b.data(), n());
  for (int64_t i = 0; i < n(); ++i) ASSERT_EQ(y.data()[i], y0[i] + b.data()[i]) << i;
}

TEST_P(VectorOpsTest, ExpInPlaceMatchesDouble) {
  Buffer x(n(), offset(), rng_, -87.0f, 88.0f);
  const std::vector<float> x0 = x.values();
  ExpInPlace(x.data(), n());
  for (int64_t i = 0; i < n(); ++i) {
    const double want = std::exp(static_cast<double>(x0[i]));
    ASSERT_NEAR(x.data()[i], want, 1e-6 * want) << "exp(" << x0[i] << ")";
  }
}

TEST_P(VectorOpsTest, SoftmaxRowMatchesDouble) {
  Buffer x(n(), offset(), rng_, -10.0f, 10.0f);
  const std::vector<float> x0 = x.values();
  SoftmaxRow(x.data(), n());
  const double max = *std::max_element(x0.begin(), x0.end());
  double z = 0.0;
  for (float v : x0) z += std::exp(v - max);
  double total = 0.0;
  for (int64_t i = 0; i < n(); ++i) {
    const double want = std::exp(x0[i] - max) / z;
    ASSERT_NEAR(x.data()[i], want, 1e-5 * want) << i;
    total += x.data()[i];
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
}

TEST_P(VectorOpsTest, LayerNormRowMatchesDouble) {
  Buffer x(n(), offset(), rng_), gamma(n(), 0, rng_, 0.5f, 1.5f), beta(n(), 0, rng_);
  std::vector<float> y(static_cast<size_t>(n()));
  const float eps = 1e-5f;
  LayerNormRow(x.data(), gamma.data(), beta.data(), eps, y.data(), n());
  double mean = 0.0, var = 0.0;
  for (int64_t i = 0; i < n(); ++i) mean += x.data()[i];
  mean /= static_cast<double>(n());
  for (int64_t i = 0; i < n(); ++i) var += (x.data()[i] - mean) * (x.data()[i] - mean);
  var /= static_cast<double>(n());
  const double inv_std = 1.0 / std::sqrt(var + eps);
  for (int64_t i = 0; i < n(); ++i) {
    const double want = (x.data()[i] - mean) * inv_std * gamma.data()[i] + beta.data()[i];
    ASSERT_NEAR(y[i], want, 1e-5 * (std::fabs(want) + 1)) << i;
  }
  // In place (y aliasing x) gives the same numbers.
  LayerNormRow(x.data(), gamma.data(), beta.data(), eps, x.data(), n());
  for (int64_t i = 0; i < n(); ++i) ASSERT_EQ(x.data()[i], y[i]) << i;
}

TEST_P(VectorOpsTest, BiasGeluAndBiasReluMatchDouble) {
  Buffer y(n(), offset(), rng_, -6.0f, 6.0f), bias(n(), 0, rng_, -1.0f, 1.0f);
  const std::vector<float> y0 = y.values();
  BiasGelu(y.data(), bias.data(), n());
  for (int64_t i = 0; i < n(); ++i) {
    const double v = static_cast<double>(y0[i] + bias.data()[i]);
    const double want = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    ASSERT_NEAR(y.data()[i], want, 1e-6 * (std::fabs(want) + 1)) << "gelu(" << v << ")";
  }
  Buffer r(n(), offset(), rng_, -6.0f, 6.0f);
  const std::vector<float> r0 = r.values();
  BiasRelu(r.data(), bias.data(), n());
  for (int64_t i = 0; i < n(); ++i) {
    ASSERT_EQ(r.data()[i], std::max(r0[i] + bias.data()[i], 0.0f)) << i;
  }
}

TEST_P(VectorOpsTest, RmsNormRowMatchesDouble) {
  Buffer x(n(), offset(), rng_), gamma(n(), 0, rng_, 0.5f, 1.5f);
  std::vector<float> y(static_cast<size_t>(n()));
  const float eps = 1e-6f;
  RmsNormRow(x.data(), gamma.data(), eps, y.data(), n());
  double sq = 0.0;
  for (int64_t i = 0; i < n(); ++i) sq += double(x.data()[i]) * x.data()[i];
  const double inv = 1.0 / std::sqrt(sq / static_cast<double>(n()) + eps);
  for (int64_t i = 0; i < n(); ++i) {
    const double want = x.data()[i] * inv * gamma.data()[i];
    ASSERT_NEAR(y[i], want, 1e-5 * (std::fabs(want) + 1)) << i;
  }
  RmsNormRow(x.data(), gamma.data(), eps, x.data(), n());  // in place: the same numbers
  for (int64_t i = 0; i < n(); ++i) ASSERT_EQ(x.data()[i], y[i]) << i;
}

TEST_P(VectorOpsTest, GatedActivationRowMatchesDouble) {
  Buffer gate(n(), offset(), rng_, -8.0f, 8.0f), up(n(), 0, rng_);
  std::vector<float> y(static_cast<size_t>(n()));
  for (const Activation act :
       {Activation::kSilu, Activation::kGelu, Activation::kRelu, Activation::kGeluTanh}) {
    GatedActivationRow(gate.data(), up.data(), act, y.data(), n());
    for (int64_t i = 0; i < n(); ++i) {
      const double g = gate.data()[i];
      const double a = act == Activation::kSilu   ? g / (1.0 + std::exp(-g))
                       : act == Activation::kGelu ? 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)))
                       : act == Activation::kGeluTanh
                           ? 0.5 * g *
                                 (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) *
                                                  (g + 0.044715 * g * g * g)))
                           : std::max(g, 0.0);
      const double want = a * up.data()[i];
      ASSERT_NEAR(y[i], want, 1e-6 * (std::fabs(want) + 1)) << int(act) << " at " << g;
    }
  }
  Buffer s(n(), offset(), rng_, -8.0f, 8.0f), bias(n(), 0, rng_, -1.0f, 1.0f);
  const std::vector<float> s0 = s.values();
  BiasActivate(s.data(), bias.data(), Activation::kSilu, n());
  for (int64_t i = 0; i < n(); ++i) {
    const double v = static_cast<double>(s0[i] + bias.data()[i]);
    ASSERT_NEAR(s.data()[i], v / (1.0 + std::exp(-v)), 1e-6 * (std::fabs(v) + 1)) << i;
  }
}

std::vector<std::pair<int64_t, int>> SizesAndOffsets() {
  std::vector<std::pair<int64_t, int>> out;
  for (int64_t n : kSizes) {
    out.emplace_back(n, 0);
    out.emplace_back(n, 1);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Sizes, VectorOpsTest, ::testing::ValuesIn(SizesAndOffsets()),
                         [](const auto& info) {
                           return absl::StrCat("n", info.param.first, "_offset", info.param.second);
                         });

TEST(ExpInPlaceTest, BoundaryInputs) {
  std::vector<float> x = {
      0.0f, -87.0f, 88.0f, -87.5f, -100.0f, -1e30f, -std::numeric_limits<float>::infinity()};
  ExpInPlace(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_NEAR(x[1], std::exp(-87.0), 1e-6 * std::exp(-87.0));
  EXPECT_NEAR(x[2], std::exp(88.0), 1e-6 * std::exp(88.0));
  EXPECT_EQ(x[3], 0.0f);  // documented: inputs below -87 give 0
  EXPECT_EQ(x[4], 0.0f);
  EXPECT_EQ(x[5], 0.0f);
  EXPECT_EQ(x[6], 0.0f);
}

// RowMax over lengths around its 16 lanes: the maximum wherever it sits (lane, tail), NaNs
// skipped, −infinity for an empty or all −infinity row.
TEST(RowMaxTest, FindsTheMaximumAnywhereAndSkipsNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(RowMax(nullptr, 0), -inf);
  for (int64_t n : {1, 15, 16, 17, 33, 1000}) {
    for (int64_t at = 0; at < n; at += std::max<int64_t>(1, n / 7)) {
      std::vector<float> x(static_cast<size_t>(n), -5.0f);
      x[at] = 3.5f;
      if (n > 1) x[(at + 1) % n] = std::nanf("");
      EXPECT_EQ(RowMax(x.data(), n), 3.5f) << "n " << n << " at " << at;
    }
    std::vector<float> all(static_cast<size_t>(n), -inf);
    EXPECT_EQ(RowMax(all.data(), n), -inf) << n;
  }
}

TEST(SoftmaxRowTest, LargeMagnitudeInputsStayFinite) {
  std::vector<float> x = {1000.0f, 999.0f, -1000.0f, 0.0f, 1000.0f, -3e38f};
  std::vector<double> want(x.size());
  const double max = 1000.0;
  double z = 0.0;
  for (size_t i = 0; i < x.size(); ++i) z += std::exp(x[i] - max);
  for (size_t i = 0; i < x.size(); ++i) want[i] = std::exp(x[i] - max) / z;
  SoftmaxRow(x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_TRUE(std::isfinite(x[i])) << i;
    EXPECT_NEAR(x[i], want[i], 1e-6) << i;
  }
  EXPECT_NEAR(x[0], 1.0 / (2.0 + std::exp(-1.0)), 1e-6);

  std::vector<float> huge = {3e38f, 3e38f, -3e38f};
  SoftmaxRow(huge.data(), 3);
  EXPECT_NEAR(huge[0], 0.5f, 1e-6);
  EXPECT_NEAR(huge[1], 0.5f, 1e-6);
  EXPECT_EQ(huge[2], 0.0f);
}

// Found by tests/fuzz/snapshot_fuzzer (a state holding NaN): the exponential converted a NaN to an
// integer, which is undefined (UBSan stops the asan build here). A NaN score now makes the row
// NaN, visibly, and nothing undefined happens on the way.
TEST(SoftmaxRowTest, NanScoresGiveNanWithoutUndefinedBehaviour) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  SoftmaxRow(x.data(), 3);
  for (float v : x) EXPECT_TRUE(std::isnan(v));
  std::vector<float> overflowed = {inf, inf, 0.0f};  // max − max = inf − inf = NaN
  SoftmaxRow(overflowed.data(), 3);
  EXPECT_TRUE(std::isnan(overflowed[0]));
  // Rows long enough for the 16 running maxima, the NaN in a lane or in the tail.
  for (size_t at : {size_t{20}, size_t{35}}) {
    std::vector<float> row(37, 0.5f);
    row[at] = std::numeric_limits<float>::quiet_NaN();
    SoftmaxRow(row.data(), static_cast<int64_t>(row.size()));
    for (float v : row) EXPECT_TRUE(std::isnan(v)) << "NaN at " << at;
  }
}

TEST(SoftmaxRowTest, NegativeInfinityGetsZeroMass) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {-inf, 1.0f, -inf, 1.0f};
  SoftmaxRow(x.data(), 4);
  EXPECT_EQ(x[0], 0.0f);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_NEAR(x[1], 0.5f, 1e-7);
  EXPECT_NEAR(x[3], 0.5f, 1e-7);
}

TEST(LayerNormRowTest, LargeMeanRowStaysAccurate) {
  // A one-pass E[x²] − E[x]² in float loses everything here; the two-pass form must not.
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  const int64_t n = 1000;
  std::vector<float> x(n), gamma(n, 1.0f), beta(n, 0.0f), y(n);
  for (float& v : x) v = 1000.0f + noise(rng);
  LayerNormRow(x.data(), gamma.data(), beta.data(), 1e-5f, y.data(), n);
  double mean = 0.0, var = 0.0;
  for (float v : x) mean += v;
  mean /= n;
  for (float v : x) var += (v - mean) * (v - mean);
  var /= n;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(y[i], (x[i] - mean) / std::sqrt(var + 1e-5), 2e-3) << i;
  }
}

TEST(LayerNormRowTest, ConstantRowGivesBeta) {
  std::vector<float> x(65, 3.25f), gamma(65, 2.0f), beta(65), y(65);
  for (int i = 0; i < 65; ++i) beta[i] = 0.01f * i;
  LayerNormRow(x.data(), gamma.data(), beta.data(), 1e-5f, y.data(), 65);
  for (int i = 0; i < 65; ++i) EXPECT_NEAR(y[i], beta[i], 1e-6) << i;
}

}  // namespace
}  // namespace mnemo::kernels
