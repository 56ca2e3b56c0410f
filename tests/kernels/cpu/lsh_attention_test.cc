// kernels/cpu/lsh_attention: hashing and key normalisation against their formulas; the attention
// against a naive double-precision implementation that sorts every query's window explicitly,
// over a sweep of shapes with keys and buckets split over differently cut spans; one chunk with
// a full history is causal attention without self; causality; splitting a segment over calls
// changes nothing; more hash rounds approach full attention.
#include "kernels/cpu/lsh_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::kernels {
namespace {

// All positions of one problem: raw shared query/key rows, their normalised keys, values and
// buckets. Position p of the call is row p; the queries are the last T rows.
struct Problem {
  LshShape shape;
  int64_t n = 0;               // M + T
  int64_t w = 0;               // H·d_h
  int64_t ldb = 0;             // bucket row stride (H·R + 1: not packed, on purpose)
  std::vector<float> x, k, v;  // [n, w]
  std::vector<int32_t> b;      // [n, ldb]
};

Problem MakeProblem(const LshShape& shape, std::mt19937& rng) {
  Problem pr;
  pr.shape = shape;
  pr.n = shape.memory_len + shape.query_len;
  pr.w = static_cast<int64_t>(shape.num_heads) * shape.head_dim;
  pr.ldb = static_cast<int64_t>(shape.num_heads) * shape.n_hashes + 1;
  std::normal_distribution<float> dist;
  std::uniform_int_distribution<int32_t> bucket(0, shape.n_buckets - 1);
  pr.x.resize(static_cast<size_t>(pr.n * pr.w));
  pr.v.resize(pr.x.size());
  pr.k.resize(pr.x.size());
  pr.b.assign(static_cast<size_t>(pr.n * pr.ldb), -1);
  for (float& e : pr.x) e = dist(rng);
  for (float& e : pr.v) e = dist(rng);
  for (int64_t i = 0; i < pr.n; ++i) {
    for (int64_t c = 0; c < pr.ldb - 1; ++c) pr.b[i * pr.ldb + c] = bucket(rng);
  }
  LshNormalizeKeys(shape.num_heads, shape.head_dim, pr.n, pr.x.data(), pr.w, pr.k.data(), pr.w);
  return pr;
}

// Keeps copies of the spans' rows alive: every span gets its own buffer, as a ring would.
struct Spans {
  std::vector<std::vector<float>> kbuf, vbuf;
  std::vector<std::vector<int32_t>> bbuf;
  std::vector<KvSpan> keys;
  std::vector<BucketSpan> buckets;
};

// Rows [first, last) of pr split at the given cuts (positions relative to `first`).
Spans MakeSpans(const Problem& pr, int64_t first, int64_t last, std::vector<int64_t> key_cuts,
                std::vector<int64_t> bucket_cuts) {
  Spans s;
  auto ranges = [&](std::vector<int64_t> cuts) {
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(last - first);
    std::vector<std::pair<int64_t, int64_t>> out;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const int64_t lo = std::clamp<int64_t>(cuts[i], 0, last - first);
      const int64_t hi = std::clamp<int64_t>(cuts[i + 1], lo, last - first);
      if (lo < hi) out.emplace_back(first + lo, first + hi);
    }
    return out;
  };
  for (auto [lo, hi] : ranges(std::move(key_cuts))) {
    s.kbuf.emplace_back(pr.k.begin() + lo * pr.w, pr.k.begin() + hi * pr.w);
    s.vbuf.emplace_back(pr.v.begin() + lo * pr.w, pr.v.begin() + hi * pr.w);
  }
  for (auto [lo, hi] : ranges(std::move(bucket_cuts))) {
    s.bbuf.emplace_back(pr.b.begin() + lo * pr.ldb, pr.b.begin() + hi * pr.ldb);
  }
  for (size_t i = 0; i < s.kbuf.size(); ++i) {
    s.keys.push_back(
        {s.kbuf[i].data(), s.vbuf[i].data(), pr.w, static_cast<int64_t>(s.kbuf[i].size()) / pr.w});
  }
  for (const auto& bb : s.bbuf) {
    s.buckets.push_back({bb.data(), pr.ldb, static_cast<int64_t>(bb.size()) / pr.ldb});
  }
  return s;
}

