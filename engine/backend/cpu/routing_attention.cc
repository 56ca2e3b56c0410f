// The CPU backend's routing attention (kernels/cpu/routing_attention.h): the new positions'
// query and key clusters, every query's attention over the ring and the segment, then the new
// keys, values and key clusters into the ring.
#include "kernels/cpu/routing_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::RoutingAttention(const std::vector<RoutingAttentionArgs>& batch) {
  std::vector<kernels::KvSpan> spans;
  for (const RoutingAttentionArgs& a : batch) {
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t t = a.qkv->dim(0), ld = 3 * width, h = a.num_heads;
    XlMemory& ring = *a.memory;
    const kernels::RoutingShape shape{
        a.num_heads,      a.head_dim, static_cast<int>(a.layer->n_clusters),
        a.layer->history, t,          ring.size()};
    const float* x = a.qkv->data<float>();
    // Key clusters of the stored positions (oldest first), then of the new ones; the queries'.
    thread_local std::vector<int32_t> key_clusters, query_clusters;
    key_clusters.resize(static_cast<size_t>((ring.size() + t) * h));
    query_clusters.resize(static_cast<size_t>(t * h));
    const int32_t* stored = a.clusters->data<int32_t>();
    for (int64_t j = 0; j < ring.size(); ++j) {
      const int64_t slot = (ring.start() + j) % ring.capacity();
      std::memcpy(key_clusters.data() + j * h, stored + slot * h, h * sizeof(int32_t));
    }
    const float* centroids = a.unit_centroids->data<float>();
    kernels::RoutingClusters(shape, t, x + width, ld, centroids,
                             key_clusters.data() + ring.size() * h, h);
    kernels::RoutingClusters(shape, t, x, ld, centroids, query_clusters.data(), h);
    KeySpans(ring, x, width, t, spans);
    kernels::RoutingAttention(shape, x, ld, spans, key_clusters.data(), query_clusters.data(),
                              a.out->data<float>(), width, pool_);
    for (int64_t r = 0; r < t; ++r) {
      const int64_t slot = ring.SlotOfNewRow(r, t);
      if (slot < 0) continue;
      ring.WriteRow(slot, x + r * ld + width, x + r * ld + 2 * width);
      std::memcpy(a.clusters->data<int32_t>() + slot * h,
                  key_clusters.data() + (ring.size() + r) * h, h * sizeof(int32_t));
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
