// kernels/cpu/linformer_attention, kernels/cpu/synthesizer_attention,
// kernels/cpu/bigbird_attention and kernels/cpu/funnel_attention against naive double loops
// written from their definitions (the headers): a pass of N ≤ n_max positions using the first N
// columns of Linformer's E and F, and the first N positions of Synthesizer's dense logits or
// random matrices; BigBird's full and block-sparse attention over padded passes, random blocks
// repeating band blocks, each other and padding; Funnel's relative attention with and without
// pooled queries and the separate first token; rows strided as the projections lay them out.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/bigbird_attention.h"
#include "kernels/cpu/funnel_attention.h"
#include "kernels/cpu/linformer_attention.h"
#include "kernels/cpu/synthesizer_attention.h"

namespace mnemo::kernels {
namespace {

std::vector<float> Normal(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = scale * dist(rng);
  return v;
}

// softmax(logits) · values for one row, in double.
void MixRow(std::vector<double> logits, const std::vector<std::vector<double>>& values,
            double* out) {
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (double& l : logits) sum += l = std::exp(l - top);
  for (size_t e = 0; e < values[0].size(); ++e) {
    double acc = 0;
    for (size_t j = 0; j < logits.size(); ++j) acc += logits[j] / sum * values[j][e];
    out[e] = acc;
  }
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  double scale = 0;
  for (double x : want) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5 * scale + 1e-6) << "element " << i;
  }
}

TEST(LinformerAttentionTest, MatchesTheDefinition) {
  ThreadPool pool(2);
  for (const LinformerShape s : {LinformerShape{2, 4, 12, 3, 12}, LinformerShape{3, 8, 7, 5, 16},
                                 LinformerShape{1, 8, 1, 2, 9}, LinformerShape{4, 2, 16, 16, 16}}) {
    SCOPED_TRACE(testing::Message()
                 << "N " << s.len << " k " << s.projected << " n_max " << s.max_len);
    const int64_t w = static_cast<int64_t>(s.num_heads) * s.head_dim, d = s.head_dim;
    std::mt19937 rng(static_cast<uint32_t>(s.len * 7 + s.projected));
    const std::vector<float> qkv = Normal(static_cast<size_t>(s.len * 3 * w), rng);
    const std::vector<float> e = Normal(static_cast<size_t>(s.projected * s.max_len), rng, 0.5f);
    const std::vector<float> f = Normal(e.size(), rng, 0.5f);
    std::vector<float> out(static_cast<size_t>(s.len * w), 99.0f);
    LinformerAttention(s, qkv.data(), 3 * w, qkv.data() + w, 3 * w, qkv.data() + 2 * w, 3 * w,
                       e.data(), f.data(), out.data(), w, pool);
    std::vector<double> want(out.size());
    for (int64_t h = 0; h < s.num_heads; ++h) {
      // E·K and F·V over the pass's N positions: [k, d_h] each.
      std::vector<std::vector<double>> pk(s.projected, std::vector<double>(d)), pv = pk;
      for (int64_t r = 0; r < s.projected; ++r) {
        for (int64_t j = 0; j < s.len; ++j) {
          for (int64_t c = 0; c < d; ++c) {
            pk[r][c] += e[r * s.max_len + j] * double{qkv[j * 3 * w + w + h * d + c]};
            pv[r][c] += f[r * s.max_len + j] * double{qkv[j * 3 * w + 2 * w + h * d + c]};
          }
        }
      }
      for (int64_t i = 0; i < s.len; ++i) {
        std::vector<double> logits(s.projected);
        for (int64_t r = 0; r < s.projected; ++r) {
          for (int64_t c = 0; c < d; ++c) logits[r] += qkv[i * 3 * w + h * d + c] * pk[r][c];
          logits[r] /= std::sqrt(static_cast<double>(d));
        }
        MixRow(logits, pv, want.data() + i * w + h * d);
      }
    }
    ExpectNear(out, want);
  }
}

