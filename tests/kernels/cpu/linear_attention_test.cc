// kernels/cpu/linear_attention: the chunked parallel form, the recurrent form and any split of a
// sequence into calls compute the same outputs and final state, and both equal a naive
// double-precision evaluation of MODEL-SPEC §5 written here from the formulas.
#include "kernels/cpu/linear_attention.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::kernels {
namespace {

struct Case {
  const char* name;
  FeatureMap map;
  bool gated;
};

class LinearAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  static constexpr int kHeads = 3, kHeadDim = 16, kFeatures = 12, kInput = 20;
  static constexpr int64_t kTokens = 150;  // crosses the 64-token chunks

  LinearAttentionShape Shape(int64_t t) const {
    return {kHeads, kHeadDim, t, GetParam().map, kFeatures, GetParam().gated, 1e-6f, kInput};
  }
  std::vector<float> Random(size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }
  void SetUp() override {
    const int64_t w = kHeads * kHeadDim;
    qkv_ = Random(static_cast<size_t>(kTokens * 3 * w), 0.5f);
    input_ = Random(static_cast<size_t>(kTokens * kInput), 1.0f);
    features_ = Random(static_cast<size_t>(kFeatures * kHeadDim), 1.0f);
    gate_w_ = Random(static_cast<size_t>(kHeads * kInput), 0.3f);
    gate_b_ = Random(kHeads, 0.5f);
    mf_ = LinearStateFeatures(Shape(1));
  }
  // Runs tokens [t0, t0 + n) in one call on (s, z); returns the outputs.
  std::vector<float> Run(int64_t t0, int64_t n, std::vector<float>& s, std::vector<float>& z) {
    const int64_t w = kHeads * kHeadDim;
    std::vector<float> out(static_cast<size_t>(n * w), std::nanf(""));
    LinearAttention(Shape(n), qkv_.data() + t0 * 3 * w, input_.data() + t0 * kInput,
                    features_.data(), gate_w_.data(), gate_b_.data(), s.data(), z.data(),
                    out.data(), ThreadPool::Default());
    return out;
  }
  std::vector<float> Zeros(int64_t n) const { return std::vector<float>(static_cast<size_t>(n)); }

  // MODEL-SPEC §5 token by token in double precision.
  std::vector<float> Naive() const {
    const int64_t w = kHeads * kHeadDim, m = kFeatures;
    const Case c = GetParam();
    std::vector<float> out(static_cast<size_t>(kTokens * w));
    for (int h = 0; h < kHeads; ++h) {
      std::vector<double> S(static_cast<size_t>(mf_ * kHeadDim)), z(static_cast<size_t>(mf_));
      auto phi = [&](const float* x, bool query) {
        std::vector<double> f(static_cast<size_t>(mf_));
        if (c.map == FeatureMap::kElu) {
          for (int i = 0; i < kHeadDim; ++i) f[i] = x[i] > 0 ? x[i] + 1.0 : std::exp(x[i]);
          return f;
        }
        std::vector<double> xs(kHeadDim), u(static_cast<size_t>(m));
        double norm = 0;
        for (int i = 0; i < kHeadDim; ++i) norm += double(x[i]) * x[i];
        for (int i = 0; i < kHeadDim; ++i) {
          xs[i] = c.map == FeatureMap::kFavor ? x[i] * std::pow(kHeadDim, -0.25)
                                              : x[i] / std::max(std::sqrt(norm), 1e-12);
        }
        for (int64_t r = 0; r < m; ++r) {
          for (int i = 0; i < kHeadDim; ++i) u[r] += features_[r * kHeadDim + i] * xs[i];
        }
        if (c.map == FeatureMap::kFavor) {
          double n2 = 0;
          for (double v : xs) n2 += v * v;
          const double stab = query ? *std::max_element(u.begin(), u.end()) : 0.0;
          for (int64_t r = 0; r < m; ++r) {
            f[r] = (std::exp(u[r] - n2 / 2 - stab) + 1e-4) / std::sqrt(double(m));
          }
        } else {
          for (int64_t r = 0; r < m; ++r) {
            f[r] = std::sin(u[r]) / std::sqrt(double(m));
            f[m + r] = std::cos(u[r]) / std::sqrt(double(m));
          }
        }
        return f;
      };
      for (int64_t t = 0; t < kTokens; ++t) {
        const float* row = qkv_.data() + t * 3 * w + h * kHeadDim;
        const std::vector<double> fq = phi(row, true), fk = phi(row + w, false);
        double a = 1, b = 1;
        if (c.gated) {
          double x = gate_b_[h];
          for (int i = 0; i < kInput; ++i)
            x += double(gate_w_[h * kInput + i]) * input_[t * kInput + i];
          a = 1 / (1 + std::exp(-x));
          b = 1 - a;
        }
        const float* v = row + 2 * w;
        for (int64_t i = 0; i < mf_; ++i) {
          z[i] = a * z[i] + b * fk[i];
          for (int d = 0; d < kHeadDim; ++d)
            S[i * kHeadDim + d] = a * S[i * kHeadDim + d] + b * fk[i] * v[d];
        }
        double den = 0;
        for (int64_t i = 0; i < mf_; ++i) den += fq[i] * z[i];
        den = std::max(den, 1e-6);
        for (int d = 0; d < kHeadDim; ++d) {
          double num = 0;
          for (int64_t i = 0; i < mf_; ++i) num += fq[i] * S[i * kHeadDim + d];
          out[t * w + h * kHeadDim + d] = static_cast<float>(num / den);
        }
      }
    }
    return out;
  }

