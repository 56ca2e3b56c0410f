// Linformer's self-attention on the CPU (Wang et al. 2020; docs/checkpoint-format.md "Encoders"):
// each head's keys and values over the pass's N positions are projected along the sequence to k
// rows by the layer's learned E and F ([k, n_max]; a pass of N ≤ n_max tokens uses their first N
// columns, as if the positions past it held zero keys and values), and every query attends to
// those k rows: out = softmax(q · (E·K)ᵀ / sqrt(d_h)) · (F·V). Bidirectional and tied to the
// sequence length by E and F: an encoder kind only.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct LinformerShape {
  int num_heads;
  int head_dim;
  int64_t len;        // N positions in the pass
  int64_t projected;  // k
  int64_t max_len;    // n_max: the columns of E and F
};

// q, k, v: [N, H·d_h] rows ldq / ldk / ldv apart; e, f: [k, n_max]; out: [N, H·d_h] rows `ldo`
// apart. Work is split over heads on `pool`.
void LinformerAttention(const LinformerShape& shape, const float* q, int64_t ldq, const float* k,
                        int64_t ldk, const float* v, int64_t ldv, const float* e, const float* f,
                        float* out, int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