TEST(SynthesizerAttentionTest, DenseAndRandomMatchTheDefinition) {
  ThreadPool pool(2);
  for (const bool dense : {true, false}) {
    for (const SynthesizerShape s : {SynthesizerShape{2, 4, 10, 10}, SynthesizerShape{3, 8, 6, 11},
                                     SynthesizerShape{1, 4, 1, 5}}) {
      SCOPED_TRACE(testing::Message()
                   << (dense ? "dense" : "random") << " N " << s.len << " n_max " << s.max_len);
      const int64_t w = static_cast<int64_t>(s.num_heads) * s.head_dim, d = s.head_dim,
                    m = s.max_len;
      std::mt19937 rng(static_cast<uint32_t>(s.len * 5 + (dense ? 1 : 0)));
      const std::vector<float> v = Normal(static_cast<size_t>(s.len * w), rng);
      const std::vector<float> h1 = Normal(v.size(), rng);
      const std::vector<float> w2 = Normal(static_cast<size_t>(s.num_heads * m * d), rng, 0.5f);
      const std::vector<float> b2 =
          Normal(static_cast<size_t>(s.num_heads * m * (dense ? 1 : m)), rng, 2.0f);
      std::vector<float> out(v.size(), 99.0f);
      SynthesizerAttention(s, dense ? h1.data() : nullptr, w, dense ? w2.data() : nullptr,
                           b2.data(), v.data(), w, out.data(), w, pool);
      std::vector<double> want(out.size());
      for (int64_t h = 0; h < s.num_heads; ++h) {
        std::vector<std::vector<double>> values(s.len, std::vector<double>(d));
        for (int64_t j = 0; j < s.len; ++j) {
          for (int64_t c = 0; c < d; ++c) values[j][c] = v[j * w + h * d + c];
        }
        for (int64_t i = 0; i < s.len; ++i) {
          std::vector<double> logits(s.len);
          for (int64_t j = 0; j < s.len; ++j) {
            if (dense) {
              logits[j] = b2[h * m + j];
              for (int64_t c = 0; c < d; ++c) {
                logits[j] += double{h1[i * w + h * d + c]} * w2[(h * m + j) * d + c];
              }
            } else {
              logits[j] = b2[(h * m + i) * m + j];
            }
          }
          MixRow(logits, values, want.data() + i * w + h * d);
        }
      }
      ExpectNear(out, want);
    }
  }
}

TEST(BigBirdAttentionTest, FullAndBlockSparseMatchTheDefinition) {
  ThreadPool pool(2);
  for (const BigBirdShape s : {BigBirdShape{2, 4, 48, 48, 4, 2}, BigBirdShape{3, 8, 64, 59, 8, 1},
                               BigBirdShape{1, 4, 40, 33, 4, 3}, BigBirdShape{2, 4, 23, 23, 8, 0},
                               BigBirdShape{2, 8, 9, 9, 64, 0}}) {
    SCOPED_TRACE(testing::Message() << "L " << s.len << " valid " << s.valid << " b "
                                    << s.block_size << " r " << s.num_random);
    const int64_t w = static_cast<int64_t>(s.num_heads) * s.head_dim, d = s.head_dim,
                  b = s.block_size, blocks = (s.len + b - 1) / b;
    std::mt19937 rng(static_cast<uint32_t>(s.len * 3 + s.num_random));
    const std::vector<float> qkv = Normal(static_cast<size_t>(s.len * 3 * w), rng);
    // Random blocks anywhere: repeating the band, each other, or past the valid positions.
    std::vector<int32_t> random(static_cast<size_t>(s.num_heads * (blocks - 2) * s.num_random));
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(blocks - 1));
    for (int32_t& r : random) r = pick(rng);
    std::vector<float> out(static_cast<size_t>(s.len * w), 99.0f);
    BigBirdAttention(s, qkv.data(), 3 * w, qkv.data() + w, 3 * w, qkv.data() + 2 * w, 3 * w,
                     s.num_random > 0 ? random.data() : nullptr, out.data(), w, pool);
    std::vector<double> want(out.size());  // padding rows: zeros
    for (int64_t h = 0; h < s.num_heads; ++h) {
      for (int64_t i = 0; i < s.valid; ++i) {
        const int64_t bi = i / b;
        std::vector<int64_t> seen;  // key blocks, a random one as often as drawn
        if (s.num_random == 0 || bi == 0 || bi == blocks - 1) {
          for (int64_t j = 0; j < blocks; ++j) seen.push_back(j);
        } else {
          for (int64_t j = 0; j < blocks; ++j) {
            if (j == 0 || j == blocks - 1 || std::abs(j - bi) <= 1) seen.push_back(j);
          }
          for (int64_t t = 0; t < s.num_random; ++t) {
            seen.push_back(random[(h * (blocks - 2) + bi - 1) * s.num_random + t]);
          }
        }
        std::vector<double> logits;
        std::vector<std::vector<double>> values;
        for (int64_t block : seen) {
          for (int64_t j = block * b; j < std::min((block + 1) * b, s.valid); ++j) {
            double dot = 0;
            for (int64_t c = 0; c < d; ++c) {
              dot += double{qkv[i * 3 * w + h * d + c]} * qkv[j * 3 * w + w + h * d + c];
            }
            logits.push_back(dot / std::sqrt(static_cast<double>(d)));
            values.emplace_back(d);
            for (int64_t c = 0; c < d; ++c) values.back()[c] = qkv[j * 3 * w + 2 * w + h * d + c];
          }
        }
        MixRow(logits, values, want.data() + i * w + h * d);
      }
    }
    ExpectNear(out, want);
  }
}

