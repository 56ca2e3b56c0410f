// BigBird's random blocks, drawn as Hugging Face's BigBirdBlockSparseAttention draws them (4.27):
// each layer reseeds numpy's legacy global generator with its index and draws permutations, so a
// layer's blocks are a fixed function of (layer, the padded pass length, block size, random
// blocks per row, heads, the position table's rows). Reproducing that draw exactly (MT19937,
// numpy's bounded-interval rejection and Fisher–Yates shuffle) makes the published checkpoints'
// outputs match Hugging Face's without feeding the blocks from outside.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace mnemo::engine {

struct BigBirdRandomPlan {
  int64_t layer;          // the numpy seed
  int64_t len;            // L: the padded pass length, a multiple of block_size
  int64_t block_size;     // b
  int64_t num_random;     // r ≥ 1
  int64_t num_heads;      // H
  int64_t position_rows;  // Hugging Face max_position_embeddings (its "old plans" draw over it)
};

// [H, L / b − 2, r]: the random key blocks of query blocks 1 … L / b − 2, per head.
// INVALID_ARGUMENT when Hugging Face's draw itself fails for this shape (fewer candidate blocks
// than r; the pass is then too short for block-sparse attention).
absl::StatusOr<std::vector<int32_t>> BigBirdRandomBlocks(const BigBirdRandomPlan& plan);

}  // namespace mnemo::engine
