// The CPU backend's Reformer LSH attention (kernels/cpu/lsh_attention.h, lsh_call_attention.h):
// the new positions' normalised keys, values and buckets, either sort's attention over the ring
// and the segment, then the new rows into the ring.
#include "kernels/cpu/lsh_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "kernels/cpu/lsh_call_attention.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::LshAttention(const std::vector<LshAttentionArgs>& batch) {
  std::vector<kernels::KvSpan> spans;
  std::vector<kernels::BucketSpan> bucket_spans;
  for (const LshAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t t = a.qkv->dim(0), ld = 2 * width, nb = a.num_heads * l.n_hashes;
    const float* x = a.qkv->data<float>();
    XlMemory& ring = *a.memory;
    kernels::LshShape shape{a.num_heads,
                            a.head_dim,
                            static_cast<int>(l.n_hashes),
                            static_cast<int>(l.n_buckets),
                            l.chunk_len,
                            l.history,
                            t,
                            ring.size(),
                            l.bucket_factors};
    // The new positions' normalised keys, values and buckets.
    std::vector<float> keys(static_cast<size_t>(t * width)), values(keys.size());
    std::vector<int32_t> buckets(static_cast<size_t>(t * nb));
    kernels::LshNormalizeKeys(a.num_heads, a.head_dim, t, x, ld, keys.data(), width);
    for (int64_t r = 0; r < t; ++r) {
      std::memcpy(values.data() + r * width, x + r * ld + width, width * sizeof(float));
    }
    kernels::LshHash(shape, t, x, ld, a.rotations->data<float>(), buckets.data(), nb);
    spans.clear();
    ring.AppendSpans(spans);
    spans.push_back({keys.data(), values.data(), width, t});
    bucket_spans.clear();
    const int32_t* stored = a.aux->buckets.defined() ? a.aux->buckets.data<int32_t>() : nullptr;
    if (ring.size() > 0) {
      const int64_t first = std::min(ring.size(), ring.capacity() - ring.start());
      bucket_spans.push_back({stored + ring.start() * nb, nb, first});
      if (first < ring.size()) bucket_spans.push_back({stored, nb, ring.size() - first});
    }
    bucket_spans.push_back({buckets.data(), nb, t});
    if (l.lsh_call_sort) {
      kernels::LshCallAttention(shape, x, ld, spans, bucket_spans, a.out->data<float>(), width,
                                pool_);
    } else {
      kernels::LshAttention(shape, x, ld, spans, bucket_spans, a.out->data<float>(), width, pool_);
    }
    for (int64_t r = 0; r < t; ++r) {
      const int64_t slot = ring.SlotOfNewRow(r, t);
      if (slot < 0) continue;
      ring.WriteRow(slot, keys.data() + r * width, values.data() + r * width);  // in its dtype
      std::memcpy(a.aux->buckets.data<int32_t>() + slot * nb, buckets.data() + r * nb,
                  nb * sizeof(int32_t));
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
