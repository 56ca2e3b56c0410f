// The CPU backend's Funnel-Transformer attention (kernels/cpu/funnel_attention.h).
#include "kernels/cpu/funnel_attention.h"

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::FunnelAttention(const FunnelAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const int64_t ldq = a.q->dim(1), ldkv = a.kv->dim(1);
  const kernels::FunnelShape shape{a.num_heads,  a.head_dim, a.q->dim(0),
                                   a.kv->dim(0), a.q_stride, a.separate_cls};
  const float* k = a.kv->data<float>() + (ldkv - 2 * width);
  kernels::FunnelAttention(shape, a.q->data<float>(), ldq, k, ldkv, k + width, ldkv,
                           a.r->data<float>(), a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                           a.r_s_bias->data<float>(), a.seg->data<float>(), a.out->data<float>(),
                           width, pool_);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
