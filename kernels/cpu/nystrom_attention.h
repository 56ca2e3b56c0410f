// Nyströmformer's self-attention on the CPU (Xiong et al. 2021, as Hugging Face's
// NystromformerSelfAttention computes it; docs/checkpoint-format.md "Encoders"), per head over a
// pass of L positions whose keys from `valid` on are padding:
//   q, k scaled by d_h^(-1/4) each; with m = L landmarks, exact softmax attention over the
//   keys before `valid`. Otherwise the landmarks q̃, k̃ are the means of m consecutive segments
//   of L/m queries and keys (padding included), and
//     out = softmax(q·k̃ᵀ) · pinv(softmax(q̃·k̃ᵀ)) · softmax(q̃·kᵀ, keys before `valid`) · v,
//   pinv by six Newton–Schulz steps from Z₀ = Kᵀ / (the largest column sum of K over every
//   head) (Hugging Face's "original" initialisation, which couples the heads of a pass);
//   then, when `conv_taps` > 0, a depthwise convolution of each head's values along the
//   positions (zero padding of taps/2 on each side, taps odd) is added.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct NystromShape {
  int num_heads;
  int head_dim;
  int64_t len;        // L positions in the pass
  int64_t valid;      // keys at or past it are masked where Hugging Face masks them
  int64_t landmarks;  // m, dividing L; m = L: exact attention
  int64_t conv_taps;  // 0: no convolution
};

// q, k, v: [L, H·d_h] rows ldq / ldk / ldv apart; conv: [H, taps] (null without); out: [L, H·d_h]
// rows `ldo` apart. Work is split over heads on `pool`.
void NystromAttention(const NystromShape& shape, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, const float* v, int64_t ldv, const float* conv, float* out,
                      int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
