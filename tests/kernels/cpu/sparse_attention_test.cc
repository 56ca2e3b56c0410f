// kernels/cpu/sparse_attention: the dilated sliding window against a naive double-precision
// attention under the pattern's explicit mask, for segments (blocked BLAS path) and single
// queries (decode path); a window covering everything is plain causal attention; keys split over
// several spans (a wrapped ring) change nothing.
#include "kernels/cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::kernels {
namespace {

struct Case {
  int64_t window;
  std::vector<int64_t> dilations;  // per head
  int64_t memory_len, query_len;
};

// Naive: for every head and query, the allowed set built as an explicit mask over all keys.
std::vector<float> Naive(const Case& c, int dh, const std::vector<float>& q,
                         const std::vector<float>& k, const std::vector<float>& v) {
  const int heads = static_cast<int>(c.dilations.size());
  const int64_t w = heads * dh, keys = c.memory_len + c.query_len;
  std::vector<float> out(static_cast<size_t>(c.query_len * w));
  for (int h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < c.query_len; ++i) {
      const int64_t self = c.memory_len + i;
      std::vector<double> score(static_cast<size_t>(keys), -INFINITY);
      double max = -INFINITY;
      for (int64_t j = 0; j < keys; ++j) {
        const int64_t back = self - j;
        const bool allowed =
            back >= 0 && back % c.dilations[h] == 0 && back / c.dilations[h] < c.window;
        if (!allowed) continue;
        double dot = 0;
        for (int d = 0; d < dh; ++d) dot += double(q[i * w + h * dh + d]) * k[j * w + h * dh + d];
        score[j] = dot / std::sqrt(double(dh));
        max = std::max(max, score[j]);
      }
      double sum = 0;
      for (double& s : score) sum += (s = std::isinf(s) ? 0.0 : std::exp(s - max));
      for (int d = 0; d < dh; ++d) {
        double o = 0;
        for (int64_t j = 0; j < keys; ++j) o += score[j] / sum * v[j * w + h * dh + d];
        out[i * w + h * dh + d] = static_cast<float>(o);
      }
    }
  }
  return out;
}

TEST(SlidingWindowAttentionTest, MatchesTheExplicitMask) {
  const int dh = 8;
  const std::vector<Case> cases = {
      {1, {1, 1}, 5, 4},     // itself only
      {4, {1, 1}, 10, 7},    // plain window, memory + segment
      {3, {2, 2}, 9, 6},     // dilated
      {3, {1, 3}, 12, 5},    // per-head dilation
      {100, {1, 1}, 6, 9},   // covers everything: plain causal attention
      {5, {2, 1}, 0, 12},    // no memory yet
      {8, {1, 2}, 20, 150},  // several 64-query blocks
      {3, {1, 2}, 7, 1},     // decode steps (one query: per-head products)
      {1, {1, 1}, 0, 1},     // a first decode step
      {4, {3, 3}, 20, 1},    // a dilated decode step across the ring's spans
      {100, {1, 2}, 13, 1},  // a decode step seeing every (dilated) stored key
      {6, {2, 2}, 1, 1},     // a dilated window that has seen one position
  };
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  for (const Case& c : cases) {
    const int heads = static_cast<int>(c.dilations.size());
    const int64_t w = heads * dh, keys = c.memory_len + c.query_len;
    std::vector<float> q(static_cast<size_t>(c.query_len * w)), k(static_cast<size_t>(keys * w)),
        v(static_cast<size_t>(keys * w));
    for (float& x : q) x = dist(rng);
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    // Keys split as a wrapped ring would present them: two memory spans, then the segment.
    const int64_t first = c.memory_len / 2;
    std::vector<KvSpan> spans;
    if (first > 0) spans.push_back({k.data(), v.data(), w, first});
    if (c.memory_len > first) {
      spans.push_back({k.data() + first * w, v.data() + first * w, w, c.memory_len - first});
    }
    spans.push_back({k.data() + c.memory_len * w, v.data() + c.memory_len * w, w, c.query_len});
    std::vector<float> out(q.size(), std::nanf(""));
    const SlidingWindowShape shape{heads,        dh,       c.query_len,
                                   c.memory_len, c.window, c.dilations.data()};
    SlidingWindowAttention(shape, q.data(), w, spans, out.data(), w, ThreadPool::Default());
    EXPECT_TRUE(test::NearRelative(out, Naive(c, dh, q, k, v), 1e-5))
        << "window " << c.window << " memory " << c.memory_len;
  }
}

