// Causal softmax attention over a dilated sliding window on the GPU (MODEL-SPEC §3.1, §3.4), the
// same function as kernels/cpu/sparse_attention.h: the query at key index M + i sees the keys
// {M + i − r·dil_h : r = 0 … W−1, ≥ 0} of its head h, itself included; score = q·k / sqrt(d_h),
// no position encoding. Keys are numbered over [rolling K/V ring (M) | segment (T)]. One warp per
// (query, head) walks its W keys in tiles of 32 with an online softmax: work is proportional to
// the window, not to the document or the segment. The CUDA backend uses it for dilated windows;
// a window of dilation 1 is a band, which the tiled relative-attention kernel runs without its
// positional term (relative_attention.h, rel = null).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mnemo::kernels::cuda {

struct SlidingWindowLaunch {
  const float* qkv;    // [T, 3·W_h], W_h = H·d_h
  const float* mem_k;  // ring [capacity, W_h]
  const float* mem_v;
  float* out;                // [T, W_h]
  const int64_t* dilations;  // device [H]
  int64_t query_len;
  int64_t memory_len;  // stored positions, oldest at ring_start
  int64_t capacity;
  int64_t ring_start;
  int64_t window;  // W keys per query
  int num_heads;
  int head_dim;  // ≤ 128
  // RealFormer, [H, T, M + T] (null when unused): added to the scaled scores / the sums.
  const float* prev_scores = nullptr;
  float* scores = nullptr;
};

cudaError_t SlidingWindowAttention(const SlidingWindowLaunch& launch, cudaStream_t stream);

// Attention over keys listed per query (every other sparse pattern, global tokens included): the
// host names each (head, query)'s keys as row addresses, in CSR form, and one warp per (query,
// head) runs an online softmax over them. Work is proportional to the pattern's nonzeros.
struct GatheredAttentionLaunch {
  const float* q;  // query rows, `ldq` floats apart; head h at h·d_h
  int64_t ldq;
  const int64_t* offsets;  // device [H·T + 1]: task h·T + i owns entries offsets[t] … [t+1]
  // device, per entry: the key row (all key heads; query head h reads key head h / kv_group, at
  // (h / kv_group)·d_h)
  const float* const* keys;
  const float* const* values;  // device, per entry: the value row
  float* out;                  // rows `ldo` floats apart
  int64_t ldo;
  int64_t query_len;
  int num_heads;
  int head_dim;          // ≤ 128
  int kv_group = 1;      // query heads per key/value head (grouped-query attention)
  float scale = 0.0f;    // the scores' scale (0: 1/sqrt(d_h))
  float softcap = 0.0f;  // Gemma-2: score → cap·tanh(score / cap) after scaling (0: none)
  // RealFormer (null when unused): per entry its key's index over [ring | segment], and the
  // [H, T, key_count] scores added to the scaled scores / receiving the sums.
  const int64_t* key_index = nullptr;
  int64_t key_count = 0;
  const float* prev_scores = nullptr;
  float* scores = nullptr;
};

cudaError_t GatheredAttention(const GatheredAttentionLaunch& launch, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
