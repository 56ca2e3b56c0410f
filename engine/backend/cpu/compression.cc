// The CPU backend's compressive memory (MODEL-SPEC §2.2, kernels/cpu/compression.h): evicted rows
// grouped and compressed, the pending buffer and hidden-row ring kept up to date, and the
// compressed rows projected into the compressed memory's ring.
#include "kernels/cpu/compression.h"

#include <cstring>
#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/memory/compression_plan.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::CompressMemory(const std::vector<CompressArgs>& batch) {
  for (const CompressArgs& a : batch) RETURN_IF_ERROR(CompressOne(a));
  return absl::OkStatus();
}

absl::Status CpuBackend::CompressOne(const CompressArgs& a) {
  const auto& l = *a.layer;
  auto& aux = *a.aux;
  const XlMemory& mem = *a.memory;
  const int64_t t = a.hidden->dim(0), d = a.hidden->dim(1), c = l.compression_rate;
  const bool most_used = l.compression == Compression::kMostUsed;
  float* hidden = aux.hidden.data<float>();
  float* pending = aux.pending.data<float>();
  float* usage = most_used ? aux.usage.data<float>() : nullptr;
  float* pending_usage = most_used ? aux.pending_usage.data<float>() : nullptr;
  const float* in = a.hidden->data<float>();
  const CompressionPlan plan = PlanCompression(mem, aux.pending_rows, t, c);
  auto row_of = [&](const CompressionRow& r) { return RowAddress(r, pending, hidden, in, d); };
  auto mass_of = [&](const CompressionRow& r) {  // most_used: attention mass so far
    switch (r.source) {
      case CompressionRow::Source::kPending:
        return pending_usage[r.index];
      case CompressionRow::Source::kRing:
        return usage[r.index];
      case CompressionRow::Source::kSegment:
        break;
    }
    return 0.0f;
  };
  const int64_t taps = l.compress_taps();
  const int64_t group_width = taps > 0 ? d * taps : d;
  const int64_t num_groups = plan.num_groups();
  std::vector<float> groups(static_cast<size_t>(num_groups * group_width));
  std::vector<float> group_in(static_cast<size_t>(c * d)), masses(static_cast<size_t>(c));
  for (int64_t g = 0; g < num_groups; ++g) {
    for (int64_t k = 0; k < c; ++k) {  // the group's rows, contiguous, oldest first
      const CompressionRow& r = plan.groups[static_cast<size_t>(g * c + k)];
      std::memcpy(group_in.data() + k * d, row_of(r), d * sizeof(float));
      if (most_used) masses[static_cast<size_t>(k)] = mass_of(r);
    }
    float* out = groups.data() + g * group_width;
    switch (l.compression) {
      case Compression::kMaxPool:
      case Compression::kMeanPool:
        kernels::PoolRows(l.compression == Compression::kMaxPool, group_in.data(), c, d, d, out);
        break;
      case Compression::kConv1d:
      case Compression::kDilatedConv:  // packed now, multiplied below in one product
        kernels::PackConvTaps(group_in.data(), taps, c / taps, d, d, out);
        break;
      case Compression::kMostUsed:
        std::memcpy(out, group_in.data() + kernels::MostUsedRow(masses.data(), c) * d,
                    d * sizeof(float));
        break;
    }
  }
  aux.compressions += num_groups;
  aux.tokens_compressed += num_groups * c;
  // The incomplete group waits in the pending buffer (after the groups read it) …
  for (size_t r = 0; r < plan.pending.size(); ++r) {
    const CompressionRow& row = plan.pending[r];
    const auto slot = static_cast<int64_t>(r);
    if (row.source == CompressionRow::Source::kPending && row.index == slot) continue;
    const float mass = most_used ? mass_of(row) : 0.0f;
    std::memmove(pending + slot * d, row_of(row), d * sizeof(float));
    if (most_used) pending_usage[slot] = mass;
  }
  aux.pending_rows = static_cast<int64_t>(plan.pending.size());
  // … and the segment's hidden rows take the slots its keys/values will (fresh usage).
  for (int64_t r = 0; r < t; ++r) {
    const int64_t slot = mem.SlotOfNewRow(r, t);
    if (slot < 0) continue;
    std::memcpy(hidden + slot * d, in + r * d, d * sizeof(float));
    if (most_used) usage[slot] = 0.0f;
  }
  const int64_t n = num_groups;
  if (n == 0) return absl::OkStatus();
  // Project the compressed rows to keys/values; they join the compressed memory's ring.
  Tensor rows = Tensor::Empty(DType::kF32, {n, d});
  if (taps > 0) {
    kernels::ConvGroups(a.compress->data<float>(), a.compress_bias->data<float>(), taps, n,
                        groups.data(), d, rows.data<float>());
  } else {
    std::memcpy(rows.data<float>(), groups.data(), groups.size() * sizeof(float));
  }
  const int64_t width = a.kv_weight->dim(0) / 2;
  Tensor kv = Tensor::Empty(DType::kF32, {n, 2 * width});
  RETURN_IF_ERROR(Linear(rows, *a.kv_weight, nullptr, kv));
  XlMemory& cm = aux.compressed;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t slot = cm.SlotOfNewRow(r, n);
    if (slot < 0) continue;
    cm.WriteRow(slot, kv.data<float>() + r * 2 * width, kv.data<float>() + r * 2 * width + width);
  }
  cm.Advance(n);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