  std::mt19937 rng_{7};
  std::vector<float> qkv_, input_, features_, gate_w_, gate_b_;
  int64_t mf_ = 0;
};

TEST_P(LinearAttentionTest, ParallelRecurrentAndSplitCallsAgreeWithTheFormulas) {
  const int64_t w = kHeads * kHeadDim;
  std::vector<float> s1 = Zeros(kHeads * mf_ * kHeadDim), z1 = Zeros(kHeads * mf_);
  const std::vector<float> whole = Run(0, kTokens, s1, z1);

  std::vector<float> s2 = Zeros(kHeads * mf_ * kHeadDim), z2 = Zeros(kHeads * mf_);
  std::vector<float> steps;
  for (int64_t t = 0; t < kTokens; ++t) {
    const std::vector<float> o = Run(t, 1, s2, z2);
    steps.insert(steps.end(), o.begin(), o.end());
  }
  std::vector<float> s3 = Zeros(kHeads * mf_ * kHeadDim), z3 = Zeros(kHeads * mf_);
  std::vector<float> split;
  for (auto [t0, n] : {std::pair<int64_t, int64_t>{0, 50}, {50, 1}, {51, 99}}) {
    const std::vector<float> o = Run(t0, n, s3, z3);
    split.insert(split.end(), o.begin(), o.end());
  }
  ASSERT_EQ(static_cast<int64_t>(whole.size()), kTokens * w);
  const std::vector<float> naive = Naive();
  EXPECT_TRUE(test::NearRelative(whole, naive, 1e-5)) << "parallel vs formulas";
  EXPECT_TRUE(test::NearRelative(steps, naive, 1e-5)) << "recurrent vs formulas";
  EXPECT_TRUE(test::NearRelative(split, naive, 1e-5)) << "split calls vs formulas";
  EXPECT_TRUE(test::NearRelative(s2, s1, 1e-5)) << "state: recurrent vs parallel";
  EXPECT_TRUE(test::NearRelative(s3, s1, 1e-5)) << "state: split vs one call";
  EXPECT_TRUE(test::NearRelative(z3, z1, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Maps, LinearAttentionTest,
                         ::testing::Values(Case{"Elu", FeatureMap::kElu, false},
                                           Case{"Favor", FeatureMap::kFavor, false},
                                           Case{"Rfa", FeatureMap::kRfa, false},
                                           Case{"RfaGated", FeatureMap::kRfa, true}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace mnemo::kernels