// Gemma-2's scores: a given scale and a soft cap (cap·tanh(s / cap)) before the softmax, on the
// segment (BLAS) path and the decode path, against a double-precision loop.
TEST(SlidingWindowAttentionTest, ScaledAndSoftCappedScores) {
  const int dh = 8, heads = 2;
  const int64_t w = heads * dh, window = 5;
  const double scale = 0.7, cap = 2.0;
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 2.0f);  // large scores: the cap bites
  for (const auto& [memory_len, query_len] :
       std::vector<std::pair<int64_t, int64_t>>{{7, 70}, {9, 1}}) {
    const int64_t keys = memory_len + query_len;
    std::vector<float> q(static_cast<size_t>(query_len * w)), k(static_cast<size_t>(keys * w)),
        v(static_cast<size_t>(keys * w));
    for (float& x : q) x = dist(rng);
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    std::vector<float> want(q.size());
    for (int h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < query_len; ++i) {
        const int64_t self = memory_len + i;
        std::vector<double> p;
        double max = -INFINITY;
        for (int64_t j = std::max<int64_t>(0, self - window + 1); j <= self; ++j) {
          double dot = 0;
          for (int d = 0; d < dh; ++d) dot += double(q[i * w + h * dh + d]) * k[j * w + h * dh + d];
          p.push_back(cap * std::tanh(dot * scale / cap));
          max = std::max(max, p.back());
        }
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - max));
        for (int d = 0; d < dh; ++d) {
          double o = 0;
          for (size_t r = 0; r < p.size(); ++r) {
            o += p[r] / sum * v[(std::max<int64_t>(0, self - window + 1) + r) * w + h * dh + d];
          }
          want[i * w + h * dh + d] = static_cast<float>(o);
        }
      }
    }
    const std::vector<int64_t> dilations(heads, 1);
    std::vector<KvSpan> spans = {
        {k.data(), v.data(), w, memory_len},
        {k.data() + memory_len * w, v.data() + memory_len * w, w, query_len}};
    SlidingWindowShape shape{heads, dh, query_len, memory_len, window, dilations.data()};
    shape.scale = static_cast<float>(scale);
    shape.softcap = static_cast<float>(cap);
    std::vector<float> out(q.size(), std::nanf(""));
    SlidingWindowAttention(shape, q.data(), w, spans, out.data(), w, ThreadPool::Default());
    EXPECT_TRUE(test::NearRelative(out, want, 1e-5)) << "queries " << query_len;
  }
}

// Grouped-query attention: H query heads over H / g key/value heads equal plain attention over
// keys and values whose every head is repeated g times (Hugging Face's repeat_kv).
TEST(SlidingWindowAttentionTest, GroupedQueriesReadTheirKeyHead) {
  const int dh = 8;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  for (const int group : {2, 3, 6}) {
    for (const auto& [memory_len, query_len] :
         std::vector<std::pair<int64_t, int64_t>>{{9, 70}, {6, 1}, {0, 5}}) {
      const int heads = 6, kv_heads = heads / group;
      const std::vector<int64_t> dilations(heads, 1);
      const Case c{4, dilations, memory_len, query_len};
      const int64_t w = heads * dh, kw = kv_heads * dh, keys = memory_len + query_len;
      std::vector<float> q(static_cast<size_t>(query_len * w)), k(static_cast<size_t>(keys * kw)),
          v(static_cast<size_t>(keys * kw));
      for (float& x : q) x = dist(rng);
      for (float& x : k) x = dist(rng);
      for (float& x : v) x = dist(rng);
      std::vector<float> k_rep(static_cast<size_t>(keys * w)), v_rep(k_rep.size());
      for (int64_t j = 0; j < keys; ++j) {
        for (int h = 0; h < heads; ++h) {
          for (int d = 0; d < dh; ++d) {
            k_rep[j * w + h * dh + d] = k[j * kw + (h / group) * dh + d];
            v_rep[j * w + h * dh + d] = v[j * kw + (h / group) * dh + d];
          }
        }
      }
      std::vector<KvSpan> spans;
      if (memory_len > 0) spans.push_back({k.data(), v.data(), kw, memory_len});
      spans.push_back({k.data() + memory_len * kw, v.data() + memory_len * kw, kw, query_len});
      std::vector<float> out(q.size(), std::nanf(""));
      SlidingWindowShape shape{heads, dh, query_len, memory_len, c.window, dilations.data()};
      shape.kv_group = group;
      SlidingWindowAttention(shape, q.data(), w, spans, out.data(), w, ThreadPool::Default());
      EXPECT_TRUE(test::NearRelative(out, Naive(c, dh, q, k_rep, v_rep), 1e-5))
          << "group " << group << " memory " << memory_len << " queries " << query_len;
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels
