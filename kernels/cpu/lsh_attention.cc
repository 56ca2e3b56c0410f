// Reformer LSH attention on the CPU (lsh_attention.h). Work is split into (head, query block)
// tasks. A task sorts its block's window W (the union of its queries' windows) by (bucket,
// position) once per round (counting sort), then walks its queries in position order keeping, per
// round, a Fenwick tree over that sorted order that marks the positions of the current query's
// window: the query's rank is a prefix count, and the candidate ranks around it are found by
// walking the marked entries (or, where the walk would be long, by tree descents). A block of one
// query (decode) needs neither: bucket counts over its window give every rank in O(|W| + nb).
#include "kernels/cpu/lsh_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/half_linear.h"

namespace mnemo::kernels {
namespace {

// Queries per task at least: each task pays O(R · (|W| + nb)) to sort and index its window, with
// |W| up to history + block, so blocks stay large and their number bounded by the thread count
// (never by T), which keeps the total sorting work O(N) per thread.
constexpr int64_t kMinBlock = 256;
// Tasks per thread to aim for when splitting the queries: finer tasks even out head counts that
// do not divide evenly, and ParallelFor hands them out in chunks to whichever thread is free.
constexpr int64_t kTasksPerThread = 4;

// Calls fn(span, first row inside the span, first position, count) for every bucket span's share
// of the positions [begin, end), in order (as ForEachKeyRange does for keys).
template <typename Fn>
void ForEachBucketRange(const std::vector<BucketSpan>& spans, int64_t begin, int64_t end, Fn&& fn) {
  int64_t base = 0;
  for (const BucketSpan& span : spans) {
    const int64_t lo = std::max(base, begin), hi = std::min(base + span.rows, end);
    if (lo < hi) fn(span, lo - base, lo, hi - lo);
    base += span.rows;
  }
}

// A Fenwick tree (binary indexed tree) of 0/1 counts over sorted indices 0 … n − 1, stored
// 1-based in tree[0 … n] (tree[0] unused).
class Fenwick {
 public:
  Fenwick(int64_t* tree, int64_t n) : tree_(tree), n_(n) {
    top_ = 1;
    while (top_ * 2 <= n_) top_ *= 2;
  }

  // Builds the tree in O(n) from tree[1 … n] holding the plain counts.
  void BuildInPlace() {
    for (int64_t i = 1; i <= n_; ++i) {
      const int64_t parent = i + (i & -i);
      if (parent <= n_) tree_[parent] += tree_[i];
    }
  }

  void Add(int64_t index, int64_t delta) {
    for (int64_t i = index + 1; i <= n_; i += i & -i) tree_[i] += delta;
  }

  // Number of marked indices ≤ index.
  int64_t CountUpTo(int64_t index) const {
    int64_t sum = 0;
    for (int64_t i = index + 1; i > 0; i -= i & -i) sum += tree_[i];
    return sum;
  }

  // The sorted index of the k-th marked entry (0-based; k < the number marked).
  int64_t Select(int64_t k) const {
    int64_t pos = 0, rem = k + 1;
    for (int64_t step = top_; step > 0; step /= 2) {
      if (pos + step <= n_ && tree_[pos + step] < rem) {
        pos += step;
        rem -= tree_[pos];
      }
    }
    return pos;
  }

