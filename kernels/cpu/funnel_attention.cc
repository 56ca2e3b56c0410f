// Funnel-Transformer's relative attention on the CPU (funnel_attention.h): per head, one product
// for the content scores, one for the positional scores against every relative distance (the
// rows of R), then each pair reads its distance's column.
#include "kernels/cpu/funnel_attention.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

void FunnelAttention(const FunnelShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                     const float* v, int64_t ldv, const float* r, const float* r_w,
                     const float* r_r, const float* r_s, const float* seg, float* out, int64_t ldo,
                     ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, w = static_cast<int64_t>(s.num_heads) * d, tq = s.q_len,
                tk = s.k_len, m = s.q_stride * (tq - 1) + tk;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  pool.ParallelFor(s.num_heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> qw(static_cast<size_t>(tq * d)), qr(qw.size()), token(tq),
        scores(static_cast<size_t>(tq * tk)), positional(static_cast<size_t>(tq * m));
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t o = h * d;
      for (int64_t i = 0; i < tq; ++i) {
        double same = 0;
        for (int64_t e = 0; e < d; ++e) {
          const float x = q[i * ldq + o + e];
          qw[i * d + e] = (x + r_w[o + e]) * scale;
          qr[i * d + e] = (x + r_r[o + e]) * scale;
          same += double{(x + r_s[o + e]) * scale} * seg[o + e];
        }
        token[i] = static_cast<float>(same);
      }
      GemmNT(tq, tk, d, 1.0f, qw.data(), d, k + o, ldk, 0.0f, scores.data(), tk);
      GemmNT(tq, m, d, 1.0f, qr.data(), d, r + o, w, 0.0f, positional.data(), m);
      for (int64_t i = 0; i < tq; ++i) {
        float* row = scores.data() + i * tk;
        if (!(s.separate_cls && i == 0)) {
          const float* pos = positional.data() + i * m + s.q_stride * i + tk - 1;
          for (int64_t j = s.separate_cls ? 1 : 0; j < tk; ++j) row[j] += pos[-j] + token[i];
        }
        SoftmaxRow(row, tk);
      }
      GemmNN(tq, d, tk, 1.0f, scores.data(), tk, v + o, ldv, 0.0f, out + o, ldo);
    }
  });
}

}  // namespace mnemo::kernels
