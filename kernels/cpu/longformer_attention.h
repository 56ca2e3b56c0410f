// Longformer's bidirectional attention on the CPU (Beltagy et al. 2020, as Hugging Face's
// LongformerSelfAttention computes it; docs/checkpoint-format.md "Encoders"): a sliding window of
// w keys on each side plus global positions.
//   Local: the query at position i that is not global sees every global position and the
//   positions j with |i − j| ≤ w, 0 ≤ j < N, that are not global (each key once).
//   Global: a global query sees every position, through the layer's separate global projections.
// score = q·k / sqrt(d_h), one softmax per query and head.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct LongformerShape {
  int num_heads;
  int head_dim;
  int64_t len;        // N positions
  int64_t one_sided;  // w: keys on each side of a local query
};

// q, k, v: [N, H·d_h] rows ldq / ldk / ldv apart; globals: the global positions, ascending, each
// < N; out: [N, H·d_h] rows `ldo` apart, written for every non-global position (global rows are
// LongformerGlobalAttention's). Work is split over (query, head) on `pool`.
void LongformerLocalAttention(const LongformerShape& shape, const float* q, int64_t ldq,
                              const float* k, int64_t ldk, const float* v, int64_t ldv,
                              const std::vector<int64_t>& globals, float* out, int64_t ldo,
                              ThreadPool& pool);

// The global queries' rows: q, k, v are the global projections of every position ([N, H·d_h];
// only the global positions' queries are read); out[globals[g]] is written.
void LongformerGlobalAttention(const LongformerShape& shape, const float* q, int64_t ldq,
                               const float* k, int64_t ldk, const float* v, int64_t ldv,
                               const std::vector<int64_t>& globals, float* out, int64_t ldo,
                               ThreadPool& pool);

}  // namespace mnemo::kernels
