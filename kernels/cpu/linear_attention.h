// Causal linear (kernelised) attention on the CPU, MODEL-SPEC §5: per head a feature map φ and a
// recurrent state S [m', d_h], z [m'] carried across calls:
//   S_t = a_t·S_{t−1} + b_t·φ(k_t)v_tᵀ,  z_t = a_t·z_{t−1} + b_t·φ(k_t),
//   out_t = φ(q_t)ᵀS_t / max(φ(q_t)·z_t, eps),
// with a_t = b_t = 1, or a_t = g_t, b_t = 1 − g_t for a gated layer (g_t = sigmoid(w_h·x_t + c_h)).
// Prefill runs in chunked parallel form (per chunk a masked φ(Q)φ(K)ᵀ product plus the carried
// state), a single token in recurrent form; both compute the same function.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "kernels/kinds.h"

namespace mnemo::kernels {

struct LinearAttentionShape {
  int num_heads;  // H
  int head_dim;   // d_h
  int64_t query_len;
  FeatureMap map;        // kernels/kinds.h
  int64_t num_features;  // m (favor, rfa: rows of `features`)
  bool gated;
  float eps;
  int64_t input_width;  // D: width of the gate's input rows
};

// Features per head: d_h (elu), m (favor) or 2m (rfa).
int64_t LinearStateFeatures(const LinearAttentionShape& shape);

// qkv:  [T, 3·H·d_h] rows (q | k | v, head-major inside each block).
// input: [T, D] the layer input (gate only; may be null when not gated).
// features: [m, d_h] (favor, rfa). gate_w [H, D], gate_b [H] (gated).
// s: [H, m', d_h], z: [H, m'], updated in place. out: [T, H·d_h]. Heads run on `pool`.
void LinearAttention(const LinearAttentionShape& shape, const float* qkv, const float* input,
                     const float* features, const float* gate_w, const float* gate_b, float* s,
                     float* z, float* out, ThreadPool& pool);

}  // namespace mnemo::kernels