// The kernel over the whole problem: keys cut like a wrapped ring (two memory runs, then the
// segment), buckets cut elsewhere.
std::vector<float> RunKernel(const Problem& pr, ThreadPool& pool = ThreadPool::Default()) {
  const int64_t m = pr.shape.memory_len;
  const Spans s = MakeSpans(pr, 0, pr.n, {m / 2, m}, {m / 3, m / 3 + 2});
  std::vector<float> out(static_cast<size_t>(pr.shape.query_len * pr.w), std::nanf(""));
  LshAttention(pr.shape, pr.x.data() + m * pr.w, pr.w, s.keys, s.buckets, out.data(), pr.w, pool);
  return out;
}

// The definition, literally: for every head and query, sort its window by (bucket, position) in
// every round, take the own and previous chunk of ranks, merge, attend in double precision.
std::vector<float> Naive(const Problem& pr) {
  const LshShape& sh = pr.shape;
  const int dh = sh.head_dim;
  std::vector<float> out(static_cast<size_t>(sh.query_len * pr.w));
  for (int h = 0; h < sh.num_heads; ++h) {
    for (int64_t i = 0; i < sh.query_len; ++i) {
      const int64_t p = sh.memory_len + i;
      std::vector<int64_t> window;
      for (int64_t j = std::max<int64_t>(0, p - sh.history + 1); j <= p; ++j) window.push_back(j);
      std::vector<int64_t> cand;
      for (int r = 0; r < sh.n_hashes; ++r) {
        auto bucket = [&](int64_t j) { return pr.b[j * pr.ldb + h * sh.n_hashes + r]; };
        std::vector<int64_t> u = window;
        std::sort(u.begin(), u.end(), [&](int64_t a, int64_t b) {
          return std::make_pair(bucket(a), a) < std::make_pair(bucket(b), b);
        });
        const int64_t s = std::find(u.begin(), u.end(), p) - u.begin();
        const int64_t size = static_cast<int64_t>(u.size());
        for (int64_t q = (s / sh.chunk_len - 1) * sh.chunk_len;
             q < (s / sh.chunk_len + 1) * sh.chunk_len; ++q) {
          if (q >= 0 && q < size) cand.push_back(u[q]);
        }
      }
      std::sort(cand.begin(), cand.end());
      cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
      cand.erase(std::remove(cand.begin(), cand.end(), p), cand.end());
      float* o = out.data() + i * pr.w + h * dh;
      if (cand.empty()) {
        for (int d = 0; d < dh; ++d) o[d] = pr.v[p * pr.w + h * dh + d];
        continue;
      }
      std::vector<double> logit;
      double max = -INFINITY;
      for (int64_t j : cand) {
        double dot = 0;
        for (int d = 0; d < dh; ++d) {
          dot += double(pr.x[p * pr.w + h * dh + d]) * pr.k[j * pr.w + h * dh + d];
        }
        logit.push_back(dot);
        max = std::max(max, dot);
      }
      double sum = 0;
      for (double& l : logit) sum += (l = std::exp(l - max));
      for (int d = 0; d < dh; ++d) {
        double acc = 0;
        for (size_t t = 0; t < cand.size(); ++t) {
          acc += logit[t] / sum * pr.v[cand[t] * pr.w + h * dh + d];
        }
        o[d] = static_cast<float>(acc);
      }
    }
  }
  return out;
}

// Causal softmax attention over every earlier position (itself only at position 0).
std::vector<float> FullAttentionWithoutSelf(const Problem& pr) {
  const LshShape& sh = pr.shape;
  const int dh = sh.head_dim;
  std::vector<float> out(static_cast<size_t>(sh.query_len * pr.w));
  for (int h = 0; h < sh.num_heads; ++h) {
    for (int64_t i = 0; i < sh.query_len; ++i) {
      const int64_t p = sh.memory_len + i;
      float* o = out.data() + i * pr.w + h * dh;
      if (p == 0) {
        for (int d = 0; d < dh; ++d) o[d] = pr.v[h * dh + d];
        continue;
      }
      std::vector<double> logit(static_cast<size_t>(p));
      double max = -INFINITY;
      for (int64_t j = 0; j < p; ++j) {
        double dot = 0;
        for (int d = 0; d < dh; ++d) {
          dot += double(pr.x[p * pr.w + h * dh + d]) * pr.k[j * pr.w + h * dh + d];
        }
        max = std::max(max, logit[j] = dot);
      }
      double sum = 0;
      for (double& l : logit) sum += (l = std::exp(l - max));
      for (int d = 0; d < dh; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < p; ++j) acc += logit[j] / sum * pr.v[j * pr.w + h * dh + d];
        o[d] = static_cast<float>(acc);
      }
    }
  }
  return out;
}

