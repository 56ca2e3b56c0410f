// The CUDA backend's compressive memory (MODEL-SPEC §2.2, kernels/cuda/compression.h): evicted
// rows grouped by pointer tables (pool, pack taps, most used), the pending buffer and hidden-row
// ring kept up to date, and the compressed rows projected into the compressed memory's ring.
#include "kernels/cuda/compression.h"

#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/memory/compression_plan.h"

namespace mnemo::engine::cuda {

// Compressive memory (MODEL-SPEC §2.2), as the CPU backend does it: the host does the
// bookkeeping (which rows are evicted, which groups complete) and the device moves and
// combines rows through pointer tables. Per sequence, in stream order: complete groups are
// pooled or packed (GroupRows), the rows of an incomplete group go to the pending buffer, the
// segment's hidden rows take their ring slots, and the new compressed rows are convolved
// (one product), projected to keys/values (one product) and written into the compressed ring.
absl::Status CudaBackend::CompressMemory(const std::vector<CompressArgs>& batch) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  for (const CompressArgs& a : batch) RETURN_IF_ERROR(CompressOne(a));
  return absl::OkStatus();
}

absl::Status CudaBackend::CompressOne(const CompressArgs& a) {
  const auto& l = *a.layer;
  const bool most_used = l.compression == Compression::kMostUsed;
  auto& aux = *a.aux;
  const XlMemory& mem = *a.memory;
  const int64_t t = a.hidden->dim(0), d = a.hidden->dim(1), c = l.compression_rate;
  float* hidden = aux.hidden.data<float>();
  float* pending = aux.pending.data<float>();
  const float* in = a.hidden->data<float>();
  const CompressionPlan plan = PlanCompression(mem, aux.pending_rows, t, c);
  auto row_of = [&](const CompressionRow& r) { return RowAddress(r, pending, hidden, in, d); };
  // most_used: each row's attention mass so far (a segment row has none: a device zero).
  float* usage = most_used ? aux.usage.data<float>() : nullptr;
  float* pending_usage = most_used ? aux.pending_usage.data<float>() : nullptr;
  const float* zero = nullptr;
  if (most_used) {
    const float host_zero = 0.0f;
    ASSIGN_OR_RETURN(Tensor staged_zero, Stage(&host_zero, sizeof(float)));
    zero = staged_zero.data<float>();
  }
  auto mass_of = [&](const CompressionRow& r) -> const float* {
    if (r.source == CompressionRow::Source::kSegment) return zero;
    return (r.source == CompressionRow::Source::kPending ? pending_usage : usage) + r.index;
  };
  std::vector<const float*> group_rows;  // every complete group's rows, then their masses
  for (const CompressionRow& r : plan.groups) group_rows.push_back(row_of(r));
  if (most_used) {
    for (const CompressionRow& r : plan.groups) group_rows.push_back(mass_of(r));
  }
  aux.compressions += plan.num_groups();
  aux.tokens_compressed += plan.num_groups() * c;
  const int64_t n = plan.num_groups();
  const int64_t taps = l.compress_taps();
  Tensor grouped;  // [n, D] (pooling) or packed taps [n, D·taps] (convolutions)
  if (n > 0) {
    const kc::GroupOp op = taps > 0                                 ? kc::GroupOp::kPackTaps
                           : most_used                              ? kc::GroupOp::kMostUsed
                           : l.compression == Compression::kMaxPool ? kc::GroupOp::kMax
                                                                    : kc::GroupOp::kMean;
    ASSIGN_OR_RETURN(grouped, NewTensor(DType::kF32, {n, taps > 0 ? d * taps : d}));
    ASSIGN_OR_RETURN(Tensor staged,
                     Stage(group_rows.data(), group_rows.size() * sizeof(const float*)));
    const auto* table = static_cast<const float* const*>(staged.raw());
    const float* const* masses = most_used ? table + plan.groups.size() : nullptr;
    float* out = grouped.data<float>();
    const int ci = static_cast<int>(c), ti = static_cast<int>(taps);
    const int step = taps > 0 ? static_cast<int>(c / taps) : 1;
    Note({13, Addr(table), U(n), U(ci), U(d), U(static_cast<int>(op)), U(ti), U(step), Addr(out)});
    RETURN_IF_ERROR(Launch([this, table, masses, n, ci, d, op, ti, step, out] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::GroupRows(table, masses, n, ci, d, op, ti, step, out, ctx_.stream()));
      return absl::OkStatus();
    }));
  }
  // The incomplete group waits in the pending buffer (rows already there stay put), then the
  // segment's hidden rows take the ring slots its keys/values will: both after the groups
  // read their rows (stream order), the ring writes in a launch of their own.
  std::vector<const float*> src, mass_src;
  std::vector<float*> dst, mass_dst;
  for (size_t r = 0; r < plan.pending.size(); ++r) {
    const CompressionRow& row = plan.pending[r];
    const auto at = static_cast<int64_t>(r);
    if (row.source == CompressionRow::Source::kPending && row.index == at) continue;
    src.push_back(row_of(row));
    dst.push_back(pending + at * d);
    if (most_used) {  // … with its mass
      mass_src.push_back(mass_of(row));
      mass_dst.push_back(pending_usage + at);
    }
  }
  RETURN_IF_ERROR(CopyRowPairs(src, dst, d));
  RETURN_IF_ERROR(CopyRowPairs(mass_src, mass_dst, 1));
  aux.pending_rows = static_cast<int64_t>(plan.pending.size());
  src.clear();
  dst.clear();
  std::vector<const float*> zeros;
  std::vector<float*> fresh_usage;
  for (int64_t r = 0; r < t; ++r) {
    const int64_t slot = mem.SlotOfNewRow(r, t);
    if (slot < 0) continue;
    src.push_back(in + r * d);
    dst.push_back(hidden + slot * d);
    if (most_used) {  // fresh usage for the new rows
      zeros.push_back(zero);
      fresh_usage.push_back(usage + slot);
    }
  }
  RETURN_IF_ERROR(CopyRowPairs(src, dst, d));
  RETURN_IF_ERROR(CopyRowPairs(zeros, fresh_usage, 1));
  if (n == 0) return absl::OkStatus();
  Tensor rows = grouped;
  if (taps > 0) {
    ASSIGN_OR_RETURN(rows, NewTensor(DType::kF32, {n, d}));
    ASSIGN_OR_RETURN(const Tensor weight, a.compress->Reshaped({d, d * taps}));
    RETURN_IF_ERROR(Linear(grouped, weight, a.compress_bias, rows));
  }
  const int64_t width = a.kv_weight->dim(0) / 2;
  ASSIGN_OR_RETURN(Tensor kv, NewTensor(DType::kF32, {n, 2 * width}));
  RETURN_IF_ERROR(Linear(rows, *a.kv_weight, nullptr, kv));
  XlMemory& cm = aux.compressed;
  src.clear();
  dst.clear();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t slot = cm.SlotOfNewRow(r, n);
    if (slot < 0) continue;
    src.push_back(kv.data<float>() + r * 2 * width);
    dst.push_back(cm.keys().data<float>() + slot * width);
    src.push_back(kv.data<float>() + r * 2 * width + width);
    dst.push_back(cm.values().data<float>() + slot * width);
  }
  RETURN_IF_ERROR(CopyRowPairs(src, dst, width));
  cm.Advance(n);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cuda
