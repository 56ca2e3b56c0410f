// The CPU backend's memory-compressed attention (kernels/cpu/memory_compressed_attention.h): the
// open block's stored rows and the segment's keys/values side by side in float32, the blocks they
// complete compressed by one product each for keys and values, every query's attention, then the
// new rows into the rings.
#include "kernels/cpu/memory_compressed_attention.h"

#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/half_linear.h"

namespace mnemo::engine::cpu {
namespace {

// Rows [begin, end) of `spans` (keys, or values) into dst, `width` floats a row, widened from a
// 16-bit ring.
void CopyRows(const std::vector<kernels::KvSpan>& spans, bool values, int64_t begin, int64_t end,
              int64_t width, float* dst) {
  kernels::ForEachKeyRange(
      spans, begin, end, [&](const kernels::KvSpan& span, int64_t row, int64_t key, int64_t count) {
        float* out = dst + (key - begin) * width;
        if (span.type == kernels::WeightType::kF32) {
          const float* src = (values ? span.v : span.k) + row * span.ld;
          for (int64_t r = 0; r < count; ++r) {
            std::memcpy(out + r * width, src + r * span.ld, width * sizeof(float));
          }
        } else {
          kernels::WidenRows((values ? span.v16 : span.k16) + row * span.ld, span.ld, span.type,
                             count, width, out, width);
        }
      });
}

}  // namespace

absl::Status CpuBackend::MemoryCompressedAttention(
    const std::vector<MemoryCompressedAttentionArgs>& batch) {
  std::vector<kernels::KvSpan> stored, compressed, raw;
  for (const MemoryCompressedAttentionArgs& a : batch) {
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t t = a.qkv->dim(0), ld = 3 * width;
    const int64_t c = a.layer->compression_rate;
    const kernels::MemoryCompressedShape shape{a.num_heads, a.head_dim, t,
                                               a.position,  c,          a.layer->cmem_len};
    const int64_t open = kernels::OpenBlockRows(shape), blocks = kernels::BlocksCompleted(shape);
    // The open block's stored positions (the last `open` of the ring), then the segment's.
    // (buffers kept per thread: a decode step allocates nothing)
    thread_local std::vector<float> keys, values, ckeys, cvalues;
    keys.resize(static_cast<size_t>((open + t) * width));
    values.resize(keys.size());
    stored.clear();
    a.block->AppendSpans(stored);
    const int64_t held = a.block->size();
    CopyRows(stored, false, held - open, held, width, keys.data());
    CopyRows(stored, true, held - open, held, width, values.data());
    const float* x = a.qkv->data<float>();
    for (int64_t r = 0; r < t; ++r) {
      std::memcpy(keys.data() + (open + r) * width, x + r * ld + width, width * sizeof(float));
      std::memcpy(values.data() + (open + r) * width, x + r * ld + 2 * width,
                  width * sizeof(float));
    }
    // Each completed block's c rows are one row of c·width inputs to the convolution's product.
    ckeys.resize(static_cast<size_t>(blocks * width));
    cvalues.resize(ckeys.size());
    if (blocks > 0) {
      kernels::Linear(keys.data(), c * width, a.compress_k->data<float>(),
                      a.compress_k_bias->data<float>(), ckeys.data(), width, blocks, c * width,
                      width, pool_);
      kernels::Linear(values.data(), c * width, a.compress_v->data<float>(),
                      a.compress_v_bias->data<float>(), cvalues.data(), width, blocks, c * width,
                      width, pool_);
    }
    compressed.clear();
    a.compressed->AppendSpans(compressed);
    compressed.push_back({ckeys.data(), cvalues.data(), width, blocks});
    raw.assign(1, {keys.data(), values.data(), width, open + t});
    kernels::MemoryCompressedAttention(shape, x, ld, compressed, raw, a.out->data<float>(), width,
                                       pool_);
    for (int64_t r = 0; r < t; ++r) {
      const int64_t slot = a.block->SlotOfNewRow(r, t);
      if (slot >= 0) {
        a.block->WriteRow(slot, keys.data() + (open + r) * width,
                          values.data() + (open + r) * width);
      }
    }
    for (int64_t r = 0; r < blocks; ++r) {
      const int64_t slot = a.compressed->SlotOfNewRow(r, blocks);
      if (slot >= 0)
        a.compressed->WriteRow(slot, ckeys.data() + r * width, cvalues.data() + r * width);
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