std::vector<float> RandomRotations(const LshShape& sh, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> rot(static_cast<size_t>(sh.num_heads) * sh.head_dim * sh.n_hashes *
                         (sh.n_buckets / 2));
  for (float& e : rot) e = dist(rng);
  return rot;
}

// Argmax of [y, −y] in double, the first maximum on ties; also returns the two largest values.
int32_t NaiveBucket(const LshShape& sh, const float* xh, const float* rot, int h, int r,
                    double* top2_gap) {
  const int64_t half = sh.n_buckets / 2;
  std::vector<double> y(static_cast<size_t>(half), 0.0);
  for (int d = 0; d < sh.head_dim; ++d) {
    for (int64_t k = 0; k < half; ++k) {
      y[k] += double(xh[d]) * rot[((int64_t(h) * sh.head_dim + d) * sh.n_hashes + r) * half + k];
    }
  }
  std::vector<double> all(y);
  for (double e : y) all.push_back(-e);
  const auto best = std::max_element(all.begin(), all.end()) - all.begin();
  std::vector<double> sorted = all;
  std::sort(sorted.rbegin(), sorted.rend());
  if (top2_gap != nullptr) *top2_gap = sorted[0] - sorted[1];
  return static_cast<int32_t>(best);
}

TEST(LshHashTest, MatchesTheNaiveArgmax) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist;
  for (auto [heads, dh, rounds, nb] :
       {std::tuple{1, 8, 1, 2}, {2, 16, 3, 4}, {3, 64, 4, 16}, {2, 8, 2, 64}}) {
    const LshShape sh{heads, dh, rounds, nb, 4, 16, 0, 0};
    const int64_t rows = 37, ldx = int64_t(heads) * dh + 3, ldb = int64_t(heads) * rounds + 2;
    std::vector<float> x(static_cast<size_t>(rows * ldx));
    for (float& e : x) e = dist(rng);
    const std::vector<float> rot = RandomRotations(sh, rng);
    std::vector<int32_t> b(static_cast<size_t>(rows * ldb), -7);
    LshHash(sh, rows, x.data(), ldx, rot.data(), b.data(), ldb);
    // One row at a time (the decode path) gives the same buckets.
    std::vector<int32_t> single(static_cast<size_t>(ldb), -7);
    for (int64_t i = 0; i < rows; ++i) {
      LshHash(sh, 1, x.data() + i * ldx, ldx, rot.data(), single.data(), ldb);
      for (int h = 0; h < heads; ++h) {
        for (int r = 0; r < rounds; ++r) {
          double gap = 0;
          const int32_t want = NaiveBucket(sh, x.data() + i * ldx + h * dh, rot.data(), h, r, &gap);
          const int32_t got = b[i * ldb + h * rounds + r];
          // Float rounding may only flip a near-tie.
          if (gap > 1e-4) {
            EXPECT_EQ(got, want) << "row " << i << " head " << h << " round " << r;
          }
          EXPECT_EQ(single[h * rounds + r], got);
        }
        EXPECT_EQ(b[i * ldb + heads * rounds], -7);  // padding untouched
      }
    }
  }
}

// Hugging Face's factorised hash (num_buckets a list), written from its definition in double:
// each factor f takes the next f/2 rotation columns of the round, argmax of [y, −y] there is a
// digit in [0, f), and the digits combine little-endian.
int32_t NaiveFactorisedBucket(const std::vector<int>& factors, int head_dim, int rounds,
                              const float* xh, const float* rot, int h, int r, double* min_gap) {
  int columns = 0;
  for (int f : factors) columns += f / 2;
  int32_t bucket = 0, place = 1, offset = 0;
  *min_gap = 1e30;
  for (int f : factors) {
    std::vector<double> all;
    for (int k = 0; k < f / 2; ++k) {
      double y = 0;
      for (int d = 0; d < head_dim; ++d) {
        y += double(xh[d]) * rot[((int64_t(h) * head_dim + d) * rounds + r) * columns + offset + k];
      }
      all.push_back(y);
    }
    for (int k = 0; k < f / 2; ++k) all.push_back(-all[k]);
    const auto best = std::max_element(all.begin(), all.end()) - all.begin();
    std::vector<double> sorted = all;
    std::sort(sorted.rbegin(), sorted.rend());
    *min_gap = std::min(*min_gap, sorted[0] - sorted[1]);
    bucket += place * static_cast<int32_t>(best);
    place *= f;
    offset += f / 2;
  }
  return bucket;
}

