// The CPU backend's relative (dense) attention (kernels/cpu/relative_attention.h): per sequence
// over [compressed memory | XL memory | segment], with the attention mass each memory slot
// receives accumulated into its usage for most_used compression.
#include "kernels/cpu/relative_attention.h"

#include <vector>

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) {
  std::vector<kernels::KvSpan> spans;
  std::vector<float> mass;
  for (const RelativeAttentionArgs& a : batch) {
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t t = a.qkv->dim(0);
    const float* qkv = a.qkv->data<float>();
    KeySpans(*a.memory, qkv, width, t, spans);
    int64_t before = 0;  // compressed memory rows, ahead of the XL memory
    if (a.compressed != nullptr) {
      std::vector<kernels::KvSpan> compressed;
      a.compressed->AppendSpans(compressed);
      spans.insert(spans.begin(), compressed.begin(), compressed.end());
      before = a.compressed->size();
    }
    const int64_t m = a.memory->size();
    kernels::RelativeAttentionShape shape{a.num_heads, a.head_dim,   t, before + m, a.mem_len_max,
                                          a.clamp_len, a.same_length};
    shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
    shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
    if (a.usage != nullptr) {
      mass.assign(static_cast<size_t>(m), 0.0f);
      shape.key_mass = mass.data();
      shape.mass_begin = before;
      shape.mass_end = before + m;
    }
    kernels::RelativeAttention(shape, qkv, 3 * width, spans, a.rel_table->data<float>(), width,
                               a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                               a.out->data<float>(), width, pool_);
    if (a.usage != nullptr) {  // key order → ring slots
      float* usage = a.usage->data<float>();
      for (int64_t j = 0; j < m; ++j) {
        usage[(a.memory->start() + j) % a.memory->capacity()] += mass[j];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