 private:
  int64_t* tree_;
  int64_t n_;
  int64_t top_;  // the largest power of two ≤ n
};

// Scratch of one task (thread_local: reused across tasks and calls).
struct Scratch {
  std::vector<int32_t> bucket;     // [|W|]: buckets of the window's positions in one round
  std::vector<int64_t> counts;     // [nb + 1]: counting sort / bucket ranks
  std::vector<int64_t> next;       // [nb]: next rank per bucket (single-query path)
  std::vector<int64_t> keys;       // [|W|]: comparison sort when nb is large against |W|
  std::vector<int64_t> sorted;     // [R, |W|]: window offsets in (bucket, position) order
  std::vector<int64_t> where;      // [R, |W|]: sorted index of each window offset
  std::vector<int64_t> tree;       // [R, |W| + 1]: the rounds' Fenwick trees
  std::vector<uint8_t> mark;       // [R, |W|]: whether a sorted index is in the current window
  std::vector<int64_t> seen;       // [|W|]: the last query that took each offset as candidate
  std::vector<int64_t> cand;       // candidate positions of one query
  std::vector<float> scores;       // their logits, then weights
  std::vector<const float*> vals;  // their value rows
  std::vector<float> widened;      // [candidates, 2·d_h]: 16-bit history rows' keys and values
  std::vector<Fenwick> trees;      // [R] over `tree`
};

// Forward steps a walk over the sorted order may take per rank still wanted before the ranks
// left are found by Fenwick descents instead (positions outside the window are skipped).
constexpr int64_t kWalkSteps = 4;

// Sorts the window offsets 0 … n − 1 by (bucket, offset): a stable counting sort when the bucket
// range is small against n, else a comparison sort of bucket·n + offset.
void SortWindow(const int32_t* bucket, int64_t n, int n_buckets, Scratch& s, int64_t* sorted,
                int64_t* where) {
  if (n_buckets <= 2 * n) {
    s.counts.assign(static_cast<size_t>(n_buckets) + 1, 0);
    for (int64_t o = 0; o < n; ++o) ++s.counts[bucket[o] + 1];
    for (int b = 0; b < n_buckets; ++b) s.counts[b + 1] += s.counts[b];
    for (int64_t o = 0; o < n; ++o) {
      const int64_t idx = s.counts[bucket[o]]++;
      sorted[idx] = o;
      where[o] = idx;
    }
    return;
  }
  s.keys.resize(static_cast<size_t>(n));
  for (int64_t o = 0; o < n; ++o) s.keys[o] = bucket[o] * n + o;
  std::sort(s.keys.begin(), s.keys.end());
  for (int64_t idx = 0; idx < n; ++idx) {
    sorted[idx] = s.keys[idx] % n;
    where[sorted[idx]] = idx;
  }
}

// One round for a block of one query, the last offset n − 1 of a window that is exactly its
// U(p): its rank and the candidates' come from bucket counts, in O(n + nb) without sorting.
template <typename Add>
void SingleQueryRound(const int32_t* bucket, int64_t n, int n_buckets, int64_t c, Scratch& s,
                      Add&& add) {
  s.counts.assign(static_cast<size_t>(n_buckets) + 1, 0);
  int64_t* first = s.counts.data();  // first[b] … first[b + 1] − 1: the ranks of bucket b
  for (int64_t o = 0; o < n; ++o) ++first[bucket[o] + 1];
  for (int b = 0; b < n_buckets; ++b) first[b + 1] += first[b];
  const int64_t rank = first[bucket[n - 1] + 1] - 1;  // the query is the last of its bucket
  const int64_t lo = std::max<int64_t>(0, (rank / c - 1) * c);
  const int64_t hi = std::min(n, (rank / c + 1) * c);
  // The wanted ranks lie in the buckets [b_lo, b_lo + span]; one unsigned compare (predictable:
  // most buckets are outside) skips the others.
  const int64_t b_lo = std::upper_bound(first + 1, first + n_buckets + 1, lo) - (first + 1);
  const int64_t b_hi = std::lower_bound(first, first + n_buckets + 1, hi) - first - 1;
  const auto span = static_cast<uint64_t>(b_hi - b_lo);
  s.next.assign(s.counts.begin(), s.counts.end() - 1);
  int64_t* next = s.next.data();
  for (int64_t o = 0; o < n; ++o) {
    const int32_t b = bucket[o];
    if (static_cast<uint64_t>(b - b_lo) > span) continue;
    const int64_t k = next[b]++;
    if (k >= lo && k < hi) add(o);
  }
}

// out[d_h] = head h's value of position j in the key spans (widened from a 16-bit history).
inline void CopyValue(const std::vector<KvSpan>& keys, int64_t j, int h, int head_dim, float* out) {
  ForEachKeyRange(keys, j, j + 1, [&](const KvSpan& span, int64_t r, int64_t, int64_t) {
    const int64_t at = r * span.ld + static_cast<int64_t>(h) * head_dim;
    if (span.type == WeightType::kF32) {
      std::copy(span.v + at, span.v + at + head_dim, out);
    } else {
      WidenRow(span.v16 + at, span.type, 1.0f, out, head_dim);
    }
  });
}

// Queries [i0, i1) of head h.
void AttendBlock(const LshShape& shape, const float* x, int64_t ldx,
                 const std::vector<KvSpan>& keys, const std::vector<BucketSpan>& buckets,
                 float* out, int64_t ldo, int h, int64_t i0, int64_t i1, Scratch& s) {
  const int head_dim = shape.head_dim, rounds = shape.n_hashes;
  const int64_t hist = shape.history, c = shape.chunk_len;
  const int64_t p0 = shape.memory_len + i0, p1 = shape.memory_len + i1;
  const int64_t w0 = std::max<int64_t>(0, p0 - hist + 1), n = p1 - w0;  // W = [w0, p1)
  const bool single = i1 - i0 == 1;  // W is the one query's window: no sorting, no Fenwick

  auto gather = [&](int r) {  // s.bucket[o] = bucket of position w0 + o in round r
    const int64_t col = static_cast<int64_t>(h) * rounds + r;
    ForEachBucketRange(buckets, w0, p1,
                       [&](const BucketSpan& span, int64_t row, int64_t j, int64_t count) {
                         for (int64_t t = 0; t < count; ++t) {
                           s.bucket[j - w0 + t] = span.buckets[(row + t) * span.ld + col];
                         }
                       });
  };
  s.bucket.resize(static_cast<size_t>(n));
  s.seen.assign(static_cast<size_t>(n), -1);
  int64_t p = p0;  // the query being collected
  // Takes window offset o as a candidate of p, once; p itself is left out (it is attended only
  // when nothing else is).
  auto add = [&](int64_t o) {
    if (s.seen[o] == p || w0 + o == p) return;
    s.seen[o] = p;
    s.cand.push_back(w0 + o);
  };

  std::vector<Fenwick>& trees = s.trees;
  trees.clear();
  if (!single) {
    s.sorted.resize(static_cast<size_t>(rounds * n));
    s.where.resize(static_cast<size_t>(rounds * n));
    s.tree.assign(static_cast<size_t>(rounds * (n + 1)), 0);
    s.mark.assign(static_cast<size_t>(rounds * n), 0);
    for (int r = 0; r < rounds; ++r) {
      gather(r);
      int64_t* where = s.where.data() + r * n;
      SortWindow(s.bucket.data(), n, shape.n_buckets, s, s.sorted.data() + r * n, where);
      // Before the first query, the window holds the positions [w0, p0) (all of W before it).
      int64_t* tree = s.tree.data() + r * (n + 1);
      uint8_t* mark = s.mark.data() + r * n;
      for (int64_t o = 0; o < p0 - w0; ++o) tree[where[o] + 1] = mark[where[o]] = 1;
      trees.emplace_back(tree, n);
      trees.back().BuildInPlace();
    }
  }

  for (; p < p1; ++p) {
    const int64_t op = p - w0, size = std::min(p + 1, hist);  // |U(p)|
    s.cand.clear();
    for (int r = 0; r < rounds; ++r) {
      if (single) {
        gather(r);
        SingleQueryRound(s.bucket.data(), n, shape.n_buckets, c, s, add);
        continue;
      }
      const int64_t* sorted = s.sorted.data() + r * n;
      const int64_t* where = s.where.data() + r * n;
      uint8_t* mark = s.mark.data() + r * n;
      Fenwick& tree = trees[static_cast<size_t>(r)];
      if (p - hist >= w0) {  // leaves the window
        const int64_t gone = where[p - hist - w0];
        tree.Add(gone, -1);
        mark[gone] = 0;
      }
      const int64_t self = where[op];
      tree.Add(self, 1);
      mark[self] = 1;
      const int64_t rank = tree.CountUpTo(self) - 1;
      const int64_t lo = std::max<int64_t>(0, (rank / c - 1) * c);
      const int64_t hi = std::min(size, (rank / c + 1) * c);
      // The ranks after and before p's: walk the sorted order from p's index, skipping indices
      // outside the window, while that stays cheap; descend the tree for the ranks left.
      int64_t k = rank + 1, budget = kWalkSteps * (hi - k);
      for (int64_t idx = self + 1; k < hi && budget > 0; ++idx, --budget) {
        if (mark[idx]) {
          ++k;
          add(sorted[idx]);
        }
      }
      for (; k < hi; ++k) add(sorted[tree.Select(k)]);
      k = rank - 1;
      budget = kWalkSteps * (k + 1 - lo);
      for (int64_t idx = self - 1; k >= lo && budget > 0; --idx, --budget) {
        if (mark[idx]) {
          --k;
          add(sorted[idx]);
        }
      }
      for (; k >= lo; --k) add(sorted[tree.Select(k)]);
    }
    const int64_t i = p - shape.memory_len;
    float* o = out + i * ldo + static_cast<int64_t>(h) * head_dim;
    if (s.cand.empty()) {
      CopyValue(keys, p, h, head_dim, o);
      continue;
    }
    // Position order: the same summation order however the positions were split into calls.
    std::sort(s.cand.begin(), s.cand.end());
    const int64_t m = static_cast<int64_t>(s.cand.size());
    s.scores.resize(static_cast<size_t>(m));
    s.vals.resize(static_cast<size_t>(m));
    s.widened.resize(static_cast<size_t>(2 * m * head_dim));
    const float* q = x + i * ldx + static_cast<int64_t>(h) * head_dim;
    // Candidates are increasing, so each span is visited once, in order.
    int64_t next = 0;
    ForEachKeyRange(keys, s.cand.front(), s.cand.back() + 1,
                    [&](const KvSpan& span, int64_t row, int64_t j, int64_t count) {
                      for (; next < m && s.cand[next] < j + count; ++next) {
                        const int64_t at =
                            (row + s.cand[next] - j) * span.ld + static_cast<int64_t>(h) * head_dim;
                        const float *k, *v;
                        if (span.type == WeightType::kF32) {
                          k = span.k + at;
                          v = span.v + at;
                        } else {  // a 16-bit history
                          float* kw = s.widened.data() + 2 * next * head_dim;
                          WidenRow(span.k16 + at, span.type, 1.0f, kw, head_dim);
                          WidenRow(span.v16 + at, span.type, 1.0f, kw + head_dim, head_dim);
                          k = kw;
                          v = kw + head_dim;
                        }
                        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                        for (int d = 0; d < head_dim; ++d) dot += q[d] * k[d];
                        s.scores[next] = dot;
                        s.vals[next] = v;
                      }
                    });
    // Max-subtracted softmax in float32; the weighted sum of values accumulates in float32.
    SoftmaxRow(s.scores.data(), m);
    std::fill(o, o + head_dim, 0.0f);
    for (int64_t t = 0; t < m; ++t) {
      const float wgt = s.scores[t];
      const float* v = s.vals[t];
#pragma omp simd
      for (int d = 0; d < head_dim; ++d) o[d] += wgt * v[d];
    }
  }
}

}  // namespace

void LshHash(const LshShape& shape, int64_t rows, const float* x, int64_t ldx,
             const float* rotations, int32_t* buckets, int64_t ldb) {
  const int head_dim = shape.head_dim, rounds = shape.n_hashes;
  const LshBucketFactors factors = LshResolvedFactors(shape.factors, shape.n_buckets);
  const int64_t columns = LshRotationColumns(factors, shape.n_buckets);
  const int64_t cols = rounds * columns;  // y per head: [R, C]
  std::vector<float> y(static_cast<size_t>(cols));
  for (int64_t i = 0; i < rows; ++i) {
    for (int h = 0; h < shape.num_heads; ++h) {
      const float* rot = rotations + static_cast<int64_t>(h) * head_dim * cols;  // [d_h, R·C]
      const float* xh = x + i * ldx + static_cast<int64_t>(h) * head_dim;
      // y = x_hᵀ·rot summed in d order, each product rounded before it is added (this file is
      // built without floating-point contraction): the CUDA kernel sums alike, so every backend
      // picks the same buckets even where two projections nearly tie.
      std::fill(y.begin(), y.end(), 0.0f);
      for (int d = 0; d < head_dim; ++d) {
        const float xd = xh[d];
        const float* row = rot + static_cast<int64_t>(d) * cols;
        float* yy = y.data();
#pragma omp simd
        for (int64_t k = 0; k < cols; ++k) yy[k] += xd * row[k];
      }
      int32_t* out = buckets + i * ldb + static_cast<int64_t>(h) * rounds;
      for (int r = 0; r < rounds; ++r) {
        const float* yr = y.data() + r * columns;
        int64_t bucket = 0, place = 1;
        for (int f = 0; f < factors.count; ++f) {
          const int64_t half = factors.sizes[f] / 2;
          // argmax over [y, −y] of this factor's columns; strict comparisons keep the first.
          int64_t best = 0;
          float max = yr[0];
          for (int64_t k = 1; k < half; ++k) {
            if (yr[k] > max) max = yr[best = k];
          }
          for (int64_t k = 0; k < half; ++k) {
            if (-yr[k] > max) {
              max = -yr[k];
              best = half + k;
            }
          }
          bucket += place * best;
          place *= factors.sizes[f];
          yr += half;
        }
        out[r] = static_cast<int32_t>(bucket);
      }
    }
  }
}

void LshNormalizeKeys(int num_heads, int head_dim, int64_t rows, const float* x, int64_t ldx,
                      float* k, int64_t ldk) {
  const float inv_sqrt_dh = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t i = 0; i < rows; ++i) {
    for (int h = 0; h < num_heads; ++h) {
      const float* xh = x + i * ldx + static_cast<int64_t>(h) * head_dim;
      float* kh = k + i * ldk + static_cast<int64_t>(h) * head_dim;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int d = 0; d < head_dim; ++d) sum += xh[d] * xh[d];
      const float scale =
          inv_sqrt_dh / std::sqrt(sum / static_cast<float>(head_dim) + 1e-6f);  // before k = x
      for (int d = 0; d < head_dim; ++d) kh[d] = xh[d] * scale;
    }
  }
}

void LshAttention(const LshShape& shape, const float* x, int64_t ldx,
                  const std::vector<KvSpan>& keys, const std::vector<BucketSpan>& buckets,
                  float* out, int64_t ldo, ThreadPool& pool) {
  const int64_t t_len = shape.query_len, num_heads = shape.num_heads;
  if (t_len <= 0) return;
  const int64_t wanted = (kTasksPerThread * pool.num_threads() + num_heads - 1) / num_heads;
  const int64_t blocks =
      std::max<int64_t>(1, std::min(wanted, (t_len + kMinBlock - 1) / kMinBlock));
  const int64_t per_block = (t_len + blocks - 1) / blocks;
  pool.ParallelFor(num_heads * blocks, 1, [&](int64_t t0, int64_t t1) {
    thread_local Scratch scratch;
    for (int64_t t = t0; t < t1; ++t) {
      const int h = static_cast<int>(t / blocks);
      const int64_t i0 = (t % blocks) * per_block;
      const int64_t i1 = std::min(t_len, i0 + per_block);
      if (i0 < i1) AttendBlock(shape, x, ldx, keys, buckets, out, ldo, h, i0, i1, scratch);
    }
  });
}

}  // namespace mnemo::kernels
