// kernels/cpu/routing_attention: routing against the nearest unit centroid computed in double;
// the attention against a naive double-precision loop that lists every query's keys from the
// definition (its cluster's keys in its window, itself always), over a sweep of windows, stored
// and new positions and cluster counts, with the keys cut into spans as rings cut them, in
// float32 and 16-bit rings.
#include "kernels/cpu/routing_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "base/dtype.h"
#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

struct Param {
  int heads, head_dim, clusters;
  int64_t history, memory_len, query_len, piece;
};

void Check(const Param& p, WeightType type) {
  SCOPED_TRACE(testing::Message() << "history " << p.history << " M " << p.memory_len << " T "
                                  << p.query_len << " K " << p.clusters << " type "
                                  << static_cast<int>(type));
  const RoutingShape shape{p.heads, p.head_dim, p.clusters, p.history, p.query_len, p.memory_len};
  const int64_t w = static_cast<int64_t>(p.heads) * p.head_dim, n = p.memory_len + p.query_len;
  std::mt19937 rng(static_cast<uint32_t>(p.history * 31 + p.memory_len * 7 + p.query_len));
  std::normal_distribution<float> dist;
  std::vector<float> k(static_cast<size_t>(n * w)), v(k.size()),
      q(static_cast<size_t>(p.query_len * w));
  for (auto* x : {&k, &v, &q}) {
    for (float& e : *x) e = dist(rng);
  }
  // Stored rows hold what a 16-bit ring keeps.
  const DType dtype = type == WeightType::kBF16 ? DType::kBF16 : DType::kF16;
  std::vector<std::vector<uint16_t>> k16, v16;
  std::vector<KvSpan> spans;
  for (int64_t r0 = 0; r0 < p.memory_len; r0 += p.piece) {
    const int64_t rows = std::min(p.piece, p.memory_len - r0);
    const auto at = static_cast<size_t>(r0 * w), count = static_cast<size_t>(rows * w);
    if (type == WeightType::kF32) {
      spans.push_back({k.data() + at, v.data() + at, w, rows});
      continue;
    }
    k16.emplace_back(count);
    v16.emplace_back(count);
    ConvertFromFloat(k.data() + at, dtype, k16.back().data(), count);
    ConvertFromFloat(v.data() + at, dtype, v16.back().data(), count);
    ConvertToFloat(dtype, k16.back().data(), k.data() + at, count);
    ConvertToFloat(dtype, v16.back().data(), v.data() + at, count);
    spans.push_back({nullptr, nullptr, w, rows, k16.back().data(), v16.back().data(), type});
  }
  spans.push_back({k.data() + p.memory_len * w, v.data() + p.memory_len * w, w, p.query_len});
  std::uniform_int_distribution<int32_t> pick(0, p.clusters - 1);
  std::vector<int32_t> key_clusters(static_cast<size_t>(n * p.heads));
  std::vector<int32_t> query_clusters(static_cast<size_t>(p.query_len * p.heads));
  for (int32_t& c : key_clusters) c = pick(rng);
  for (int32_t& c : query_clusters) c = pick(rng);
  std::vector<float> out(q.size(), -1.0f);
  RoutingAttention(shape, q.data(), w, spans, key_clusters.data(), query_clusters.data(),
                   out.data(), w, ThreadPool::Default());
  double worst = 0.0;
  for (int64_t i = 0; i < p.query_len; ++i) {
    const int64_t self = p.memory_len + i;
    for (int h = 0; h < p.heads; ++h) {
      std::vector<int64_t> listed;
      for (int64_t j = std::max<int64_t>(0, self - p.history + 1); j <= self; ++j) {
        if (j == self || key_clusters[j * p.heads + h] == query_clusters[i * p.heads + h]) {
          listed.push_back(j);
        }
      }
      std::vector<double> s(listed.size());
      double top = -1e300, z = 0;
      for (size_t a = 0; a < listed.size(); ++a) {
        double dot = 0;
        for (int e = 0; e < p.head_dim; ++e) {
          dot += double(q[i * w + h * p.head_dim + e]) * k[listed[a] * w + h * p.head_dim + e];
        }
        top = std::max(top, s[a] = dot / std::sqrt(double(p.head_dim)));
      }
      for (double& x : s) z += (x = std::exp(x - top));
      for (int e = 0; e < p.head_dim; ++e) {
        double want = 0;
        for (size_t a = 0; a < listed.size(); ++a) {
          want += s[a] / z * v[listed[a] * w + h * p.head_dim + e];
        }
        worst = std::max(worst, std::abs(want - out[i * w + h * p.head_dim + e]));
      }
    }
  }
  EXPECT_LE(worst, 2e-5);
}

TEST(RoutingAttentionTest, MatchesTheDefinitionKeyByKey) {
  const std::vector<Param> params = {
      {2, 8, 3, 9, 0, 17, 4},    // a first segment longer than the window
      {3, 4, 2, 9, 8, 1, 3},     // decode over a full ring
      {2, 8, 4, 40, 13, 6, 5},   // window beyond everything seen
      {1, 16, 2, 1, 0, 5, 1},    // history 1: itself only
      {4, 8, 5, 16, 15, 20, 2},  // segment and ring both longer than the window's reach
  };
  for (const Param& p : params) {
    for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kF16}) {
      Check(p, type);
    }
  }
}

TEST(RoutingAttentionTest, RoutesToTheNearestUnitCentroid) {
  const RoutingShape shape{3, 8, 5, 4, 0, 0};
  std::mt19937 rng(9);
  std::normal_distribution<float> dist;
  std::vector<float> centroids(static_cast<size_t>(3 * 5 * 8)), x(static_cast<size_t>(7 * 24));
  for (float& e : centroids) e = dist(rng);
  for (float& e : x) e = dist(rng);
  for (int64_t r = 0; r < 15; ++r) {  // to unit norm, as the layer stores them
    double norm = 0;
    for (int e = 0; e < 8; ++e) norm += double(centroids[r * 8 + e]) * centroids[r * 8 + e];
    for (int e = 0; e < 8; ++e) centroids[r * 8 + e] /= static_cast<float>(std::sqrt(norm));
  }
  std::vector<int32_t> clusters(static_cast<size_t>(7 * 4), -1);
  RoutingClusters(shape, 7, x.data(), 24, centroids.data(), clusters.data(), 4);
  for (int64_t i = 0; i < 7; ++i) {
    for (int h = 0; h < 3; ++h) {
      int best = 0;
      double best_dot = -1e300;
      for (int c = 0; c < 5; ++c) {
        double dot = 0;
        for (int e = 0; e < 8; ++e) {
          dot += double(centroids[(h * 5 + c) * 8 + e]) * x[i * 24 + h * 8 + e];
        }
        if (dot > best_dot) best_dot = dot, best = c;
      }
      EXPECT_EQ(clusters[i * 4 + h], best) << "row " << i << " head " << h;
    }
    EXPECT_EQ(clusters[i * 4 + 3], -1) << "the stride's spare column stays untouched";
  }
}

}  // namespace
}  // namespace mnemo::kernels
