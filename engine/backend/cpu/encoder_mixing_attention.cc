// The CPU backend's Linformer and Synthesizer attention (kernels/cpu/linformer_attention.h,
// kernels/cpu/synthesizer_attention.h): the encoder kinds whose weights span the sequence.
#include "engine/backend/cpu/cpu_backend.h"
#include "kernels/cpu/linformer_attention.h"
#include "kernels/cpu/synthesizer_attention.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::LinformerAttention(const LinformerAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim, ld = 3 * width;
  const kernels::LinformerShape shape{a.num_heads, a.head_dim, a.qkv->dim(0), a.proj_k->dim(0),
                                      a.proj_k->dim(1)};
  const float* x = a.qkv->data<float>();
  kernels::LinformerAttention(shape, x, ld, x + width, ld, x + 2 * width, ld,
                              a.proj_k->data<float>(), a.proj_v->data<float>(),
                              a.out->data<float>(), width, pool_);
  return absl::OkStatus();
}

absl::Status CpuBackend::SynthesizerAttention(const SynthesizerAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
  const kernels::SynthesizerShape shape{a.num_heads, a.head_dim, a.v->dim(0), a.b2->dim(1)};
  kernels::SynthesizerAttention(shape, a.hidden != nullptr ? a.hidden->data<float>() : nullptr,
                                width, a.w2 != nullptr ? a.w2->data<float>() : nullptr,
                                a.b2->data<float>(), a.v->data<float>(), width,
                                a.out->data<float>(), width, pool_);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
