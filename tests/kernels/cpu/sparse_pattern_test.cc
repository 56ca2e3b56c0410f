// kernels/cpu/sparse_pattern: every pattern's allowed set against a predicate written from the
// definitions (docs/checkpoint-format.md "Sparse patterns"), and the attention against a naive
// double-precision softmax over an explicit mask, with global positions and tokens, keys split
// as a wrapped ring, and a document fed in one call or in pieces.
#include "kernels/cpu/sparse_pattern.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

// The pattern's predicate, position by position (no enumeration tricks).
bool Allows(const SparsePattern& p, int h, int64_t q, int64_t j) {
  if (j > q || j < 0 || q - j > p.span) return false;
  switch (p.kind) {
    case SparsePatternKind::kWindow:
      return (q - j) % p.dilations[h] == 0 && (q - j) / p.dilations[h] < p.window;
    case SparsePatternKind::kStrided: {
      const uint8_t parts = p.head_components[h];
      return ((parts & 1u) && q - j < p.stride) || ((parts & 2u) && (q - j) % p.stride == 0);
    }
    case SparsePatternKind::kFixed: {
      const uint8_t parts = p.head_components[h];
      return ((parts & 1u) && j / p.block == q / p.block) ||
             ((parts & 2u) && j % p.block >= p.block - p.summary);
    }
    case SparsePatternKind::kBigBird: {
      const int64_t qb = q / p.block, jb = j / p.block;
      if (jb > qb - p.window_blocks) return true;
      const std::vector<int64_t> random = BigBirdRandomBlocks(p, h, qb);
      return std::find(random.begin(), random.end(), jb) != random.end();
    }
  }
  return false;
}

struct PatternCase {
  const char* name;
  SparsePattern pattern;
};

std::vector<PatternCase> Patterns() {
  static const int64_t dil[] = {1, 2, 3};
  static const uint8_t split[] = {1, 2, 3};  // head 0 first, head 1 second, head 2 both
  std::vector<PatternCase> out;
  SparsePattern w;
  w.kind = SparsePatternKind::kWindow;
  w.window = 4;
  w.dilations = dil;
  w.span = 3 * 3;
  out.push_back({"window", w});
  for (int64_t span : {5, 12, 1000}) {
    SparsePattern s;
    s.kind = SparsePatternKind::kStrided;
    s.stride = 3;
    s.span = span;
    s.head_components = split;
    out.push_back({"strided", s});
    SparsePattern f;
    f.kind = SparsePatternKind::kFixed;
    f.block = 4;
    f.summary = 2;
    f.span = span;
    f.head_components = split;
    out.push_back({"fixed", f});
    SparsePattern b;
    b.kind = SparsePatternKind::kBigBird;
    b.block = 3;
    b.window_blocks = 2;
    b.random_blocks = 2;
    b.seed = 11;
    b.span = span;
    out.push_back({"bigbird", b});
  }
  return out;
}

TEST(SparsePatternTest, AllowedPositionsMatchThePredicate) {
  for (const PatternCase& c : Patterns()) {
    for (int h = 0; h < 3; ++h) {
      for (int64_t q = 0; q < 60; ++q) {
        std::vector<int64_t> got;
        AppendAllowedPositions(c.pattern, h, q, got);
        std::vector<int64_t> want;
        for (int64_t j = 0; j <= q; ++j) {
          if (Allows(c.pattern, h, q, j)) want.push_back(j);
        }
        ASSERT_EQ(got, want) << c.name << " span " << c.pattern.span << " head " << h << " q " << q;
      }
    }
  }
}

