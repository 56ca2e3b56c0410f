// Longformer's attention on the CPU (longformer_attention.h): one task per (query, head) scores
// the global keys, then its window as one strided block, drops the window's global positions
// (already counted), takes one softmax and sums the values the same way.
#include "kernels/cpu/longformer_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

void LongformerLocalAttention(const LongformerShape& s, const float* q, int64_t ldq, const float* k,
                              int64_t ldk, const float* v, int64_t ldv,
                              const std::vector<int64_t>& globals, float* out, int64_t ldo,
                              ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, g = static_cast<int64_t>(globals.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<uint8_t> is_global(static_cast<size_t>(s.len), 0);
  for (int64_t p : globals) is_global[p] = 1;
  const auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scores;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / s.num_heads;
      const int64_t h = task % s.num_heads;
      if (is_global[i]) continue;
      const int64_t lo = std::max<int64_t>(0, i - s.one_sided);
      const int64_t hi = std::min<int64_t>(s.len - 1, i + s.one_sided);
      const int64_t n = g + (hi - lo + 1);
      if (static_cast<int64_t>(scores.size()) < n) scores.resize(static_cast<size_t>(n));
      const float* qh = q + i * ldq + h * d;
      for (int64_t a = 0; a < g; ++a) {
        const float* kh = k + globals[a] * ldk + h * d;
        float dot = 0.0f;
        for (int64_t e = 0; e < d; ++e) dot += qh[e] * kh[e];
        scores[a] = dot;
      }
      float* band = scores.data() + g;
      Gemv(hi - lo + 1, d, k + lo * ldk + h * d, ldk, qh, 0.0f, band);
      for (int64_t j = 0; j < n; ++j) scores[j] *= scale;
      for (int64_t j = lo; j <= hi; ++j) {  // a global key is counted once, in front
        if (is_global[j]) band[j - lo] = -std::numeric_limits<float>::infinity();
      }
      SoftmaxRow(scores.data(), n);
      float* o = out + i * ldo + h * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t a = 0; a < g; ++a) {
        const float* vh = v + globals[a] * ldv + h * d;
        for (int64_t e = 0; e < d; ++e) o[e] += scores[a] * vh[e];
      }
      GemvT(hi - lo + 1, d, v + lo * ldv + h * d, ldv, band, 1.0f, o);
    }
  };
  pool.ParallelFor(s.len * s.num_heads, 8, run);
}

void LongformerGlobalAttention(const LongformerShape& s, const float* q, int64_t ldq,
                               const float* k, int64_t ldk, const float* v, int64_t ldv,
                               const std::vector<int64_t>& globals, float* out, int64_t ldo,
                               ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scores;
    if (static_cast<int64_t>(scores.size()) < s.len) scores.resize(static_cast<size_t>(s.len));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t a = task / s.num_heads;
      const int64_t h = task % s.num_heads;
      Gemv(s.len, d, k + h * d, ldk, q + globals[a] * ldq + h * d, 0.0f, scores.data());
      for (int64_t j = 0; j < s.len; ++j) scores[j] *= scale;
      SoftmaxRow(scores.data(), s.len);
      GemvT(s.len, d, v + h * d, ldv, scores.data(), 0.0f, out + globals[a] * ldo + h * d);
    }
  };
  pool.ParallelFor(static_cast<int64_t>(globals.size()) * s.num_heads, 1, run);
}

}  // namespace mnemo::kernels
