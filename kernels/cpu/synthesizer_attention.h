// Synthesizer's attention on the CPU (Tay et al. 2021; docs/checkpoint-format.md "Encoders"): the
// attention weights are not q·k but synthesized, per head, over the pass's N positions:
//   dense:  logits[i, j] = (w2_h · relu(h1_i) + b2_h)[j], h1 = the layer's first dense layer of
//           the input (its head's slice), w2_h [n_max, d_h], b2_h [n_max];
//   random: logits[i, j] = r_h[i, j], a learned [n_max, n_max] matrix per head;
// out_i = softmax over j < N of logits[i, j], times v. The weights are tied to positions up to
// n_max and read the whole pass: an encoder kind only.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct SynthesizerShape {
  int num_heads;
  int head_dim;
  int64_t len;      // N positions in the pass
  int64_t max_len;  // n_max
};

// Dense: h1 [N, H·d_h] rows ldh apart (relu already applied), w2 [H, n_max, d_h], b2 [H, n_max].
// Random: h1 and w2 null, b2 the matrices r [H, n_max, n_max]. v: [N, H·d_h] rows ldv apart;
// out: [N, H·d_h] rows `ldo` apart. Work is split over heads on `pool`.
void SynthesizerAttention(const SynthesizerShape& shape, const float* h1, int64_t ldh,
                          const float* w2, const float* b2, const float* v, int64_t ldv, float* out,
                          int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