TEST(SparsePatternTest, BigBirdRandomBlocksAreDistinctEarlierAndSeeded) {
  SparsePattern b;
  b.kind = SparsePatternKind::kBigBird;
  b.block = 4;
  b.window_blocks = 3;
  b.random_blocks = 3;
  b.span = 400;
  b.seed = 5;
  bool seed_matters = false;
  for (int64_t q = 0; q < 120; ++q) {
    const std::vector<int64_t> r = BigBirdRandomBlocks(b, 1, q);
    const int64_t candidates =
        std::max<int64_t>(0, q - b.window_blocks + 1 - std::max<int64_t>(0, q - b.span / 4));
    EXPECT_EQ(static_cast<int64_t>(r.size()), std::min<int64_t>(3, candidates)) << q;
    EXPECT_EQ(std::set<int64_t>(r.begin(), r.end()).size(), r.size());
    for (int64_t k : r) {
      EXPECT_LE(k, q - b.window_blocks);
      EXPECT_GE(k, std::max<int64_t>(0, q - b.span / b.block));
    }
    EXPECT_EQ(r, BigBirdRandomBlocks(b, 1, q));  // a function of (seed, head, block)
    SparsePattern other = b;
    other.seed = 6;
    seed_matters |= BigBirdRandomBlocks(other, 1, q) != r;
  }
  EXPECT_TRUE(seed_matters);
}

struct Stream {
  int heads = 3, dh = 8;
  int64_t n = 0;
  std::vector<float> q, k, v;
  std::vector<uint8_t> global;  // per position
};

Stream MakeStream(int64_t n, uint32_t seed) {
  Stream s;
  s.n = n;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t w = s.heads * s.dh;
  for (auto* t : {&s.q, &s.k, &s.v}) {
    t->resize(static_cast<size_t>(n * w));
    for (float& x : *t) x = normal(rng);
  }
  s.global.assign(static_cast<size_t>(n), 0);
  return s;
}

// Naive: query q sees Allows(…) ∪ (everything within the span when q is global) ∪ the last
// max_global global positions before q.
std::vector<double> Naive(const SparsePattern& p, const Stream& s, int64_t max_global) {
  const int64_t w = s.heads * s.dh;
  std::vector<double> out(static_cast<size_t>(s.n * w), 0.0);
  for (int h = 0; h < s.heads; ++h) {
    for (int64_t q = 0; q < s.n; ++q) {
      std::vector<int64_t> kept;
      for (int64_t j = 0; j < q; ++j) {
        if (s.global[j]) kept.push_back(j);
      }
      if (static_cast<int64_t>(kept.size()) > max_global) {
        kept.erase(kept.begin(), kept.end() - max_global);
      }
      std::vector<int64_t> keys;
      for (int64_t j = 0; j <= q; ++j) {
        const bool in_span = q - j <= p.span;
        const bool seen = s.global[q] ? in_span : Allows(p, h, q, j);
        if (seen || std::find(kept.begin(), kept.end(), j) != kept.end()) keys.push_back(j);
      }
      std::vector<double> score;
      double max = -INFINITY;
      for (int64_t j : keys) {
        double dot = 0;
        for (int d = 0; d < s.dh; ++d) {
          dot += double(s.q[q * w + h * s.dh + d]) * s.k[j * w + h * s.dh + d];
        }
        score.push_back(dot / std::sqrt(double(s.dh)));
        max = std::max(max, score.back());
      }
      double sum = 0;
      for (double& x : score) sum += (x = std::exp(x - max));
      for (size_t r = 0; r < keys.size(); ++r) {
        for (int d = 0; d < s.dh; ++d) {
          out[q * w + h * s.dh + d] += score[r] / sum * s.v[keys[r] * w + h * s.dh + d];
        }
      }
    }
  }
  return out;
}

