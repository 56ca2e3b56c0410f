// Reformer LSH attention with the "call" sort on the CPU (lsh_call_attention.h); the oracle of
// that sort in kernels/cuda/lsh_attention.cu.
#include "kernels/cpu/lsh_call_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {
namespace {

constexpr float kSelfLogit = -1e5f;  // Hugging Face's self_mask_value (float32)

// Softmax over `logits` (n ≥ 1) applied to `values`: out[d] = Σ p_j v_j[d]; returns the
// log-sum-exp of the logits.
float Attend(const std::vector<float>& logits, const std::vector<const float*>& values,
             int head_dim, float* out) {
  float max = -INFINITY;
  for (float l : logits) max = std::max(max, l);
  double sum = 0.0;
  std::fill(out, out + head_dim, 0.0f);
  for (size_t j = 0; j < logits.size(); ++j) {
    const float w = std::exp(logits[j] - max);
    sum += w;
    for (int d = 0; d < head_dim; ++d) out[d] += w * values[j][d];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int d = 0; d < head_dim; ++d) out[d] *= inv;
  return max + static_cast<float>(std::log(sum));
}

}  // namespace

void LshCallAttention(const LshShape& s, const float* x, int64_t ldx,
                      const std::vector<KvSpan>& keys, const std::vector<BucketSpan>& buckets,
                      float* out, int64_t ldo, ThreadPool& pool) {
  const int head_dim = s.head_dim, rounds = s.n_hashes;
  const int64_t m = s.memory_len, t_len = s.query_len, n = m + t_len;
  const int64_t c = s.chunk_len, slots = rounds * n;
  const int64_t chunks = (slots + c - 1) / c;
  // Every key's row (all heads) and bucket row, in key order. A 16-bit history is widened once
  // for the call: this sort reads every key's row.
  std::vector<const float*> krows(static_cast<size_t>(n)), vrows(krows.size());
  std::vector<const int32_t*> brows(krows.size());
  thread_local std::vector<float> widened;  // the 16-bit spans' keys, then values, widened
  size_t need = 0;
  for (const KvSpan& span : keys) {
    if (span.type != WeightType::kF32) need += static_cast<size_t>(2 * span.rows * span.ld);
  }
  if (widened.size() < need) widened.resize(need);
  float* next_widened = widened.data();
  ForEachKeyRange(keys, 0, n, [&](const KvSpan& span, int64_t row, int64_t j, int64_t count) {
    const float *k, *v;
    if (span.type == WeightType::kF32) {
      k = span.k + row * span.ld;
      v = span.v + row * span.ld;
    } else {
      float* kw = next_widened;
      next_widened += 2 * count * span.ld;
      WidenRows(span.k16 + row * span.ld, span.ld, span.type, count, span.ld, kw, span.ld);
      WidenRows(span.v16 + row * span.ld, span.ld, span.type, count, span.ld, kw + count * span.ld,
                span.ld);
      k = kw;
      v = kw + count * span.ld;
    }
    for (int64_t r = 0; r < count; ++r) {
      krows[j + r] = k + r * span.ld;
      vrows[j + r] = v + r * span.ld;
    }
  });
  int64_t base = 0;
  for (const BucketSpan& span : buckets) {
    for (int64_t r = 0; r < span.rows && base + r < n; ++r) {
      brows[base + r] = span.buckets + r * span.ld;
    }
    base += span.rows;
  }
  auto dot = [&](const float* a, const float* b) {
    float acc = 0.0f;
    for (int d = 0; d < head_dim; ++d) acc += a[d] * b[d];
    return acc;
  };
  pool.ParallelFor(s.num_heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> logits, lse(static_cast<size_t>(rounds));
    std::vector<const float*> values;
    std::vector<float> partial(static_cast<size_t>(rounds) * head_dim);
    std::vector<int64_t> order, slot_of;
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t col = h * head_dim;
      if (n <= c) {  // Hugging Face's standard path: causal attention over every key
        for (int64_t i = 0; i < t_len; ++i) {
          const int64_t p = m + i;
          const float* q = x + i * ldx + col;
          logits.clear();
          values.clear();
          for (int64_t j = 0; j <= p; ++j) {
            logits.push_back(j == p ? kSelfLogit : dot(q, krows[j] + col));
            values.push_back(vrows[j] + col);
          }
          Attend(logits, values, head_dim, out + i * ldo + col);
        }
        continue;
      }
      // Sort the R·N slots by (bucket + r·nb, r·N + key); remember where each (round, key) went.
      order.resize(static_cast<size_t>(slots));
      std::iota(order.begin(), order.end(), int64_t{0});
      auto bucket_of = [&](int64_t flat) {
        const int64_t r = flat / n, j = flat % n;
        return static_cast<int64_t>(brows[j][h * rounds + r]) + r * s.n_buckets;
      };
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const int64_t ba = bucket_of(a), bb = bucket_of(b);
        return ba != bb ? ba < bb : a < b;
      });
      slot_of.resize(order.size());
      for (int64_t slot = 0; slot < slots; ++slot) slot_of[order[slot]] = slot;
      for (int64_t i = 0; i < t_len; ++i) {
        const int64_t p = m + i;
        const float* q = x + i * ldx + col;
        for (int r = 0; r < rounds; ++r) {
          const int64_t chunk = slot_of[r * n + p] / c;
          logits.clear();
          values.clear();
          for (const int64_t k : {(chunk - 1 + chunks) % chunks, chunk}) {
            for (int64_t slot = k * c; slot < std::min((k + 1) * c, slots); ++slot) {
              const int64_t j = order[slot] % n;
              if (j > p) continue;  // causal
              logits.push_back(j == p ? kSelfLogit : dot(q, krows[j] + col));
              values.push_back(vrows[j] + col);
            }
          }
          lse[r] = Attend(logits, values, head_dim, partial.data() + r * head_dim);
        }
        // Rounds weighted by the softmax of their log-sum-exps.
        const float max = *std::max_element(lse.begin(), lse.end());
        double total = 0.0;
        for (int r = 0; r < rounds; ++r) total += std::exp(lse[r] - max);
        float* o = out + i * ldo + col;
        std::fill(o, o + head_dim, 0.0f);
        for (int r = 0; r < rounds; ++r) {
          const float w = static_cast<float>(std::exp(lse[r] - max) / total);
          for (int d = 0; d < head_dim; ++d) o[d] += w * partial[r * head_dim + d];
        }
      }
    }
  });
}

}  // namespace mnemo::kernels
