// The CPU backend's relative (dense) attention (kernels/cpu/relative_attention.h): per sequence
// over [compressed memory | XL memory | segment], with the attention mass each memory slot
// receives accumulated into its usage for most_used compression.
#include "kernels/cpu/relative_attention.h"

#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/tensor/weight_type.h"

namespace mnemo::engine::cpu {
namespace {

// A distance table [rows, H·d_h] as the kernels take it: a span whose keys are its rows, float32
// or 16-bit (16-bit session memory).
kernels::KvSpan TableSpan(const Tensor& table) {
  const int64_t rows = table.dim(0), ld = table.dim(1);
  if (table.dtype() == DType::kF32) return {table.data<float>(), nullptr, ld, rows};
  return {nullptr, nullptr, ld, rows, table.data<uint16_t>(), nullptr, WeightTypeOf(table.dtype())};
}

}  // namespace

absl::Status CpuBackend::RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) {
  // Decode steps (one new position) run together, so that the layer's distance table is read
  // once for the whole batch; longer segments run one by one.
  const size_t n = batch.size();
  std::vector<std::vector<kernels::KvSpan>> spans(n);
  std::vector<std::vector<float>> mass(n);
  std::vector<kernels::RelativeDecodeQuery> steps;
  std::vector<const Tensor*> step_tables;  // each step's distance table
  for (size_t i = 0; i < n; ++i) {
    const RelativeAttentionArgs& a = batch[i];
    const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
    const int64_t t = a.qkv->dim(0);
    const float* qkv = a.qkv->data<float>();
    KeySpans(*a.memory, qkv, width, t, spans[i]);
    int64_t before = 0;  // compressed memory rows, ahead of the XL memory
    if (a.compressed != nullptr) {
      std::vector<kernels::KvSpan> compressed;
      a.compressed->AppendSpans(compressed);
      spans[i].insert(spans[i].begin(), compressed.begin(), compressed.end());
      before = a.compressed->size();
    }
    const int64_t m = a.memory->size();
    kernels::RelativeAttentionShape shape{a.num_heads, a.head_dim,   t, before + m, a.mem_len_max,
                                          a.clamp_len, a.same_length};
    shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
    shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
    if (a.usage != nullptr) {
      mass[i].assign(static_cast<size_t>(m), 0.0f);
      shape.key_mass = mass[i].data();
      shape.mass_begin = before;
      shape.mass_end = before + m;
    }
    if (t == 1) {
      steps.push_back({shape, qkv, &spans[i], a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                       a.out->data<float>()});
      step_tables.push_back(a.rel_table);
      continue;
    }
    kernels::RelativeAttention(shape, qkv, 3 * width, spans[i], TableSpan(*a.rel_table),
                               a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                               a.out->data<float>(), width, pool_);
  }
  // One pass per distance table: a batch is one layer's, so all its steps share one.
  std::vector<bool> done(steps.size(), false);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (done[i]) continue;
    std::vector<kernels::RelativeDecodeQuery> group;
    for (size_t j = i; j < steps.size(); ++j) {
      if (done[j] || step_tables[j] != step_tables[i]) continue;
      group.push_back(steps[j]);
      done[j] = true;
    }
    kernels::RelativeAttentionDecode(group, TableSpan(*step_tables[i]), pool_);
  }
  for (size_t i = 0; i < n; ++i) {
    const RelativeAttentionArgs& a = batch[i];
    if (a.usage == nullptr) continue;
    float* usage = a.usage->data<float>();  // key order → ring slots
    for (int64_t j = 0; j < a.memory->size(); ++j) {
      usage[(a.memory->start() + j) % a.memory->capacity()] += mass[i][j];
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
