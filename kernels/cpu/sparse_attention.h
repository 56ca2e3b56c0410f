// Causal softmax attention over a dilated sliding window on the CPU (MODEL-SPEC §3.1, §3.4):
// the query at stream position p sees keys {p − r·dil_h : r = 0 … W−1, ≥ 0} of its head h,
// itself included; score = q·k / sqrt(d_h), no position encoding. Keys before the segment come
// from the layer's rolling K/V buffer, so a decode step reads W keys per head whatever the
// document's length.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/relative_attention.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct SlidingWindowShape {
  int num_heads;
  int head_dim;
  int64_t query_len;         // T: the new positions are the last T keys
  int64_t memory_len;        // M: stored positions before them
  int64_t window;            // W keys per query, itself included
  const int64_t* dilations;  // [H]
  // Grouped-query attention: query head h reads key/value head h / kv_group, whose columns are
  // at (h / kv_group)·d_h of the key rows.
  int kv_group = 1;
  // Gemma-2: the scores' scale (0: 1/sqrt(d_h)) and soft cap (score → cap·tanh(score / cap)
  // after scaling; 0: none).
  float scale = 0.0f;
  float softcap = 0.0f;
  // Optional (RealFormer), [H, T, M + T] each: prev_scores are added to the scaled scores before
  // the softmax; out_scores receive the sums. Only the entries a query sees are read or written.
  const float* prev_scores = nullptr;
  float* out_scores = nullptr;
};

// q: [T, H·d_h] rows `ldq` apart; keys: spans covering exactly M + T positions, oldest first;
// out: [T, H·d_h] rows `ldo` apart. Work is split over (head, query) on `pool`.
void SlidingWindowAttention(const SlidingWindowShape& shape, const float* q, int64_t ldq,
                            const std::vector<KvSpan>& keys, float* out, int64_t ldo,
                            ThreadPool& pool);

}  // namespace mnemo::kernels
