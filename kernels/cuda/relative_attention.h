// Transformer-XL relative attention over [compressed ring | memory ring | segment] on the GPU
// (MODEL-SPEC §1.1, §2.2; M counts the compressed slots),
// the same function as kernels/cpu/relative_attention.h:
//   score[i,j] = ((q_i + u)·k_j + (q_i + v)·Rk[min(δ, clamp)]) / sqrt(d_h),  δ = (M + i) − j.
// FlashAttention style: keys stream through shared memory in tiles of 32 with an online softmax,
// so no score matrix is materialised; the positional term indexes a band of the distance table
// (the relative shift done by indexing). Long key ranges are split across blocks and merged by a
// second kernel (flash-decoding), so a single decode token still fills the GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_plan.h"

namespace mnemo::kernels::cuda {

struct RelativeAttentionLaunch {
  const AttentionSequence* seqs;         // device
  const AttentionWorkItem* items;        // device
  const AttentionCombineItem* combines;  // device
  int num_items;
  int num_combines;
  int query_tile;   // the plan's
  float* partials;  // device [partial_rows, H, d_h + 2] (unused when num_combines = 0)
  // [P, W]: row p = W_r · sinusoid(p); rows ≥ min(M + T − 1, clamp) + 1. Null: no positional
  // term and no biases, score = q·k / sqrt(d_h); with same_length and mem_len_max = W that is a
  // sliding window of W keys (sparse_attention.h), run here as a tiled band.
  const float* rel;
  const float* r_w_bias;  // [H, d_h]
  const float* r_r_bias;  // [H, d_h]
  int num_heads;
  int head_dim;  // ≤ kMaxHeadDim
  int64_t mem_len_max;
  int64_t clamp_len;  // 0 = no clamp
  bool same_length;
};

constexpr int kMaxHeadDim = 128;

// Dynamic shared memory one block of the attention kernel needs (bytes).
size_t RelativeAttentionSharedBytes(int query_tile, int head_dim);

cudaError_t RelativeAttention(const RelativeAttentionLaunch& launch, cudaStream_t stream);

// most_used compression: for the launch's sequences that carry a `usage` array, adds the
// attention probability every XL-memory key receives (summed over heads and queries) to its
// ring slot. A second pass over the scores, one warp per (query, head), reading the sequences
// and distance table of `launch` (its work items are not used); `max_query_len` bounds the
// sequences' T.
cudaError_t AttentionMass(const RelativeAttentionLaunch& launch, int num_seqs,
                          int64_t max_query_len, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