TEST(FunnelAttentionTest, MatchesTheDefinition) {
  ThreadPool pool(2);
  for (const FunnelShape s : {FunnelShape{2, 4, 9, 9, 1, true}, FunnelShape{3, 8, 5, 9, 2, true},
                              FunnelShape{2, 4, 6, 11, 2, false}, FunnelShape{1, 4, 1, 3, 2, true},
                              FunnelShape{2, 8, 7, 7, 1, false}}) {
    SCOPED_TRACE(testing::Message() << "Tq " << s.q_len << " Tk " << s.k_len << " stride "
                                    << s.q_stride << " separate " << s.separate_cls);
    const int64_t w = static_cast<int64_t>(s.num_heads) * s.head_dim, d = s.head_dim,
                  m = s.q_stride * (s.q_len - 1) + s.k_len;
    std::mt19937 rng(static_cast<uint32_t>(s.q_len * 11 + s.k_len));
    const std::vector<float> q = Normal(static_cast<size_t>(s.q_len * 3 * w), rng);
    const std::vector<float> kv = Normal(static_cast<size_t>(s.k_len * 3 * w), rng);
    const std::vector<float> r = Normal(static_cast<size_t>(m * w), rng);
    const std::vector<float> biases = Normal(static_cast<size_t>(4 * w), rng, 0.5f);
    const float *r_w = biases.data(), *r_r = r_w + w, *r_s = r_r + w, *seg = r_s + w;
    std::vector<float> out(static_cast<size_t>(s.q_len * w), 99.0f);
    FunnelAttention(s, q.data(), 3 * w, kv.data() + w, 3 * w, kv.data() + 2 * w, 3 * w, r.data(),
                    r_w, r_r, r_s, seg, out.data(), w, pool);
    std::vector<double> want(out.size());
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (int64_t h = 0; h < s.num_heads; ++h) {
      std::vector<std::vector<double>> values(s.k_len, std::vector<double>(d));
      for (int64_t j = 0; j < s.k_len; ++j) {
        for (int64_t c = 0; c < d; ++c) values[j][c] = kv[j * 3 * w + 2 * w + h * d + c];
      }
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::vector<double> logits(s.k_len);
        for (int64_t j = 0; j < s.k_len; ++j) {
          const bool masked = s.separate_cls && (i == 0 || j == 0);
          const int64_t t = s.q_stride * i + s.k_len - 1 - j;  // the row of R(p_i − p_j)
          for (int64_t c = 0; c < d; ++c) {
            const int64_t e = h * d + c;
            const double x = q[i * 3 * w + e];
            logits[j] += (x + r_w[e]) * scale * kv[j * 3 * w + w + e];
            if (!masked)
              logits[j] += (x + r_r[e]) * scale * r[t * w + e] + (x + r_s[e]) * scale * seg[e];
          }
        }
        MixRow(logits, values, want.data() + i * w + h * d);
      }
    }
    ExpectNear(out, want);
  }
}

}  // namespace
}  // namespace mnemo::kernels
