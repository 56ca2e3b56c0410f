// The CPU backend's Longformer attention (kernels/cpu/longformer_attention.h): every local query,
// then the global queries' rows.
#include "kernels/cpu/longformer_attention.h"

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::LongformerAttention(const LongformerAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim, ld = 3 * width;
  const kernels::LongformerShape shape{a.num_heads, a.head_dim, a.qkv->dim(0), a.one_sided};
  const float* x = a.qkv->data<float>();
  float* out = a.out->data<float>();
  kernels::LongformerLocalAttention(shape, x, ld, x + width, ld, x + 2 * width, ld, *a.globals, out,
                                    width, pool_);
  if (!a.globals->empty()) {
    const float* g = a.global_qkv->data<float>();
    kernels::LongformerGlobalAttention(shape, g, ld, g + width, ld, g + 2 * width, ld, *a.globals,
                                       out, width, pool_);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
