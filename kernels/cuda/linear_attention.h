// Causal linear (kernelised) attention on the GPU (MODEL-SPEC §5), the same function as
// kernels/cpu/linear_attention.h: per head a feature map φ and a recurrent state S [m', d_h],
// z [m'] carried across calls,
//   S_t = a_t·S_{t−1} + b_t·φ(k_t)v_tᵀ,  z_t = a_t·z_{t−1} + b_t·φ(k_t),
//   out_t = φ(q_t)ᵀS_t / max(φ(q_t)·z_t, eps),
// a_t = b_t = 1, or a_t = g_t, b_t = 1 − g_t for a gated layer (g_t = sigmoid(w_h·x_t + c_h)).
// Three launches per sequence: the feature maps of every query and key (one block per token,
// head and side), the gates (one block per token and head), and a scan that carries each head's
// state through the tokens in order (one block per head, a thread per value dimension) and
// writes the outputs (decode and segments of up to 64 tokens). Longer segments take the chunked
// form instead: each 64-token chunk's state increment in parallel, the chunk-start states in one
// pass over the chunks (parallel over the state's elements), then each chunk's outputs from its
// start state and its causal intra-chunk products, in parallel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kinds.h"

namespace mnemo::kernels::cuda {

struct LinearAttentionLaunch {
  const float* qkv;       // [T, 3·W], W = H·d_h
  const float* input;     // [T, D] the layer input (gated only)
  const float* features;  // [m, d_h] (favor, rfa)
  const float* gate_w;    // [H, D] (gated)
  const float* gate_b;    // [H] (gated)
  float* s;               // [H, m', d_h], updated
  float* z;               // [H, m'], updated
  float* out;             // [T, W]
  float* fq;              // scratch [T, H, m']
  float* fk;              // scratch [T, H, m']
  float* gate;            // scratch [T, H] (gated)
  float* chunk_scratch;   // LinearAttentionChunkScratchFloats(…) floats (none for short calls)
  int64_t query_len;
  int num_heads;
  int head_dim;  // ≤ 1024
  FeatureMap map;
  int64_t num_features;    // m (favor, rfa)
  int64_t state_features;  // m': d_h (elu), m (favor), 2m (rfa)
  bool gated;
  float eps;
  int64_t input_width;  // D
};

cudaError_t LinearAttention(const LinearAttentionLaunch& launch, cudaStream_t stream);

// Scratch the chunked prefill of a T-token call needs (0 when the scan runs).
int64_t LinearAttentionChunkScratchFloats(int64_t query_len, int num_heads, int64_t state_features,
                                          int head_dim);

}  // namespace mnemo::kernels::cuda