TEST(LshHashTest, FactorisedBucketsCombineEachFactorsArgmax) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  for (const std::vector<int>& factors :
       std::vector<std::vector<int>>{{64, 128}, {2, 4, 6}, {8}, {4, 2, 2, 2}}) {
    const int heads = 2, dh = 16, rounds = 3;
    LshShape sh{heads, dh, rounds, 1, 4, 16, 0, 0};
    sh.factors.count = static_cast<int>(factors.size());
    int columns = 0;
    for (size_t i = 0; i < factors.size(); ++i) {
      sh.factors.sizes[i] = factors[i];
      sh.n_buckets *= factors[i];
      columns += factors[i] / 2;
    }
    ASSERT_EQ(LshRotationColumns(sh.factors, sh.n_buckets), columns);
    const int64_t rows = 41, ldx = int64_t(heads) * dh, ldb = int64_t(heads) * rounds;
    std::vector<float> x(static_cast<size_t>(rows * ldx));
    for (float& e : x) e = dist(rng);
    std::vector<float> rot(static_cast<size_t>(heads) * dh * rounds * columns);
    for (float& e : rot) e = dist(rng);
    std::vector<int32_t> b(static_cast<size_t>(rows * ldb), -7);
    LshHash(sh, rows, x.data(), ldx, rot.data(), b.data(), ldb);
    int checked = 0;
    std::set<int32_t> seen;
    for (int64_t i = 0; i < rows; ++i) {
      for (int h = 0; h < heads; ++h) {
        for (int r = 0; r < rounds; ++r) {
          double gap = 0;
          const int32_t want = NaiveFactorisedBucket(
              factors, dh, rounds, x.data() + i * ldx + h * dh, rot.data(), h, r, &gap);
          const int32_t got = b[i * ldb + h * rounds + r];
          ASSERT_GE(got, 0);
          ASSERT_LT(got, sh.n_buckets);
          seen.insert(got);
          if (gap > 1e-4) {
            ++checked;
            EXPECT_EQ(got, want) << "row " << i << " head " << h << " round " << r;
          }
        }
      }
    }
    EXPECT_GT(checked, rows * ldb * 9 / 10);
    // Every factor's digit varies: the buckets are not confined to the first factor's range.
    if (factors.size() > 1) {
      EXPECT_GT(*seen.rbegin(), factors[0]);
    }
  }
}

TEST(LshHashTest, TiesPickTheFirstMaximum) {
  // Integers, so every summation order gives the exact same y. d_h = 2, nb = 8 (4 rotations):
  // rotation columns 1 and 2 are equal; column 3 is their negation.
  const LshShape sh{1, 2, 1, 8, 1, 1, 0, 0};
  const std::vector<float> rot = {0, 1, 1, -1,   // d = 0
                                  1, 2, 2, -2};  // d = 1
  struct Row {
    float x0, x1;
    int32_t bucket;
  };
  const std::vector<Row> rows = {
      {1, 0, 1},   // [y, −y] = [0, 1, 1, −1, −0, −1, −1, 1]: 1 at 1, 2 and 7: the first
      {-1, 0, 3},  // [0, −1, −1, 1, −0, 1, 1, −1]: y3 = 1 comes before −y1 = −y2 = 1
      {0, 0, 0},   // all zero: index 0 (−0 is not greater than 0)
      {0, -1, 3},  // [−1, −2, −2, 2, 1, 2, 2, −2]: the first 2 is y3
  };
  for (const Row& row : rows) {
    const float x[2] = {row.x0, row.x1};
    int32_t b = -1;
    LshHash(sh, 1, x, 2, rot.data(), &b, 1);
    EXPECT_EQ(b, row.bucket) << row.x0 << "," << row.x1;
    EXPECT_EQ(NaiveBucket(sh, x, rot.data(), 0, 0, nullptr), row.bucket);
  }
  // Only the negated half holds the maximum, four times over.
  const std::vector<float> rot2 = {1, 1, 1, 1, 0, 0, 0, 0};
  const float x[2] = {-2, 5};
  int32_t b = -1;
  LshHash(sh, 1, x, 2, rot2.data(), &b, 1);
  EXPECT_EQ(b, 4);  // y = [−2, −2, −2, −2]: −y ties at 2 four times, the first is 4
}

