// Rotary position embedding (RoPE, Su et al. 2021) as Hugging Face's Llama/Mistral/Gemma code
// applies it: head vectors split in halves (x1, x2) rotate to (x1·cos − x2·sin, x2·cos + x1·sin)
// by the angle position·inv_freq[i] of pair i. The angle is the float32 product (as Hugging Face
// computes it), its cosine and sine are taken in double and rounded. The CPU twin of
// kernels/cuda/rotary.h.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct RotaryShape {
  int64_t rows;           // positions
  int num_heads;          // head vectors to rotate per row, at columns h·head_dim from `x`
  int head_dim;           // even
  const float* inv_freq;  // [head_dim / 2]
};

// Rotates row r's heads by positions[r], in place; rows are `ld` floats apart.
void ApplyRotary(const RotaryShape& shape, const int64_t* positions, float* x, int64_t ld,
                 ThreadPool& pool);

}  // namespace mnemo::kernels
