// The CPU backend's linear (kernelised) attention (kernels/cpu/linear_attention.h): per sequence,
// the layer's (S, z) state advanced in place by the segment's tokens.
#include "kernels/cpu/linear_attention.h"

#include <vector>

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::LinearAttention(const std::vector<LinearAttentionArgs>& batch) {
  for (const LinearAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    kernels::LinearAttentionShape shape{a.num_heads,
                                        a.head_dim,
                                        a.qkv->dim(0),
                                        l.feature_map,
                                        l.num_features,
                                        l.gated,
                                        static_cast<float>(l.eps),
                                        a.input->dim(1)};
    auto ptr = [](const Tensor* t) {
      return t != nullptr && t->defined() ? t->data<float>() : nullptr;
    };
    kernels::LinearAttention(shape, a.qkv->data<float>(), a.input->data<float>(), ptr(a.features),
                             ptr(a.gate_weight), ptr(a.gate_bias), a.state->s.data<float>(),
                             a.state->z.data<float>(), a.out->data<float>(), pool_);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
