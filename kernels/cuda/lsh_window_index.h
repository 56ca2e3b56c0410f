// The per-query window search of LSH attention (docs/checkpoint-format.md "lsh", "sort":
// "window") in a form every query can run on its own, in parallel: no per-query sort and no sweep.
//
// For one (head, round), let b_0 … b_{n−1} be the buckets of the call's n keys (stored positions,
// then new ones). The query at key index p looks at U(p) = [a, p] with a = max(0, p − Hh + 1),
// sorted by (bucket, index). Everything it needs is a count or a selection over an index range:
//   rank of p in U(p)    = #{j ∈ [a, p) : b_j ≤ b_p}
//   the k-th of U(p)     = (the k-th smallest bucket value b in [a, p], its occurrence o among
//                           that range's b's), whose index is sorted[start(b) + #{j < a: b_j = b} +
//                           o]
// where `sorted` lists the indices by (bucket, index) and start(b) = #{j : b_j < b}. A wavelet
// matrix over the buckets answers each count and selection in O(log nb) rank operations on L =
// ⌈log2 nb⌉ bit vectors, so the round's candidates of a query cost O(c · log nb) and the rank
// test that keeps a candidate found by several rounds once costs O(R · log nb).
//
// The functions are plain C++ (host and device: the CUDA kernels in lsh_attention.cu run them,
// and a CPU test checks them against the definition).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MNEMO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MNEMO_HOST_DEVICE inline
#endif

namespace mnemo::kernels::cuda {

// Bits of a bucket value: the wavelet matrix's level count (nb ≥ 2).
MNEMO_HOST_DEVICE int LshIndexLevels(int n_buckets) {
  int levels = 1;
  while ((1 << levels) < n_buckets) ++levels;
  return levels;
}

// 32-bit words per level for n keys (one spare word, so that rank(n) reads a word).
MNEMO_HOST_DEVICE int64_t LshIndexWords(int64_t n) { return n / 32 + 1; }

MNEMO_HOST_DEVICE int PopCount(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// One (head, round)'s wavelet matrix: level l partitions the previous level's sequence stably by
// bit (L − 1 − l) of the bucket, zeros first. bits[l·words + w] holds the level's bits 32·w …;
// ones[l·words + w] the number of ones before word w; zeros[l] the level's zero count.
struct LshWindowIndex {
  const uint32_t* bits;
  const int32_t* ones;
  const int32_t* zeros;
  const int32_t* sorted;   // [n] key indices by (bucket, index)
  const int32_t* buckets;  // [n] b_j
  int64_t n;
  int64_t words;
  int levels;

  // Ones among the first i entries of level l.
  MNEMO_HOST_DEVICE int64_t Rank1(int l, int64_t i) const {
    const int64_t at = static_cast<int64_t>(l) * words + i / 32;
    const uint32_t below = (uint32_t{1} << (i % 32)) - 1u;
    return ones[at] + PopCount(bits[at] & below);
  }

  // #{j ∈ [x0, x1) : b_j < v}.
  MNEMO_HOST_DEVICE int64_t CountLess(int64_t x0, int64_t x1, int64_t v) const {
    if (v >= (int64_t{1} << levels)) return x1 - x0;
    if (v <= 0 || x0 >= x1) return 0;
    int64_t count = 0;
    for (int l = 0; l < levels; ++l) {
      const int64_t r0 = Rank1(l, x0), r1 = Rank1(l, x1);
      if ((v >> (levels - 1 - l)) & 1) {
        count += (x1 - x0) - (r1 - r0);  // the zeros here are below v
        x0 = zeros[l] + r0;
        x1 = zeros[l] + r1;
      } else {
        x0 -= r0;
        x1 -= r1;
      }
    }
    return count;
  }

  // #{j ∈ [x0, x1) : b_j = v}.
  MNEMO_HOST_DEVICE int64_t CountEqual(int64_t x0, int64_t x1, int64_t v) const {
    if (x0 >= x1 || v < 0 || v >= (int64_t{1} << levels)) return 0;
    for (int l = 0; l < levels; ++l) {
      const int64_t r0 = Rank1(l, x0), r1 = Rank1(l, x1);
      if ((v >> (levels - 1 - l)) & 1) {
        x0 = zeros[l] + r0;
        x1 = zeros[l] + r1;
      } else {
        x0 -= r0;
        x1 -= r1;
      }
    }
    return x1 - x0;
  }

  // Where key index j goes in `sorted` (which the index builds from this: it needs no sort).
  MNEMO_HOST_DEVICE int64_t SortedSlotOf(int64_t j) const {
    const int64_t b = buckets[j];
    return CountLess(0, n, b) + CountEqual(0, j, b);
  }

  // The key index of rank k (0 ≤ k < x1 − x0) among [x0, x1) sorted by (bucket, index).
  MNEMO_HOST_DEVICE int64_t Select(int64_t x0, int64_t x1, int64_t k) const {
    const int64_t first = x0;
    int64_t v = 0;
    for (int l = 0; l < levels; ++l) {
      const int64_t r0 = Rank1(l, x0), r1 = Rank1(l, x1);
      const int64_t zeros_here = (x1 - x0) - (r1 - r0);
      if (k < zeros_here) {
        x0 -= r0;
        x1 -= r1;
      } else {
        k -= zeros_here;
        v |= int64_t{1} << (levels - 1 - l);
        x0 = zeros[l] + r0;
        x1 = zeros[l] + r1;
      }
    }
    // k is now the occurrence of bucket v within [first, …), in index order.
    return sorted[CountLess(0, n, v) + CountEqual(0, first, v) + k];
  }
};

// One round's view of a query at key index p: its window [a, p] and the candidate ranks.
struct LshRoundWindow {
  int64_t a;     // first key index of U(p)
  int64_t rank;  // p's rank in U(p)
  int64_t lo;    // candidate ranks [lo, hi): p's chunk of c and the one before
  int64_t hi;
};

MNEMO_HOST_DEVICE LshRoundWindow LshQueryWindow(const LshWindowIndex& index, int64_t p,
                                                int64_t history, int64_t chunk_len) {
  LshRoundWindow w;
  w.a = p - history + 1 > 0 ? p - history + 1 : 0;
  w.rank = index.CountLess(w.a, p, static_cast<int64_t>(index.buckets[p]) + 1);
  const int64_t size = p - w.a + 1, chunk = w.rank / chunk_len;
  w.lo = chunk > 0 ? (chunk - 1) * chunk_len : 0;
  w.hi = (chunk + 1) * chunk_len < size ? (chunk + 1) * chunk_len : size;
  return w;
}

// Whether key index j (in [a, p]) is among the round's candidates of the query at p.
MNEMO_HOST_DEVICE bool LshIsCandidate(const LshWindowIndex& index, const LshRoundWindow& w,
                                      int64_t p, int64_t j) {
  const int64_t b = index.buckets[j];
  const int64_t rank = index.CountLess(w.a, p + 1, b) + index.CountEqual(w.a, j, b);
  return rank >= w.lo && rank < w.hi;
}

}  // namespace mnemo::kernels::cuda
