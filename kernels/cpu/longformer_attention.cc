// Longformer's attention on the CPU (longformer_attention.h): one task per (block of queries,
// head) scores the global keys and the block's window with BLAS products, masks each query's
// scores to its own window (dropping the window's global positions, already counted), takes one
// softmax per query and sums the values with BLAS products the same way.
#include "kernels/cpu/longformer_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {
namespace {

// Queries per task: their keys (the block's window) are one strided block, scored and summed by
// BLAS products; the products' work outside the band is (2w + B)/(2w + 1) − 1 of it.
constexpr int64_t kQueryBlock = 64;

}  // namespace

void LongformerLocalAttention(const LongformerShape& s, const float* q, int64_t ldq, const float* k,
                              int64_t ldk, const float* v, int64_t ldv,
                              const std::vector<int64_t>& globals, float* out, int64_t ldo,
                              ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, g = static_cast<int64_t>(globals.size()), w = s.one_sided;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  std::vector<uint8_t> is_global(static_cast<size_t>(s.len), 0);
  for (int64_t p : globals) is_global[p] = 1;
  // The global keys and values of each head side by side ([H, g, d_h] each), read by every block.
  std::vector<float> gk(static_cast<size_t>(s.num_heads * g * d)), gv(gk.size());
  for (int64_t h = 0; h < s.num_heads; ++h) {
    for (int64_t a = 0; a < g; ++a) {
      std::copy_n(k + globals[a] * ldk + h * d, d, gk.data() + (h * g + a) * d);
      std::copy_n(v + globals[a] * ldv + h * d, d, gv.data() + (h * g + a) * d);
    }
  }
  const int64_t blocks = (s.len + kQueryBlock - 1) / kQueryBlock;
  const auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scores;  // [block, g + keys]: globals, then the block's keys
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t h = task % s.num_heads;
      const int64_t i0 = task / s.num_heads * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, s.len - i0);
      const int64_t lo = std::max<int64_t>(0, i0 - w);
      const int64_t hi = std::min<int64_t>(s.len, i0 + rows + w);  // keys [lo, hi)
      const int64_t ld = g + (hi - lo);
      if (static_cast<int64_t>(scores.size()) < rows * ld) {
        scores.resize(static_cast<size_t>(rows * ld));
      }
      const float* qh = q + i0 * ldq + h * d;
      if (g > 0) {
        GemmNT(rows, g, d, scale, qh, ldq, gk.data() + h * g * d, d, 0.0f, scores.data(), ld);
      }
      GemmNT(rows, hi - lo, d, scale, qh, ldq, k + lo * ldk + h * d, ldk, 0.0f, scores.data() + g,
             ld);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = scores.data() + r * ld;
        const int64_t i = i0 + r;
        if (is_global[i]) {  // global rows are LongformerGlobalAttention's: sum nothing here
          std::fill(row, row + ld, 0.0f);
          continue;
        }
        // Keep the window |i − j| ≤ w; a global key is counted once, in front.
        for (int64_t j = lo; j < hi; ++j) {
          if (j < i - w || j > i + w || is_global[j]) row[g + j - lo] = kNone;
        }
        SoftmaxRow(row, ld);
      }
      float* o = out + i0 * ldo + h * d;
      GemmNN(rows, d, hi - lo, 1.0f, scores.data() + g, ld, v + lo * ldv + h * d, ldv, 0.0f, o,
             ldo);
      if (g > 0) {
        GemmNN(rows, d, g, 1.0f, scores.data(), ld, gv.data() + h * g * d, d, 1.0f, o, ldo);
      }
    }
  };
  pool.ParallelFor(blocks * s.num_heads, 1, run);
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
