// Memory-compressed attention on the CPU (memory_compressed_attention.h): one task per (query,
// head) scores its compressed range and its block's range with BLAS products on strided head
// slices, takes one softmax over both, and sums the values the same way.
#include "kernels/cpu/memory_compressed_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

int64_t CompressedBlocksBefore(const MemoryCompressedShape& s) {
  return std::min(s.position / s.compression_rate, s.cmem_len);
}

int64_t OpenBlockRows(const MemoryCompressedShape& s) { return s.position % s.compression_rate; }

int64_t BlocksCompleted(const MemoryCompressedShape& s) {
  return (OpenBlockRows(s) + s.query_len) / s.compression_rate;
}

void MemoryCompressedAttention(const MemoryCompressedShape& s, const float* q, int64_t ldq,
                               const std::vector<KvSpan>& compressed,
                               const std::vector<KvSpan>& raw, float* out, int64_t ldo,
                               ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t c = s.compression_rate, d = s.head_dim;
  // Compressed index 0 is block first_block; raw index 0 is position first_raw.
  const int64_t first_block = s.position / c - CompressedBlocksBefore(s);
  const int64_t first_raw = s.position - OpenBlockRows(s);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scores;
    const auto most = static_cast<size_t>(s.cmem_len + c);
    if (scores.size() < most) scores.resize(most);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / s.num_heads;
      const int h = static_cast<int>(task % s.num_heads);
      const int64_t p = s.position + i, block = p / c;
      const int64_t cbegin = std::max<int64_t>(block - s.cmem_len, 0) - first_block;
      const int64_t cend = block - first_block;
      const int64_t rbegin = block * c - first_raw, rend = p - first_raw + 1;
      const float* qh = q + i * ldq + static_cast<int64_t>(h) * d;
      const int64_t nc = cend - cbegin, n = nc + (rend - rbegin);
      // Scores: compressed rows first, then the block's own keys.
      const auto score = [&](const std::vector<KvSpan>& spans, int64_t begin, int64_t end,
                             float* dst) {
        ForEachKeyRange(spans, begin, end,
                        [&](const KvSpan& span, int64_t row, int64_t key, int64_t count) {
                          const HeadRows k = HeadSlice(span, false, row, count, h, d);
                          Gemv(count, d, k.data, k.ld, qh, 0.0f, dst + (key - begin));
                        });
      };
      score(compressed, cbegin, cend, scores.data());
      score(raw, rbegin, rend, scores.data() + nc);
      for (int64_t j = 0; j < n; ++j) scores[j] *= scale;
      SoftmaxRow(scores.data(), n);
      float* o = out + i * ldo + static_cast<int64_t>(h) * d;
      std::fill(o, o + d, 0.0f);
      const auto sum = [&](const std::vector<KvSpan>& spans, int64_t begin, int64_t end,
                           const float* p_begin) {
        ForEachKeyRange(spans, begin, end,
                        [&](const KvSpan& span, int64_t row, int64_t key, int64_t count) {
                          const HeadRows v = HeadSlice(span, true, row, count, h, d);
                          GemvT(count, d, v.data, v.ld, p_begin + (key - begin), 1.0f, o);
                        });
      };
      sum(compressed, cbegin, cend, scores.data());
      sum(raw, rbegin, rend, scores.data() + nc);
    }
  };
  pool.ParallelFor(s.query_len * s.num_heads, 1, run);
}

}  // namespace mnemo::kernels