// Runs the stream through SparsePatternAttention in calls of `piece` positions, keeping a ring of
// the last `span` positions (stored wrapped at an offset) and a store of kept globals, as the
// backend does.
std::vector<float> RunInPieces(const SparsePattern& p, const Stream& s, int64_t max_global,
                               int64_t piece) {
  const int64_t w = s.heads * s.dh;
  std::vector<float> out(static_cast<size_t>(s.n * w));
  std::vector<int64_t> store;  // kept global positions, oldest first
  for (int64_t start = 0; start < s.n; start += piece) {
    const int64_t t = std::min(piece, s.n - start);
    const int64_t m = std::min(p.span, start);
    const int64_t first = start - m;
    // Ring rows [first, start) as two spans (the older half second in memory), then the segment.
    const int64_t split = m / 2;
    std::vector<float> ring_k(static_cast<size_t>(m * w)), ring_v(ring_k.size());
    for (int64_t j = 0; j < m; ++j) {
      const int64_t slot = j < split ? (m - split) + j : j - split;
      std::copy_n(&s.k[(first + j) * w], w, &ring_k[slot * w]);
      std::copy_n(&s.v[(first + j) * w], w, &ring_v[slot * w]);
    }
    std::vector<KvSpan> spans;
    if (split > 0) spans.push_back({&ring_k[(m - split) * w], &ring_v[(m - split) * w], w, split});
    if (m - split > 0) spans.push_back({ring_k.data(), ring_v.data(), w, m - split});
    spans.push_back({&s.k[start * w], &s.v[start * w], w, t});
    GlobalKeys globals;
    globals.k = s.k.data();
    globals.v = s.v.data();
    globals.ld = w;
    globals.positions = store;
    globals.rows = store;  // row = position in the stream arrays
    std::vector<uint8_t> seg_global(s.global.begin() + start, s.global.begin() + start + t);
    SparsePatternShape shape{s.heads, s.dh, t, m, first, max_global};
    SparsePatternAttention(p, shape, &s.q[start * w], w, spans, globals, seg_global,
                           &out[start * w], w, ThreadPool::Default());
    for (int64_t i = 0; i < t; ++i) {
      if (s.global[start + i]) store.push_back(start + i);
    }
    if (static_cast<int64_t>(store.size()) > max_global) {
      store.erase(store.begin(), store.end() - max_global);
    }
  }
  return out;
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << what << " element " << i;
  }
}

TEST(SparsePatternTest, AttentionMatchesNaiveMaskInAnySplit) {
  for (const PatternCase& c : Patterns()) {
    Stream s = MakeStream(50, 3);
    for (int64_t piece : {50, 7, 1}) {
      ExpectClose(RunInPieces(c.pattern, s, 0, piece), Naive(c.pattern, s, 0),
                  std::string(c.name) + " piece " + std::to_string(piece));
    }
  }
}

TEST(SparsePatternTest, GlobalPositionsAreSeenBeyondTheSpanAndSeeEverything) {
  for (const PatternCase& c : Patterns()) {
    Stream s = MakeStream(60, 4);
    for (int64_t j : {0, 1, 9, 31, 32, 47}) s.global[j] = 1;
    for (int64_t max_global : {1, 3, 64}) {
      const std::vector<double> want = Naive(c.pattern, s, max_global);
      for (int64_t piece : {60, 9, 1}) {
        ExpectClose(RunInPieces(c.pattern, s, max_global, piece), want,
                    std::string(c.name) + " globals, piece " + std::to_string(piece));
      }
    }
  }
}

TEST(SparsePatternTest, CoveringSpanAndStrideOneIsCausalAttention) {
  static const uint8_t both[] = {3, 3, 3};
  SparsePattern p;
  p.kind = SparsePatternKind::kStrided;
  p.stride = 1;
  p.span = 1000;
  p.head_components = both;
  Stream s = MakeStream(40, 5);
  const std::vector<float> got = RunInPieces(p, s, 0, 40);
  // Causal attention: every j ≤ q.
  SparsePattern window;
  static const int64_t ones[] = {1, 1, 1};
  window.kind = SparsePatternKind::kWindow;
  window.window = 1000;
  window.dilations = ones;
  window.span = 999;
  ExpectClose(got, Naive(window, s, 0), "stride 1");
}

}  // namespace
}  // namespace mnemo::kernels
