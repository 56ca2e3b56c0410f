// BigBird's bidirectional attention on the CPU (Zaheer et al. 2020, as Hugging Face's
// BigBirdBlockSparseAttention and BigBirdSelfAttention compute it; docs/checkpoint-format.md
// "Encoders"). The pass's L positions form L / b blocks of b; the first `valid` are the window's
// tokens, the rest padding, never seen as keys (their own rows are written as zeros).
//   Full (original_full): every query sees every valid key.
//   Block-sparse: a query in the first or last block sees every valid key; a query in block i of
//   the others sees the blocks {0, i − 1, i, i + 1, last} (each once) and the r random blocks
//   random[h][i − 1] (as listed: a block drawn twice counts twice, as in Hugging Face).
// score = q·k / sqrt(d_h), one softmax per query and head.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct BigBirdShape {
  int num_heads;
  int head_dim;
  int64_t len;         // L positions in the pass (a multiple of block_size when block-sparse)
  int64_t valid;       // positions before it are tokens, the rest padding
  int64_t block_size;  // b: rows a query tile holds (full) or a block (block-sparse)
  int64_t num_random;  // r random blocks per query block; 0: full attention
};

// q, k, v: [L, H·d_h] rows ldq / ldk / ldv apart; random: [H, L / b − 2, r] block indices in
// [0, L / b) (null for full attention); out: [L, H·d_h] rows `ldo` apart. Work is split over
// (head, query block) on `pool`.
void BigBirdAttention(const BigBirdShape& shape, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, const float* v, int64_t ldv, const int32_t* random, float* out,
                      int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
