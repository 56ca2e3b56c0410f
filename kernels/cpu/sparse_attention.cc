// Dilated sliding-window attention on the CPU (sparse_attention.h); the oracle of the window
// kernels in kernels/cuda/sparse_attention.cu.
#include "kernels/cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

namespace {

// Query rows per block of the segment path (as in relative_attention.cc).
constexpr int64_t kQueryBlock = 64;

float ScoreScale(const SlidingWindowShape& s) {
  return s.scale > 0.0f ? s.scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
}

// cap·tanh(x / cap) over n scores (Gemma-2's soft cap), in place; nothing for cap 0.
void SoftCap(float* x, int64_t n, float cap) {
  if (cap <= 0.0f) return;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

// Whether the query with key index `self` sees key `j` under window `w` and dilation `dil`.
inline bool Sees(int64_t self, int64_t j, int64_t w, int64_t dil) {
  const int64_t back = self - j;
  return back >= 0 && back % dil == 0 && back / dil < w;
}

// Rows [i0, i1) of head h: scores for the contiguous key range the block's windows span, by BLAS
// products per key span, then the window mask, softmax and P·V (as relative_attention.cc's
// blocks do). Dilated windows compute the skipped columns too; worth it while dil is small.
void AttendBlock(const SlidingWindowShape& s, const float* q, int64_t ldq,
                 const std::vector<KvSpan>& keys, float* out, int64_t ldo, int h, int64_t i0,
                 int64_t i1, std::vector<float>& work) {
  const int head_dim = s.head_dim;
  const int64_t dil = s.dilations[h], b = i1 - i0;
  const int64_t kv = static_cast<int64_t>(h / s.kv_group) * head_dim;  // the key head's columns
  const int64_t col1 = s.memory_len + i1;  // one past the last key the block sees
  const int64_t col0 = std::max<int64_t>(0, s.memory_len + i0 - (s.window - 1) * dil);
  const int64_t ncols = col1 - col0;
  work.resize(static_cast<size_t>(b * ncols));
  float* scores = work.data();
  ForEachKeyRange(keys, col0, col1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t n) {
    GemmNT(b, n, head_dim, ScoreScale(s), q + i0 * ldq + h * head_dim, ldq,
           span.k + row * span.ld + kv, span.ld, 0.0f, scores + (j - col0), ncols);
  });
  SoftCap(scores, b * ncols, s.softcap);
  const int64_t keys_total = s.memory_len + s.query_len;
  for (int64_t r = 0; r < b; ++r) {
    const int64_t self = s.memory_len + i0 + r;
    float* row = scores + r * ncols;
    if (s.prev_scores != nullptr || s.out_scores != nullptr) {  // RealFormer
      const int64_t at = (h * s.query_len + i0 + r) * keys_total + col0;
      for (int64_t c = 0; c < ncols; ++c) {
        if (!Sees(self, col0 + c, s.window, dil)) continue;
        if (s.prev_scores != nullptr) row[c] += s.prev_scores[at + c];
        if (s.out_scores != nullptr) s.out_scores[at + c] = row[c];
      }
    }
    float max = -INFINITY;
    for (int64_t c = 0; c < ncols; ++c) {
      if (Sees(self, col0 + c, s.window, dil)) max = std::max(max, row[c]);
    }
    float sum = 0.0f;
    for (int64_t c = 0; c < ncols; ++c) {
      row[c] = Sees(self, col0 + c, s.window, dil) ? std::exp(row[c] - max) : 0.0f;
      sum += row[c];
    }
    const float inv = 1.0f / sum;  // the query always sees itself: sum ≥ 1
    for (int64_t c = 0; c < ncols; ++c) row[c] *= inv;
  }
  float beta = 0.0f;
  ForEachKeyRange(keys, col0, col1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t n) {
    GemmNN(b, head_dim, n, 1.0f, scores + (j - col0), ncols, span.v + row * span.ld + kv, span.ld,
           beta, out + i0 * ldo + h * head_dim, ldo);
    beta = 1.0f;
  });
}

}  // namespace

void SlidingWindowAttention(const SlidingWindowShape& shape, const float* q, int64_t ldq,
                            const std::vector<KvSpan>& keys, float* out, int64_t ldo,
                            ThreadPool& pool) {
  if (shape.query_len > 1) {  // a segment: (head, query block) tasks with BLAS products
    const int64_t blocks = (shape.query_len + kQueryBlock - 1) / kQueryBlock;
    pool.ParallelFor(shape.num_heads * blocks, 1, [&](int64_t t0, int64_t t1) {
      thread_local std::vector<float> work;
      for (int64_t t = t0; t < t1; ++t) {
        const int h = static_cast<int>(t / blocks);
        const int64_t i0 = (t % blocks) * kQueryBlock;
        const int64_t i1 = std::min(shape.query_len, i0 + kQueryBlock);
        AttendBlock(shape, q, ldq, keys, out, ldo, h, i0, i1, work);
      }
    });
    return;
  }
  // A decode step: the window's keys one by one (W dot products per head).
  const int head_dim = shape.head_dim;
  const int64_t t_len = shape.query_len, w = shape.window;
  const float scale = ScoreScale(shape);
  pool.ParallelFor(shape.num_heads * t_len, 4, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> scores;
    thread_local std::vector<const float*> values;
    scores.resize(static_cast<size_t>(w));
    values.resize(static_cast<size_t>(w));
    for (int64_t task = i0; task < i1; ++task) {
      const int h = static_cast<int>(task / t_len);
      const int64_t i = task % t_len;
      const int64_t dil = shape.dilations[h];
      const int64_t kv = static_cast<int64_t>(h / shape.kv_group) * head_dim;
      const int64_t self = shape.memory_len + i;  // the query's key index
      const float* qh = q + i * ldq + h * head_dim;
      // Keys self, self − dil, … (at most W of them, none before the stored window).
      int64_t n = 0;
      for (int64_t r = 0; r < w && self - r * dil >= 0; ++r, ++n) {
        int64_t j = self - r * dil;
        for (const KvSpan& span : keys) {
          if (j < span.rows) {
            const float* k = span.k + j * span.ld + kv;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; ++d) dot += qh[d] * k[d];
            scores[n] = dot * scale;
            values[n] = span.v + j * span.ld + kv;
            break;
          }
          j -= span.rows;
        }
        const int64_t at = (h * t_len + i) * (shape.memory_len + t_len) + self - r * dil;
        if (shape.prev_scores != nullptr) scores[n] += shape.prev_scores[at];
        if (shape.out_scores != nullptr) shape.out_scores[at] = scores[n];
      }
      SoftCap(scores.data(), n, shape.softcap);
      SoftmaxRow(scores.data(), n);
      float* o = out + i * ldo + h * head_dim;
      for (int d = 0; d < head_dim; ++d) o[d] = 0.0f;
      for (int64_t r = 0; r < n; ++r) {
        for (int d = 0; d < head_dim; ++d) o[d] += scores[r] * values[r][d];
      }
    }
  });
}

}  // namespace mnemo::kernels
