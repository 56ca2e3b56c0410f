// The CPU backend's Nyströmformer attention (kernels/cpu/nystrom_attention.h).
#include "kernels/cpu/nystrom_attention.h"

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::NystromAttention(const NystromAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim, ld = 3 * width;
  const kernels::NystromShape shape{a.num_heads,   a.head_dim,
                                    a.qkv->dim(0), a.valid,
                                    a.landmarks,   a.conv != nullptr ? a.conv->dim(1) : 0};
  const float* x = a.qkv->data<float>();
  kernels::NystromAttention(shape, x, ld, x + width, ld, x + 2 * width, ld,
                            a.conv != nullptr ? a.conv->data<float>() : nullptr,
                            a.out->data<float>(), width, pool_);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
