// The CPU backend's sparse attention (kernels/cpu/sparse_attention.h, sparse_pattern.h): sliding
// windows on the blocked BLAS path, every other pattern and global tokens key by key, the
// segment's global rows then joining the layer's global store.
#include "kernels/cpu/sparse_attention.h"

#include <cstring>
#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/sparse_layer.h"
#include "kernels/cpu/sparse_pattern.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::SparseAttention(const std::vector<SparseAttentionArgs>& batch) {
  std::vector<kernels::KvSpan> spans;
  for (const SparseAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t kv_width = static_cast<int64_t>(a.kv_heads()) * a.head_dim;
    const int64_t t = a.qkv->dim(0);
    const float* qkv = a.qkv->data<float>();
    KeySpans(*a.memory, qkv, kv_width, t, spans, width);
    if (l.pattern == SparsePattern::kWindow && !l.has_globals()) {  // blocked BLAS path
      kernels::SlidingWindowShape shape{a.num_heads,      a.head_dim, t,
                                        a.memory->size(), l.window,   l.dilations.data()};
      shape.kv_group = a.num_heads / a.kv_heads();
      shape.scale = a.scale;
      shape.softcap = a.softcap;
      shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
      shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
      kernels::SlidingWindowAttention(shape, qkv, width + 2 * kv_width, spans, a.out->data<float>(),
                                      width, pool_);
      continue;
    }
    if (kv_width != width || a.scale != 0.0f || a.softcap != 0.0f) {
      return absl::InvalidArgumentError(
          "grouped-query attention, a score scale and soft-capping run on sliding windows only");
    }
    RETURN_IF_ERROR(CheckWindowHoldsRecentPositions(*a.memory, a.position));
    const kernels::SparsePattern pattern = PatternOf(l);
    // The kept global positions (oldest first) and which new positions are global.
    kernels::GlobalKeys globals;
    std::vector<uint8_t> is_global;
    auto& aux = *a.aux;
    if (l.has_globals()) {
      const XlMemory& store = aux.globals;
      globals.k = store.keys().data<float>();
      globals.v = store.values().data<float>();
      globals.ld = width;
      StoredGlobals(aux, &globals.positions, &globals.rows);
      is_global = SegmentGlobals(l, a.position, a.tokens, t);
    }
    kernels::SparsePatternShape shape{
        a.num_heads, a.head_dim, t, a.memory->size(), a.position - a.memory->size(), l.max_global};
    shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
    shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
    kernels::SparsePatternAttention(pattern, shape, qkv, 3 * width, spans, globals, is_global,
                                    a.out->data<float>(), width, pool_);
    if (!l.has_globals()) continue;
    // The segment's global positions join the store (the last max_global stay).
    XlMemory& store = aux.globals;
    for (auto [i, slot] : JoinGlobalStore(is_global, a.position, aux)) {
      const float* row = qkv + i * 3 * width;
      std::memcpy(store.keys().data<float>() + slot * width, row + width, width * sizeof(float));
      std::memcpy(store.values().data<float>() + slot * width, row + 2 * width,
                  width * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
