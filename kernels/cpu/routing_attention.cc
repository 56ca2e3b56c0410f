// Routing attention on the CPU (routing_attention.h). A task (query, head) lists the keys of its
// cluster in its window from the cluster ids alone, then scores and sums only those rows.
#include "kernels/cpu/routing_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {

void RoutingClusters(const RoutingShape& s, int64_t rows, const float* x, int64_t ldx,
                     const float* unit_centroids, int32_t* clusters, int64_t ldc) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, k = s.n_clusters;
  thread_local std::vector<float> dots;  // (kept per thread: a decode step allocates nothing)
  dots.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < rows; ++i) {
    for (int h = 0; h < s.num_heads; ++h) {
      Gemv(k, d, unit_centroids + h * k * d, d, x + i * ldx + h * d, 0.0f, dots.data());
      clusters[i * ldc + h] =
          static_cast<int32_t>(std::max_element(dots.begin(), dots.end()) - dots.begin());
    }
  }
}

void RoutingAttention(const RoutingShape& s, const float* q, int64_t ldq,
                      const std::vector<KvSpan>& keys, const int32_t* key_clusters,
                      const int32_t* query_clusters, float* out, int64_t ldo, ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, m = s.memory_len, h_count = s.num_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const auto run = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<int64_t> listed;  // key indices of the task's cluster
    thread_local std::vector<float> scores;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / h_count;
      const int h = static_cast<int>(task % h_count);
      const int64_t self = m + i, first = std::max<int64_t>(0, self - s.history + 1);
      const int32_t cluster = query_clusters[i * h_count + h];
      listed.clear();
      for (int64_t j = first; j < self; ++j) {
        if (key_clusters[j * h_count + h] == cluster) listed.push_back(j);
      }
      listed.push_back(self);  // itself always
      const auto n = static_cast<int64_t>(listed.size());
      if (static_cast<int64_t>(scores.size()) < n) scores.resize(static_cast<size_t>(n));
      const float* qh = q + i * ldq + static_cast<int64_t>(h) * d;
      // Runs of consecutive listed keys are read as one strided block.
      const auto for_runs = [&](bool values, auto&& fn) {
        for (int64_t a = 0; a < n;) {
          int64_t b = a + 1;
          while (b < n && listed[b] == listed[b - 1] + 1) ++b;
          ForEachKeyRange(keys, listed[a], listed[b - 1] + 1,
                          [&](const KvSpan& span, int64_t row, int64_t key, int64_t count) {
                            fn(HeadSlice(span, values, row, count, h, static_cast<int>(d)),
                               a + (key - listed[a]), count);
                          });
          a = b;
        }
      };
      for_runs(false, [&](const HeadRows& k, int64_t at, int64_t count) {
        Gemv(count, d, k.data, k.ld, qh, 0.0f, scores.data() + at);
      });
      for (int64_t j = 0; j < n; ++j) scores[j] *= scale;
      SoftmaxRow(scores.data(), n);
      float* o = out + i * ldo + static_cast<int64_t>(h) * d;
      std::fill(o, o + d, 0.0f);
      for_runs(true, [&](const HeadRows& v, int64_t at, int64_t count) {
        GemvT(count, d, v.data, v.ld, scores.data() + at, 1.0f, o);
      });
    }
  };
  pool.ParallelFor(s.query_len * h_count, 1, run);
}

}  // namespace mnemo::kernels
