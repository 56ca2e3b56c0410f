// BigBird's attention on the CPU (bigbird_attention.h): per (head, query block), the keys and
// values of the blocks it sees are gathered into one contiguous span (padding dropped), then one
// product scores the block's queries, a softmax per row, and one product sums the values.
#include "kernels/cpu/bigbird_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {
namespace {

// The key blocks a block-sparse query block 0 < i < last sees.
void BlocksSeen(const BigBirdShape& s, int64_t blocks, int64_t h, int64_t i, const int32_t* random,
                std::vector<int64_t>& seen) {
  seen.clear();
  for (int64_t j : {int64_t{0}, i - 1, i, i + 1, blocks - 1}) {
    if (std::find(seen.begin(), seen.end(), j) == seen.end()) seen.push_back(j);
  }
  const int32_t* row = random + (h * (blocks - 2) + (i - 1)) * s.num_random;
  for (int64_t t = 0; t < s.num_random; ++t) seen.push_back(row[t]);
}

}  // namespace

void BigBirdAttention(const BigBirdShape& s, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, const float* v, int64_t ldv, const int32_t* random, float* out,
                      int64_t ldo, ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, b = s.block_size;
  const int64_t blocks = (s.len + b - 1) / b;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  pool.ParallelFor(s.num_heads * blocks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<int64_t> seen;
    std::vector<float> keys, values, scores;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t h = w / blocks, i = w % blocks;
      const int64_t row0 = i * b, rows = std::min(b, s.len - row0);
      const int64_t live = std::clamp<int64_t>(s.valid - row0, 0, rows);  // query rows to compute
      for (int64_t t = live; t < rows; ++t) {
        std::memset(out + (row0 + t) * ldo + h * d, 0, static_cast<size_t>(d) * sizeof(float));
      }
      if (live == 0) continue;
      const float* kp = k + h * d;  // every valid key: read in place
      const float* vp = v + h * d;
      int64_t ldkp = ldk, ldvp = ldv, m = s.valid;
      if (!(i == 0 || i == blocks - 1 || s.num_random == 0)) {  // gather the blocks seen
        BlocksSeen(s, blocks, h, i, random, seen);
        m = 0;
        for (int64_t j : seen) m += std::clamp<int64_t>(s.valid - j * b, 0, b);
        keys.resize(static_cast<size_t>(m * d));
        values.resize(keys.size());
        int64_t at = 0;
        for (int64_t j : seen) {
          const int64_t end = std::min(s.valid, (j + 1) * b);
          for (int64_t p = j * b; p < end; ++p, ++at) {
            std::memcpy(keys.data() + at * d, k + p * ldk + h * d,
                        static_cast<size_t>(d) * sizeof(float));
            std::memcpy(values.data() + at * d, v + p * ldv + h * d,
                        static_cast<size_t>(d) * sizeof(float));
          }
        }
        kp = keys.data();
        vp = values.data();
        ldkp = ldvp = d;
      }
      scores.resize(static_cast<size_t>(live * m));
      GemmNT(live, m, d, scale, q + row0 * ldq + h * d, ldq, kp, ldkp, 0.0f, scores.data(), m);
      for (int64_t t = 0; t < live; ++t) SoftmaxRow(scores.data() + t * m, m);
      GemmNN(live, d, m, 1.0f, scores.data(), m, vp, ldvp, 0.0f, out + row0 * ldo + h * d, ldo);
    }
  });
}

}  // namespace mnemo::kernels
