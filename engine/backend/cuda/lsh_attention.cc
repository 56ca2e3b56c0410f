// The CUDA backend's Reformer LSH attention (kernels/cuda/lsh_attention.h): hashing, either sort
// and the per-query window search in one call per sequence, then the new positions' normalised
// keys, values and buckets into the layer's ring.
#include "kernels/cuda/lsh_attention.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"

namespace mnemo::engine::cuda {

// Reformer LSH attention, either sort (kernels/cuda/lsh_attention.h), then the new positions'
// normalised keys, values and buckets into the ring's next slots, as the CPU backend does.
absl::Status CudaBackend::LshAttention(const std::vector<LshAttentionArgs>& batch) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  for (const LshAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    if (a.head_dim > 128) {
      return absl::InvalidArgumentError(
          absl::StrCat("the CUDA LSH attention kernel supports d_head ≤ 128, not ", a.head_dim));
    }
    XlMemory& ring = *a.memory;
    const int64_t t = a.qkv->dim(0), w = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t segments = a.num_heads * l.n_hashes;
    if (t == 0) continue;
    ASSIGN_OR_RETURN(Tensor new_k, NewTensor(DType::kF32, {t, w}));
    ASSIGN_OR_RETURN(Tensor new_bucket, NewTensor(DType::kI32, {t, segments}));
    // Sized for a full ring, so that every decode step of a session asks for the same bytes.
    const size_t scratch_bytes =
        kc::LshAttentionScratchBytes(ring.capacity() + t, a.num_heads, static_cast<int>(l.n_hashes),
                                     static_cast<int>(l.n_buckets));
    ASSIGN_OR_RETURN(Tensor scratch,
                     NewTensor(DType::kI32, {static_cast<int64_t>(scratch_bytes / 4)}));
    const float* x = a.qkv->data<float>();
    const kc::LshAttentionLaunch launch{x,
                                        2 * w,
                                        x + w,
                                        a.rotations->data<float>(),
                                        ring.keys().data<float>(),
                                        ring.values().data<float>(),
                                        a.aux->buckets.data<int32_t>(),
                                        ring.size(),
                                        std::max<int64_t>(ring.capacity(), 1),
                                        ring.start(),
                                        new_k.data<float>(),
                                        new_bucket.data<int32_t>(),
                                        scratch.raw(),
                                        a.out->data<float>(),
                                        t,
                                        a.num_heads,
                                        a.head_dim,
                                        static_cast<int>(l.n_hashes),
                                        static_cast<int>(l.n_buckets),
                                        l.bucket_factors,
                                        l.chunk_len,
                                        l.history,
                                        l.lsh_call_sort};
    Note({24,
          Addr(launch.x),
          Addr(launch.rotations),
          Addr(launch.mem_k),
          Addr(launch.mem_v),
          Addr(launch.mem_bucket),
          Addr(launch.new_k),
          Addr(launch.new_bucket),
          Addr(launch.scratch),
          Addr(launch.out),
          U(t),
          U(launch.memory_len),
          U(launch.capacity),
          U(launch.ring_start),
          U(launch.num_heads),
          U(launch.head_dim),
          U(launch.n_hashes),
          U(launch.n_buckets),
          U(launch.chunk_len),
          U(launch.history),
          U(launch.call_sort)});
    RETURN_IF_ERROR(Launch([this, launch] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::LshAttention(launch, ctx_.stream()));
      return absl::OkStatus();
    }));
    // The kept rows join the ring (after the attention read it: stream order).
    std::vector<const float*> src, bucket_src;
    std::vector<float*> dst, bucket_dst;
    for (int64_t r = 0; r < t; ++r) {
      const int64_t slot = ring.SlotOfNewRow(r, t);
      if (slot < 0) continue;
      src.push_back(new_k.data<float>() + r * w);
      dst.push_back(ring.keys().data<float>() + slot * w);
      src.push_back(x + r * 2 * w + w);
      dst.push_back(ring.values().data<float>() + slot * w);
      // Bucket rows move as 4-byte words (a copy, no arithmetic: the bits are kept).
      bucket_src.push_back(reinterpret_cast<const float*>(new_bucket.data<int32_t>()) +
                           r * segments);
      bucket_dst.push_back(reinterpret_cast<float*>(a.aux->buckets.data<int32_t>()) +
                           slot * segments);
    }
    RETURN_IF_ERROR(CopyRowPairs(src, dst, w));
    RETURN_IF_ERROR(CopyRowPairs(bucket_src, bucket_dst, segments));
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cuda
