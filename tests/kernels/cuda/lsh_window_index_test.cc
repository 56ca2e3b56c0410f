// kernels/cuda/lsh_window_index.h on the host: the wavelet-matrix counts and selections against
// direct counting, and every query's per-round window, rank and candidates against the
// definition (sort U(p) by (bucket, index), take p's chunk and the one before), over a sweep of
// key counts, bucket counts (powers of two and not), histories and chunk lengths. The CUDA
// kernels run these same functions over an index built on the device.
#include "kernels/cuda/lsh_window_index.h"

#include <algorithm>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::kernels::cuda {
namespace {

// The index of one bucket sequence, built sequentially the way the device builds it level by
// level: bits of the current sequence, their prefix counts, a stable partition.
struct HostIndex {
  std::vector<uint32_t> bits;
  std::vector<int32_t> ones, zeros, sorted, buckets;
  LshWindowIndex view{};

  HostIndex(std::vector<int32_t> b, int n_buckets) : buckets(std::move(b)) {
    const auto n = static_cast<int64_t>(buckets.size());
    const int levels = LshIndexLevels(n_buckets);
    const int64_t words = LshIndexWords(n);
    bits.assign(static_cast<size_t>(levels * words), 0);
    ones.assign(bits.size(), 0);
    zeros.assign(static_cast<size_t>(levels), 0);
    std::vector<int32_t> seq = buckets, next(seq.size());
    for (int l = 0; l < levels; ++l) {
      const int shift = levels - 1 - l;
      uint32_t* lb = bits.data() + l * words;
      int32_t* lo = ones.data() + l * words;
      for (int64_t i = 0; i < n; ++i) {
        if ((seq[i] >> shift) & 1) lb[i / 32] |= uint32_t{1} << (i % 32);
      }
      int32_t total = 0;
      for (int64_t w = 0; w < words; ++w) {
        lo[w] = total;
        total += __builtin_popcount(lb[w]);
      }
      zeros[l] = static_cast<int32_t>(n - total);
      int64_t z = 0, o = zeros[l];
      for (int64_t i = 0; i < n; ++i) next[((seq[i] >> shift) & 1) ? o++ : z++] = seq[i];
      std::swap(seq, next);
    }
    sorted.assign(buckets.size(), -1);
    view = {bits.data(),    ones.data(), zeros.data(), sorted.data(),
            buckets.data(), n,           words,        levels};
    for (int64_t j = 0; j < n; ++j) sorted[view.SortedSlotOf(j)] = static_cast<int32_t>(j);
  }
};

std::vector<int32_t> RandomBuckets(int64_t n, int n_buckets, std::mt19937& rng) {
  // Skewed on purpose: some buckets crowded, many empty.
  std::uniform_int_distribution<int32_t> any(0, n_buckets - 1);
  std::uniform_int_distribution<int32_t> few(0, std::min(n_buckets - 1, 3));
  std::bernoulli_distribution crowd(0.3);
  std::vector<int32_t> b(static_cast<size_t>(n));
  for (int32_t& e : b) e = crowd(rng) ? few(rng) : any(rng);
  return b;
}

TEST(LshWindowIndexTest, CountsAndSelectionsMatchDirectCounting) {
  std::mt19937 rng(7);
  for (auto [n, nb] : std::vector<std::pair<int64_t, int>>{
           {1, 2}, {31, 2}, {32, 3}, {33, 64}, {100, 5}, {257, 1000}, {64, 65536}}) {
    SCOPED_TRACE(testing::Message() << "n " << n << " nb " << nb);
    HostIndex idx(RandomBuckets(n, nb, rng), nb);
    const std::vector<int32_t>& b = idx.buckets;
    // The sorted order is (bucket, index).
    for (int64_t s = 1; s < n; ++s) {
      const int32_t i = idx.sorted[s - 1], j = idx.sorted[s];
      ASSERT_TRUE(std::make_pair(b[i], i) < std::make_pair(b[j], j));
    }
    std::uniform_int_distribution<int64_t> pos(0, n);
    for (int trial = 0; trial < 300; ++trial) {
      int64_t x0 = pos(rng), x1 = pos(rng);
      if (x0 > x1) std::swap(x0, x1);
      const int64_t v = std::uniform_int_distribution<int64_t>(0, nb)(rng);
      int64_t less = 0, equal = 0;
      for (int64_t j = x0; j < x1; ++j) {
        less += b[j] < v;
        equal += b[j] == v;
      }
      ASSERT_EQ(idx.view.CountLess(x0, x1, v), less) << x0 << " " << x1 << " " << v;
      ASSERT_EQ(idx.view.CountEqual(x0, x1, v), equal) << x0 << " " << x1 << " " << v;
      if (x0 == x1) continue;
      std::vector<std::pair<int32_t, int64_t>> range;
      for (int64_t j = x0; j < x1; ++j) range.emplace_back(b[j], j);
      std::sort(range.begin(), range.end());
      for (int64_t k = 0; k < x1 - x0; ++k) {
        ASSERT_EQ(idx.view.Select(x0, x1, k), range[k].second) << x0 << " " << x1 << " " << k;
      }
    }
  }
}

// The definition, for the query at p: U(p) sorted, p's rank, the ranks of its chunk and the one
// before, and the indices there.
std::vector<int64_t> DefinitionCandidates(const std::vector<int32_t>& b, int64_t p, int64_t history,
                                          int64_t c, int64_t* rank) {
  const int64_t a = std::max<int64_t>(0, p - history + 1);
  std::vector<std::pair<int32_t, int64_t>> u;
  for (int64_t j = a; j <= p; ++j) u.emplace_back(b[j], j);
  std::sort(u.begin(), u.end());
  const auto size = static_cast<int64_t>(u.size());
  *rank = std::find(u.begin(), u.end(), std::make_pair(b[p], p)) - u.begin();
  const int64_t lo = std::max<int64_t>(0, (*rank / c - 1) * c);
  const int64_t hi = std::min(size, (*rank / c + 1) * c);
  std::vector<int64_t> out;
  for (int64_t k = lo; k < hi; ++k) out.push_back(u[k].second);
  return out;
}

TEST(LshWindowIndexTest, QueryWindowsAndCandidatesMatchTheDefinition) {
  std::mt19937 rng(11);
  // (keys n, buckets, history, chunk length)
  for (auto [n, nb, history, c] :
       std::vector<std::tuple<int64_t, int, int64_t, int64_t>>{{1, 2, 1, 1},
                                                               {40, 4, 1000, 4},
                                                               {40, 4, 7, 2},
                                                               {150, 6, 64, 8},
                                                               {150, 64, 150, 16},
                                                               {200, 1024, 33, 5},
                                                               {300, 2, 300, 64},
                                                               {129, 8, 1, 3}}) {
    SCOPED_TRACE(testing::Message()
                 << "n " << n << " nb " << nb << " history " << history << " c " << c);
    HostIndex idx(RandomBuckets(n, nb, rng), nb);
    for (int64_t p = 0; p < n; ++p) {
      int64_t rank = 0;
      const std::vector<int64_t> want = DefinitionCandidates(idx.buckets, p, history, c, &rank);
      const LshRoundWindow w = LshQueryWindow(idx.view, p, history, c);
      ASSERT_EQ(w.rank, rank) << "p " << p;
      std::vector<int64_t> got;
      for (int64_t k = w.lo; k < w.hi; ++k) got.push_back(idx.view.Select(w.a, p + 1, k));
      ASSERT_EQ(got, want) << "p " << p;
      // Membership agrees with the list for every index of the window.
      for (int64_t j = w.a; j <= p; ++j) {
        const bool listed = std::find(want.begin(), want.end(), j) != want.end();
        ASSERT_EQ(LshIsCandidate(idx.view, w, p, j), listed) << "p " << p << " j " << j;
      }
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels::cuda