TEST(LshNormalizeKeysTest, MatchesTheFormula) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  const int heads = 3, dh = 16;
  const int64_t rows = 9, ldx = heads * dh + 5, ldk = heads * dh + 1;
  std::vector<float> x(static_cast<size_t>(rows * ldx));
  for (float& e : x) e = 3.0f * dist(rng);
  std::fill(x.begin() + 2 * ldx + dh, x.begin() + 2 * ldx + 2 * dh, 0.0f);  // a zero head
  std::vector<float> k(static_cast<size_t>(rows * ldk));
  LshNormalizeKeys(heads, dh, rows, x.data(), ldx, k.data(), ldk);
  std::vector<float> got, want;
  for (int64_t i = 0; i < rows; ++i) {
    for (int h = 0; h < heads; ++h) {
      double ms = 0;
      for (int d = 0; d < dh; ++d) ms += double(x[i * ldx + h * dh + d]) * x[i * ldx + h * dh + d];
      ms /= dh;
      for (int d = 0; d < dh; ++d) {
        want.push_back(
            static_cast<float>(x[i * ldx + h * dh + d] / std::sqrt(ms + 1e-6) / std::sqrt(dh)));
        got.push_back(k[i * ldk + h * dh + d]);
      }
    }
  }
  EXPECT_TRUE(test::NearRelative(got, want, 1e-6));
  // In place (k aliasing x) gives the same.
  LshNormalizeKeys(heads, dh, rows, x.data(), ldx, x.data(), ldx);
  std::vector<float> in_place;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < heads * dh; ++c) in_place.push_back(x[i * ldx + c]);
  }
  EXPECT_EQ(in_place, got);
}

