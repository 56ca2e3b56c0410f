// Funnel-Transformer's relative attention on the CPU (Dai et al. 2020, as Hugging Face's
// FunnelRelMultiheadAttention computes it, both its "relative_shift" and "factorized" forms;
// docs/checkpoint-format.md "Encoders"). Queries sit at positions p_i = a_q + i·s_q, keys at
// p_j = a_k + j·s_k (s_q = s_k, or s_q = 2·s_k where a layer pools its queries), and per head
//   score(i, j) = (q_i + r_w)·k_j + m(i, j)·((q_i + r_r)·R(p_i − p_j) + (q_i + r_s)·seg)
// with q and the three biases scaled by 1 / sqrt(d_h), R(δ) the head's projection of the
// sinusoid of δ, seg the same-token-type embedding (every token has type 0), and m(i, j) = 0 when
// the first token is kept separate (separate_cls) and i or j is it, else 1. One softmax per row.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct FunnelShape {
  int num_heads;
  int head_dim;
  int64_t q_len;      // Tq
  int64_t k_len;      // Tk
  int64_t q_stride;   // s_q / s_k: 1 or 2
  bool separate_cls;  // m(i, j) = 0 on the first row and column
};

// q: [Tq, H·d_h], k, v: [Tk, H·d_h] rows ldq / ldk / ldv apart; r: [M, H·d_h], M = q_stride·(Tq −
// 1) + Tk, row t holding R(δ) for δ = (a_q − a_k) − (Tk − 1 − t)·s_k (so the pair (i, j) reads row
// q_stride·i + Tk − 1 − j); r_w, r_r, r_s, seg: [H·d_h]; out: [Tq, H·d_h] rows `ldo` apart. Work is
// split over heads on `pool`.
void FunnelAttention(const FunnelShape& shape, const float* q, int64_t ldq, const float* k,
                     int64_t ldk, const float* v, int64_t ldv, const float* r, const float* r_w,
                     const float* r_r, const float* r_s, const float* seg, float* out, int64_t ldo,
                     ThreadPool& pool);

}  // namespace mnemo::kernels
