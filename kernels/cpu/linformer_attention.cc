// Linformer's attention on the CPU (linformer_attention.h): per head, two products project the
// keys and values to k rows, one scores every query against them, one sums.
#include "kernels/cpu/linformer_attention.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

void LinformerAttention(const LinformerShape& s, const float* q, int64_t ldq, const float* k,
                        int64_t ldk, const float* v, int64_t ldv, const float* e, const float* f,
                        float* out, int64_t ldo, ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, n = s.len, kp = s.projected;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  pool.ParallelFor(s.num_heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> pk(static_cast<size_t>(kp * d)), pv(pk.size()),
        scores(static_cast<size_t>(n * kp));
    for (int64_t h = h0; h < h1; ++h) {
      GemmNN(kp, d, n, 1.0f, e, s.max_len, k + h * d, ldk, 0.0f, pk.data(), d);
      GemmNN(kp, d, n, 1.0f, f, s.max_len, v + h * d, ldv, 0.0f, pv.data(), d);
      GemmNT(n, kp, d, scale, q + h * d, ldq, pk.data(), d, 0.0f, scores.data(), kp);
      for (int64_t i = 0; i < n; ++i) SoftmaxRow(scores.data() + i * kp, kp);
      GemmNN(n, d, kp, 1.0f, scores.data(), kp, pv.data(), d, 0.0f, out + h * d, ldo);
    }
  });
}

}  // namespace mnemo::kernels
