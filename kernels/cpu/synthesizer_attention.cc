// Synthesizer's attention on the CPU (synthesizer_attention.h): per head, the logits (one product
// for dense, a copy of the learned matrix's corner for random), one softmax per row over the
// pass's positions, one product with the values.
#include "kernels/cpu/synthesizer_attention.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

void SynthesizerAttention(const SynthesizerShape& s, const float* h1, int64_t ldh, const float* w2,
                          const float* b2, const float* v, int64_t ldv, float* out, int64_t ldo,
                          ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, n = s.len, m = s.max_len;
  pool.ParallelFor(s.num_heads, 1, [&](int64_t first, int64_t end) {
    std::vector<float> logits(static_cast<size_t>(n * n));
    for (int64_t h = first; h < end; ++h) {
      if (h1 != nullptr) {
        // logits[i, j] = h1_i · w2_h[j] + b2_h[j], for the pass's j < N only.
        GemmNT(n, n, d, 1.0f, h1 + h * d, ldh, w2 + h * m * d, d, 0.0f, logits.data(), n);
        for (int64_t i = 0; i < n; ++i) AddBias(logits.data() + i * n, b2 + h * m, n);
      } else {
        for (int64_t i = 0; i < n; ++i) {
          std::copy_n(b2 + (h * m + i) * m, n, logits.data() + i * n);
        }
      }
      for (int64_t i = 0; i < n; ++i) SoftmaxRow(logits.data() + i * n, n);
      GemmNN(n, d, n, 1.0f, logits.data(), n, v + h * d, ldv, 0.0f, out + h * d, ldo);
    }
  });
}

}  // namespace mnemo::kernels