TEST(LshAttentionTest, MatchesTheNaiveDefinition) {
  std::mt19937 rng(7);
  const int heads_set[] = {1, 2, 3};
  const int dh_set[] = {8, 16, 64};
  const int rounds_set[] = {1, 2, 4};
  const int nb_set[] = {2, 4, 16};
  const int64_t chunk_set[] = {1, 3, 8};
  const int64_t history_set[] = {1, 2, 7, 100000};
  const int64_t memory_set[] = {0, 5, 40};
  const int64_t query_set[] = {1, 9, 64};
  // Every (chunk, history, memory, query) combination, with the other sizes drawn at random.
  int cases = 0;
  for (int64_t c : chunk_set) {
    for (int64_t hist : history_set) {
      for (int64_t m : memory_set) {
        for (int64_t t : query_set) {
          auto pick = [&](const auto& set) {
            return set[std::uniform_int_distribution<size_t>(0, std::size(set) - 1)(rng)];
          };
          const LshShape sh{
              pick(heads_set), pick(dh_set), pick(rounds_set), pick(nb_set), c, hist, t, m};
          const Problem pr = MakeProblem(sh, rng);
          EXPECT_TRUE(test::NearRelative(RunKernel(pr), Naive(pr), 1e-5))
              << "H " << sh.num_heads << " d_h " << sh.head_dim << " R " << sh.n_hashes << " nb "
              << sh.n_buckets << " c " << c << " history " << hist << " M " << m << " T " << t;
          ++cases;
        }
      }
    }
  }
  // Every (H, d_h, R, nb) combination, with the other sizes drawn at random.
  for (int heads : heads_set) {
    for (int dh : dh_set) {
      for (int rounds : rounds_set) {
        for (int nb : nb_set) {
          auto pick = [&](const auto& set) {
            return set[std::uniform_int_distribution<size_t>(0, std::size(set) - 1)(rng)];
          };
          const LshShape sh{
              heads,           dh, rounds, nb, pick(chunk_set), pick(history_set), pick(query_set),
              pick(memory_set)};
          const Problem pr = MakeProblem(sh, rng);
          EXPECT_TRUE(test::NearRelative(RunKernel(pr), Naive(pr), 1e-5))
              << "H " << heads << " d_h " << dh << " R " << rounds << " nb " << nb << " c "
              << sh.chunk_len << " history " << sh.history << " M " << sh.memory_len << " T "
              << sh.query_len;
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 108 + 81);
}

TEST(LshAttentionTest, ManyQueryBlocksMatchTheNaiveDefinition) {
  // Long segments are split into (head, query block) tasks: blocks start inside the stream with
  // windows reaching back into the previous block and into the stored positions.
  std::mt19937 rng(8);
  ThreadPool pool(4);
  for (int64_t hist : {int64_t{1}, int64_t{37}, int64_t{300}, int64_t{5000}}) {
    const LshShape sh{2, 8, 2, 8, 5, hist, 1100, std::min<int64_t>(hist - 1, 250)};
    const Problem pr = MakeProblem(sh, rng);
    EXPECT_TRUE(test::NearRelative(RunKernel(pr, pool), Naive(pr), 1e-5)) << "history " << hist;
  }
}

TEST(LshAttentionTest, OneChunkAndFullHistoryIsCausalAttentionWithoutSelf) {
  std::mt19937 rng(9);
  for (auto [m, t] : {std::pair<int64_t, int64_t>{0, 30}, {12, 20}, {25, 1}, {0, 1}}) {
    const LshShape sh{2, 16, 2, 4, /*chunk_len=*/m + t, /*history=*/m + t, t, m};
    const Problem pr = MakeProblem(sh, rng);
    EXPECT_TRUE(test::NearRelative(RunKernel(pr), FullAttentionWithoutSelf(pr), 1e-5))
        << "M " << m << " T " << t;
  }
}

TEST(LshAttentionTest, IsCausal) {
  std::mt19937 rng(10);
  std::normal_distribution<float> dist;
  for (int64_t hist : {int64_t{6}, int64_t{1000}}) {
    const LshShape sh{2, 8, 3, 4, 2, hist, 40, 5};
    Problem pr = MakeProblem(sh, rng);
    const std::vector<float> before = RunKernel(pr);
    // Change everything about the positions from M + 17 on.
    const int64_t cut = sh.memory_len + 17;
    for (int64_t i = cut * pr.w; i < pr.n * pr.w; ++i) {
      pr.x[i] = dist(rng);
      pr.v[i] = dist(rng);
    }
    LshNormalizeKeys(sh.num_heads, sh.head_dim, pr.n - cut, pr.x.data() + cut * pr.w, pr.w,
                     pr.k.data() + cut * pr.w, pr.w);
    for (int64_t i = cut * pr.ldb; i < pr.n * pr.ldb; ++i) {
      if (pr.b[i] >= 0) pr.b[i] = (pr.b[i] + 1 + static_cast<int32_t>(i % 3)) % sh.n_buckets;
    }
    const std::vector<float> after = RunKernel(pr);
    const auto earlier = static_cast<std::ptrdiff_t>(17 * pr.w);
    EXPECT_TRUE(std::equal(before.begin(), before.begin() + earlier, after.begin()));
    EXPECT_FALSE(std::equal(before.begin() + earlier, before.end(), after.begin() + earlier));
  }
}

TEST(LshAttentionTest, SplittingTheSegmentOverCallsChangesNothing) {
  std::mt19937 rng(12);
  for (int64_t hist : {int64_t{1}, int64_t{9}, int64_t{100}}) {
    for (int64_t step : {int64_t{1}, int64_t{7}}) {
      const int64_t total = 50;
      const LshShape sh{2, 16, 3, 8, 3, hist, total, 0};
      const Problem pr = MakeProblem(sh, rng);
      const std::vector<float> whole = RunKernel(pr);
      std::vector<float> pieces(whole.size(), std::nanf(""));
      for (int64_t p = 0; p < total; p += step) {
        const int64_t t = std::min(step, total - p);
        // The caller keeps the last history − 1 positions as the stored ones.
        const int64_t m = std::min(p, hist - 1);
        LshShape call = sh;
        call.memory_len = m;
        call.query_len = t;
        const Spans s = MakeSpans(pr, p - m, p + t, {m / 2, m}, {1});
        LshAttention(call, pr.x.data() + p * pr.w, pr.w, s.keys, s.buckets,
                     pieces.data() + p * pr.w, pr.w, ThreadPool::Default());
      }
      EXPECT_TRUE(test::NearRelative(pieces, whole, 1e-6))
          << "history " << hist << " step " << step;
    }
  }
}

TEST(LshAttentionTest, MoreRoundsApproachFullAttention) {
  // Clustered vectors: attention mass stays within a cluster, and each round finds a random part
  // of it, so the union over more rounds misses less of it.
  std::mt19937 rng(13);
  std::normal_distribution<float> dist;
  const int heads = 2, dh = 16, clusters = 6;
  const int64_t t = 240;
  std::vector<float> centers(static_cast<size_t>(clusters * heads * dh));
  for (float& e : centers) e = 2.0f * dist(rng);
  std::vector<double> errors;
  Problem base;
  for (int rounds : {1, 2, 4, 8, 16}) {
    const LshShape sh{heads, dh, rounds, 8, 4, 100000, t, 0};
    if (rounds == 1) {
      base = MakeProblem(sh, rng);
      std::uniform_int_distribution<int> which(0, clusters - 1);
      for (int64_t i = 0; i < t; ++i) {
        const int cl = which(rng);
        for (int64_t c = 0; c < base.w; ++c) {
          base.x[i * base.w + c] = centers[cl * base.w + c] + 0.5f * dist(rng);
        }
      }
      LshNormalizeKeys(heads, dh, t, base.x.data(), base.w, base.k.data(), base.w);
    }
    Problem pr = base;
    pr.shape = sh;
    pr.ldb = int64_t(heads) * rounds + 1;
    pr.b.assign(static_cast<size_t>(t * pr.ldb), -1);
    const std::vector<float> rot = RandomRotations(sh, rng);
    LshHash(sh, t, pr.x.data(), pr.w, rot.data(), pr.b.data(), pr.ldb);
    const std::vector<float> got = RunKernel(pr), want = FullAttentionWithoutSelf(pr);
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) err += std::abs(got[i] - want[i]);
    errors.push_back(err / static_cast<double>(got.size()));
  }
  std::printf("mean |LSH − full| for 1, 2, 4, 8, 16 rounds:");
  for (double e : errors) std::printf(" %.4f", e);
  std::printf("\n");
  EXPECT_LT(errors.back(), 0.5 * errors.front());
  for (size_t i = 1; i < errors.size(); ++i) {
    EXPECT_LT(errors[i], errors[i - 1] * 1.1 + 1e-3) << "rounds " << (1 << i);
  }
}

// Timing only (no assertion): ./mnemo_engine_tests --gtest_also_run_disabled_tests
// --gtest_filter='*LshTiming*'.
TEST(LshAttentionTest, DISABLED_LshTiming) {
  std::mt19937 rng(14);
  const LshShape sh{4, 64, 4, 64, 64, 100000, 16384, 0};
  Problem pr = MakeProblem(sh, rng);
  const std::vector<float> rot = RandomRotations(sh, rng);
  auto t0 = std::chrono::steady_clock::now();
  LshHash(sh, pr.n, pr.x.data(), pr.w, rot.data(), pr.b.data(), pr.ldb);
  auto t1 = std::chrono::steady_clock::now();
  const std::vector<float> out = RunKernel(pr);
  auto t2 = std::chrono::steady_clock::now();
  std::printf("N=T=%lld H=4 d_h=64 R=4 nb=64 c=64, %d threads: hash %.1f ms, attention %.1f ms\n",
              static_cast<long long>(sh.query_len), ThreadPool::Default().num_threads(),
              std::chrono::duration<double, std::milli>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t2 - t1).count());
  // Decode: one query over 4095 stored positions.
  LshShape step = sh;
  step.history = 4096;
  step.memory_len = 4095;
  step.query_len = 1;
  const Spans s = MakeSpans(pr, 0, 4096, {2000, 4095}, {4095});
  std::vector<float> o(static_cast<size_t>(pr.w));
  const int reps = 200;
  auto t3 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    LshAttention(step, pr.x.data() + 4095 * pr.w, pr.w, s.keys, s.buckets, o.data(), pr.w,
                 ThreadPool::Default());
  }
  auto t4 = std::chrono::steady_clock::now();
  std::printf("decode, 4095 stored: %.1f us per call\n",
              std::chrono::duration<double, std::micro>(t4 - t3).count() / reps);
  EXPECT_EQ(out.size(), static_cast<size_t>(sh.query_len * pr.w));
}

}  // namespace
}  // namespace mnemo::kernels
