// The CPU backend's Funnel-Transformer attention (kernels/cpu/funnel_attention.h).
#include "kernels/cpu/funnel_attention.h"

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::FunnelAttention(const FunnelAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim, ld = 3 * width;
  const kernels::FunnelShape shape{a.num_heads,      a.head_dim, a.q_qkv->dim(0),
                                   a.kv_qkv->dim(0), a.q_stride, a.separate_cls};
  const float* kv = a.kv_qkv->data<float>();
  kernels::FunnelAttention(shape, a.q_qkv->data<float>(), ld, kv + width, ld, kv + 2 * width, ld,
                           a.r->data<float>(), a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                           a.r_s_bias->data<float>(), a.seg->data<float>(), a.out->data<float>(),
                           width, pool_);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
