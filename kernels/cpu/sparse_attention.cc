// Dilated sliding-window attention on the CPU (sparse_attention.h); the oracle of the window
// kernels in kernels/cuda/sparse_attention.cu.
#include "kernels/cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/half_linear.h"

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
  const int kv_head = h / s.kv_group;
  const int64_t col1 = s.memory_len + i1;  // one past the last key the block sees
  const int64_t col0 = std::max<int64_t>(0, s.memory_len + i0 - (s.window - 1) * dil);
  const int64_t ncols = col1 - col0;
  work.resize(static_cast<size_t>(b * ncols));
  float* scores = work.data();
  ForEachKeyRange(keys, col0, col1, [&](const KvSpan& span, int64_t row, int64_t j, int64_t n) {
    const HeadRows k = HeadSlice(span, /*values=*/false, row, n, kv_head, head_dim);
    GemmNT(b, n, head_dim, ScoreScale(s), q + i0 * ldq + h * head_dim, ldq, k.data, k.ld, 0.0f,
           scores + (j - col0), ncols);
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
    const HeadRows v = HeadSlice(span, /*values=*/true, row, n, kv_head, head_dim);
    GemmNN(b, head_dim, n, 1.0f, scores + (j - col0), ncols, v.data, v.ld, beta,
           out + i0 * ldo + h * head_dim, ldo);
    beta = 1.0f;
  });
}

// A decode step (one query position) for query heads [h0, h0 + g), which read one key/value
// head and share a dilation: the window's keys, `dil` rows apart within each span, are one
// strided matrix per span, so the g heads' scores and outputs are BLAS products that read each
// key and value row once. 16-bit rows (16-bit session memory) are read by each head in turn,
// widened in registers (from the cache after the first head).
void AttendDecode(const SlidingWindowShape& s, const float* q, const std::vector<KvSpan>& keys,
                  float* out, int h0, int g, std::vector<float>& work) {
  const int head_dim = s.head_dim;
  const int64_t dil = s.dilations[h0], self = s.memory_len;
  const int64_t n = std::min(s.window, self / dil + 1);  // keys self, self − dil, …
  const int64_t first = self - (n - 1) * dil;            // the oldest; column c is first + c·dil
  const int64_t kv = static_cast<int64_t>(h0 / s.kv_group) * head_dim;
  work.resize(static_cast<size_t>(g * n));
  float* scores = work.data();
  // fn(span, its first row, that row's column, count) for the window's keys in each span.
  const auto for_each_span = [&](const auto& fn) {
    int64_t base = 0;
    for (const KvSpan& span : keys) {
      const int64_t lo = std::max(base, first), hi = std::min(base + span.rows, self + 1);
      if (lo < hi) {
        const int64_t c0 = (lo - first + dil - 1) / dil;  // the first column at or after lo
        const int64_t count = (hi - 1 - first) / dil - c0 + 1;
        if (count > 0) fn(span, first + c0 * dil - base, c0, count);
      }
      base += span.rows;
    }
  };
  const float* qh = q + static_cast<int64_t>(h0) * head_dim;  // the g heads: rows d_h apart
  const HalfIsa isa = SupportedHalfIsas().front();
  for_each_span([&](const KvSpan& span, int64_t row, int64_t c0, int64_t count) {
    const int64_t ld = span.ld * dil;
    if (span.type != WeightType::kF32) {  // 16-bit rows, widened in registers, per head
      for (int r = 0; r < g; ++r) {
        HalfDotRows(isa, qh + r * head_dim, span.k16 + row * span.ld + kv, ld, span.type, count,
                    head_dim, scores + r * n + c0);
      }
    } else if (g == 1) {
      Gemv(count, head_dim, span.k + row * span.ld + kv, ld, qh, 0.0f, scores + c0);
    } else {
      GemmNT(g, count, head_dim, 1.0f, qh, head_dim, span.k + row * span.ld + kv, ld, 0.0f,
             scores + c0, n);
    }
  });
  const float scale = ScoreScale(s);
  for (int64_t c = 0; c < g * n; ++c) scores[c] *= scale;
  const int64_t keys_total = s.memory_len + s.query_len;
  for (int r = 0; r < g; ++r) {
    float* row = scores + r * n;
    if (s.prev_scores != nullptr || s.out_scores != nullptr) {  // RealFormer
      const int64_t at = static_cast<int64_t>(h0 + r) * keys_total + first;
      for (int64_t c = 0; c < n; ++c) {
        if (s.prev_scores != nullptr) row[c] += s.prev_scores[at + c * dil];
        if (s.out_scores != nullptr) s.out_scores[at + c * dil] = row[c];
      }
    }
    SoftCap(row, n, s.softcap);
    SoftmaxRow(row, n);
  }
  float* o = out + static_cast<int64_t>(h0) * head_dim;  // the g heads' outputs: rows d_h apart
  std::fill(o, o + static_cast<int64_t>(g) * head_dim, 0.0f);
  for_each_span([&](const KvSpan& span, int64_t row, int64_t c0, int64_t count) {
    const int64_t ld = span.ld * dil;
    if (span.type != WeightType::kF32) {
      for (int r = 0; r < g; ++r) {
        HalfRowSum(isa, scores + r * n + c0, span.v16 + row * span.ld + kv, ld, span.type, count,
                   head_dim, o + r * head_dim);
      }
    } else if (g == 1) {
      GemvT(count, head_dim, span.v + row * span.ld + kv, ld, scores + c0, 1.0f, o);
    } else {
      GemmNN(g, head_dim, count, 1.0f, scores + c0, n, span.v + row * span.ld + kv, ld, 1.0f, o,
             head_dim);
    }
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
  if (shape.query_len <= 0) return;
  // A decode step: one task per key/value head and its group of query heads (one head when the
  // group's dilations differ), so each key row is read once for the whole group.
  const int group = std::all_of(shape.dilations, shape.dilations + shape.num_heads,
                                [&](int64_t d) { return d == shape.dilations[0]; })
                        ? shape.kv_group
                        : 1;
  pool.ParallelFor(shape.num_heads / group, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> work;
    for (int64_t t = t0; t < t1; ++t) {
      AttendDecode(shape, q, keys, out, static_cast<int>(t) * group, group, work);
    }
  });
}

}  // namespace mnemo::kernels
