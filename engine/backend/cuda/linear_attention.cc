// The CUDA backend's linear (kernelised) attention (kernels/cuda/linear_attention.h): per
// sequence, feature maps, gates and the recurrent state scan (or its chunked form for long
// segments), advancing the layer's (S, z) state in place.
#include "kernels/cuda/linear_attention.h"

#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"

namespace mnemo::engine::cuda {

absl::Status CudaBackend::LinearAttention(const std::vector<LinearAttentionArgs>& batch) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  auto ptr = [](const Tensor* t) {
    return t != nullptr && t->defined() ? t->data<float>() : nullptr;
  };
  for (const LinearAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    kc::LinearAttentionLaunch launch{};
    launch.query_len = a.qkv->dim(0);
    launch.num_heads = a.num_heads;
    launch.head_dim = a.head_dim;
    launch.map = l.feature_map;
    launch.num_features = l.num_features;
    launch.state_features = a.state->z.dim(1);
    launch.gated = l.gated;
    launch.eps = static_cast<float>(l.eps);
    launch.input_width = a.input->dim(1);
    launch.qkv = a.qkv->data<float>();
    launch.input = a.input->data<float>();
    launch.features = ptr(a.features);
    launch.gate_w = ptr(a.gate_weight);
    launch.gate_b = ptr(a.gate_bias);
    launch.s = a.state->s.data<float>();
    launch.z = a.state->z.data<float>();
    launch.out = a.out->data<float>();
    const int64_t t = launch.query_len, h = a.num_heads, mf = launch.state_features;
    ASSIGN_OR_RETURN(Tensor fq, NewTensor(DType::kF32, {t, h, mf}));
    ASSIGN_OR_RETURN(Tensor fk, NewTensor(DType::kF32, {t, h, mf}));
    Tensor gate;
    if (l.gated) {
      ASSIGN_OR_RETURN(gate, NewTensor(DType::kF32, {t, h}));
    }
    launch.fq = fq.data<float>();
    launch.fk = fk.data<float>();
    launch.gate = gate.defined() ? gate.data<float>() : nullptr;
    const int64_t chunk_floats =
        kc::LinearAttentionChunkScratchFloats(t, a.num_heads, mf, a.head_dim);
    Tensor chunk_scratch;
    if (chunk_floats > 0) {
      ASSIGN_OR_RETURN(chunk_scratch, NewTensor(DType::kF32, {chunk_floats}));
    }
    launch.chunk_scratch = chunk_scratch.defined() ? chunk_scratch.data<float>() : nullptr;
    Note({20,
          Addr(launch.qkv),
          Addr(launch.input),
          Addr(launch.features),
          Addr(launch.gate_w),
          Addr(launch.gate_b),
          Addr(launch.s),
          Addr(launch.z),
          Addr(launch.out),
          Addr(launch.fq),
          Addr(launch.fk),
          Addr(launch.gate),
          Addr(launch.chunk_scratch),
          U(t),
          U(h),
          U(a.head_dim),
          U(static_cast<int>(launch.map)),
          U(launch.num_features),
          U(mf),
          U(launch.gated),
          U(launch.input_width)});
    RETURN_IF_ERROR(Launch([this, launch] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::LinearAttention(launch, ctx_.stream()));
      return absl::OkStatus();
    }));
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cuda
