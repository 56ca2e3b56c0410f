#include "kernels/cpu/sparse_attention.h"

#include <cmath>

#include "kernels/cpu/vector_ops.h"

namespace mnemo::kernels {

void SlidingWindowAttention(const SlidingWindowShape& shape, const float* q, int64_t ldq,
                            const std::vector<KvSpan>& keys, float* out, int64_t ldo,
                            ThreadPool& pool) {
  const int dh = shape.head_dim;
  const int64_t t_len = shape.query_len, w = shape.window;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  pool.ParallelFor(shape.num_heads * t_len, 4, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> scores;
    thread_local std::vector<const float*> values;
    scores.resize(static_cast<size_t>(w));
    values.resize(static_cast<size_t>(w));
    for (int64_t task = i0; task < i1; ++task) {
      const int h = static_cast<int>(task / t_len);
      const int64_t i = task % t_len;
      const int64_t dil = shape.dilations[h];
      const int64_t self = shape.memory_len + i;  // the query's key index
      const float* qh = q + i * ldq + h * dh;
      // Keys self, self − dil, … (at most W of them, none before the stored window).
      int64_t n = 0;
      for (int64_t r = 0; r < w && self - r * dil >= 0; ++r, ++n) {
        int64_t j = self - r * dil;
        for (const KvSpan& span : keys) {
          if (j < span.rows) {
            const float* k = span.k + j * span.ld + h * dh;
            float dot = 0.0f;
            for (int d = 0; d < dh; ++d) dot += qh[d] * k[d];
            scores[n] = dot * scale;
            values[n] = span.v + j * span.ld + h * dh;
            break;
          }
          j -= span.rows;
        }
      }
      SoftmaxRow(scores.data(), n);
      float* o = out + i * ldo + h * dh;
      for (int d = 0; d < dh; ++d) o[d] = 0.0f;
      for (int64_t r = 0; r < n; ++r) {
        for (int d = 0; d < dh; ++d) o[d] += scores[r] * values[r][d];
      }
    }
  });
}

}  // namespace mnemo::kernels
