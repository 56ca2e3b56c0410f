// The CUDA backend's sparse attention (kernels/cuda/sparse_attention.h): contiguous windows as a
// band of the relative-attention kernel, dilated windows on the warp-per-query window kernel,
// every other pattern and global tokens on the listed-keys kernel, whose global rows then join
// the layer's global store.
#include "kernels/cuda/sparse_attention.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/sparse_layer.h"
#include "kernels/cpu/sparse_pattern.h"

namespace mnemo::engine::cuda {

// Sparse attention. A window of dilation 1 (no global tokens) is a band of the causal mask:
// the relative-attention kernel without its positional term runs it, tiled (key tiles shared
// by a block's queries through shared memory, tiles outside the band never visited, long
// memories split across blocks for decode), with every such sequence of the batch in one
// launch. Dilated windows take the warp-per-query window kernel; the other patterns and
// global tokens the listed-keys kernel.
absl::Status CudaBackend::SparseAttention(const std::vector<SparseAttentionArgs>& batch) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  std::vector<kc::AttentionSequence> band_seqs;
  int64_t window = 0;
  for (const SparseAttentionArgs& a : batch) {
    const auto& l = *a.layer;
    if (a.head_dim > 128) {
      return absl::InvalidArgumentError(
          absl::StrCat("the CUDA sparse attention kernels support d_head ≤ 128, not ", a.head_dim));
    }
    // (grouped-query attention: the listed-keys kernel, which reads each query head's key head)
    if (l.pattern != SparsePattern::kWindow || l.has_globals() || a.kv_heads() != a.num_heads ||
        a.scale != 0.0f || a.softcap != 0.0f) {
      RETURN_IF_ERROR(GatheredSparseAttention(a));
      continue;
    }
    const XlMemory& m = *a.memory;
    const bool band =
        std::all_of(l.dilations.begin(), l.dilations.end(), [](int64_t dil) { return dil == 1; });
    if (band) {  // a contiguous window: the tiled kernel, below
      band_seqs.push_back(RingSequence(*a.qkv, m, *a.out, a.prev_scores, a.scores));
      window = l.window;
      continue;
    }
    ASSIGN_OR_RETURN(Tensor dilations,
                     Stage(l.dilations.data(), l.dilations.size() * sizeof(int64_t)));
    kc::SlidingWindowLaunch launch{a.qkv->data<float>(),
                                   m.keys().data<float>(),
                                   m.values().data<float>(),
                                   a.out->data<float>(),
                                   dilations.data<int64_t>(),
                                   a.qkv->dim(0),
                                   m.size(),
                                   std::max<int64_t>(m.capacity(), 1),
                                   m.start(),
                                   l.window,
                                   a.num_heads,
                                   a.head_dim};
    launch.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
    launch.scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
    Note({21, Addr(launch.qkv), Addr(launch.mem_k), Addr(launch.mem_v), Addr(launch.out),
          Addr(launch.dilations), U(launch.query_len), U(launch.capacity), U(launch.window),
          U(launch.num_heads), U(launch.head_dim), Addr(launch.prev_scores), Addr(launch.scores)});
    RETURN_IF_ERROR(Launch([this, launch] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::SlidingWindowAttention(launch, ctx_.stream()));
      return absl::OkStatus();
    }));
  }
  if (band_seqs.empty()) return absl::OkStatus();
  // same_length with mem_len_max = W: query i sees keys M + i − W + 1 … M + i.
  const SparseAttentionArgs& first = batch.front();
  const RelativeKernelParams params{nullptr,        nullptr, nullptr, first.num_heads,
                                    first.head_dim, window,  0,       true};
  return LaunchRelativeKernel(band_seqs, params, /*cmem_len_max=*/0, /*with_usage=*/false);
}

