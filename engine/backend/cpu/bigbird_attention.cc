// The CPU backend's BigBird attention (kernels/cpu/bigbird_attention.h).
#include "kernels/cpu/bigbird_attention.h"

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::BigBirdAttention(const BigBirdAttentionArgs& a) {
  const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim, ld = 3 * width;
  const bool sparse = a.random != nullptr;
  const kernels::BigBirdShape shape{a.num_heads, a.head_dim,   a.qkv->dim(0),
                                    a.valid,     a.block_size, sparse ? a.num_random : 0};
  const float* x = a.qkv->data<float>();
  kernels::BigBirdAttention(shape, x, ld, x + width, ld, x + 2 * width, ld,
                            sparse ? a.random->data() : nullptr, a.out->data<float>(), width,
                            pool_);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