// Any sparse pattern, global tokens included: the host lists each (head, query)'s keys (the
// plan the CPU uses, kernels::SparseQueryKeys) as device row addresses, one warp per task
// attends over them, and the segment's global rows then join the layer's global store.
absl::Status CudaBackend::GatheredSparseAttention(const SparseAttentionArgs& a) {
  const auto& l = *a.layer;
  auto& aux = *a.aux;
  const XlMemory& m = *a.memory;
  // Queries are w wide, keys and values kv_w (grouped-query attention: fewer heads); qkv rows
  // hold q | k | v.
  const int64_t w = static_cast<int64_t>(a.num_heads) * a.head_dim, t = a.qkv->dim(0);
  const int64_t kv_w = static_cast<int64_t>(a.kv_heads()) * a.head_dim, ld = w + 2 * kv_w;
  const float* qkv = a.qkv->data<float>();
  RETURN_IF_ERROR(CheckWindowHoldsRecentPositions(m, a.position));
  const kernels::SparsePattern pattern = PatternOf(l);
  std::vector<int64_t> stored, slots;
  std::vector<uint8_t> is_global;
  if (l.has_globals()) {
    StoredGlobals(aux, &stored, &slots);
    is_global = SegmentGlobals(l, a.position, a.tokens, t);
  }
  const kernels::SparsePatternShape shape{a.num_heads,           a.head_dim,  t, m.size(),
                                          a.position - m.size(), l.max_global};
  const kernels::SparseQueryKeys query_keys(pattern, shape, stored, is_global);
  std::vector<int64_t> offsets = {0};
  std::vector<const float*> keys, values;
  std::vector<int64_t> positions, key_index;  // key_index: RealFormer's score columns
  const bool residual = a.prev_scores != nullptr || a.scores != nullptr;
  for (int h = 0; h < a.num_heads; ++h) {
    for (int64_t i = 0; i < t; ++i) {
      query_keys.Positions(h, i, &positions);
      for (int64_t pos : positions) {
        if (residual) key_index.push_back(pos - shape.first_position);  // (no globals here)
        if (pos >= shape.first_position) {
          const int64_t j = pos - shape.first_position;
          if (j < m.size()) {
            const int64_t slot = (m.start() + j) % m.capacity();
            keys.push_back(m.keys().data<float>() + slot * kv_w);
            values.push_back(m.values().data<float>() + slot * kv_w);
          } else {
            const float* row = qkv + (j - m.size()) * ld;
            keys.push_back(row + w);
            values.push_back(row + w + kv_w);
          }
        } else {  // a kept global position older than the ring
          const auto it = std::lower_bound(stored.begin(), stored.end(), pos);
          const int64_t row = slots[static_cast<size_t>(it - stored.begin())];
          keys.push_back(aux.globals.keys().data<float>() + row * w);
          values.push_back(aux.globals.values().data<float>() + row * w);
        }
      }
      offsets.push_back(static_cast<int64_t>(keys.size()));
    }
  }
  // One upload: offsets | key rows | value rows | key indices (RealFormer).
  const size_t offset_bytes = offsets.size() * sizeof(int64_t);
  const size_t list_bytes = keys.size() * sizeof(const float*);
  const size_t index_bytes = key_index.size() * sizeof(int64_t);
  std::vector<char> host(offset_bytes + 2 * list_bytes + index_bytes);
  std::memcpy(host.data(), offsets.data(), offset_bytes);
  if (list_bytes > 0) {
    std::memcpy(host.data() + offset_bytes, keys.data(), list_bytes);
    std::memcpy(host.data() + offset_bytes + list_bytes, values.data(), list_bytes);
  }
  if (index_bytes > 0) {
    std::memcpy(host.data() + offset_bytes + 2 * list_bytes, key_index.data(), index_bytes);
  }
  ASSIGN_OR_RETURN(Tensor staged, Stage(host.data(), host.size()));
  auto* base = static_cast<char*>(staged.raw());
  kc::GatheredAttentionLaunch launch{
      qkv,
      ld,
      reinterpret_cast<const int64_t*>(base),
      reinterpret_cast<const float* const*>(base + offset_bytes),
      reinterpret_cast<const float* const*>(base + offset_bytes + list_bytes),
      a.out->data<float>(),
      w,
      t,
      a.num_heads,
      a.head_dim};
  launch.kv_group = a.num_heads / a.kv_heads();
  launch.scale = a.scale;
  launch.softcap = a.softcap;
  if (residual) {
    launch.key_index = reinterpret_cast<const int64_t*>(base + offset_bytes + 2 * list_bytes);
    launch.key_count = m.size() + t;
    launch.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
    launch.scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
  }
  Note({22, Addr(base), host.size(), Addr(launch.q), Addr(launch.out), U(t), U(launch.num_heads),
        U(launch.head_dim), U(launch.kv_group), U(std::bit_cast<uint32_t>(launch.scale)),
        U(std::bit_cast<uint32_t>(launch.softcap)), Addr(launch.prev_scores), Addr(launch.scores)});
  RETURN_IF_ERROR(Launch([this, launch] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::GatheredAttention(launch, ctx_.stream()));
    return absl::OkStatus();
  }));
  if (!l.has_globals()) return absl::OkStatus();
  // The segment's global rows join the store (after the attention read it: stream order).
  std::vector<const float*> src;
  std::vector<float*> dst;
  for (auto [i, slot] : JoinGlobalStore(is_global, a.position, aux)) {
    const float* row = qkv + i * 3 * w;
    src.push_back(row + w);
    dst.push_back(aux.globals.keys().data<float>() + slot * w);
    src.push_back(row + 2 * w);
    dst.push_back(aux.globals.values().data<float>() + slot * w);
  }
  return CopyRowPairs(src, dst, w);
}

}  // namespace mnemo::engine::cuda
