// FaultInjectingBackend: the op and mode names of its fault spec, the per-op decision and the
// forwarding of every op to the base backend.
#include "engine/backend/fault_injecting_backend.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// Abseil here is built with its own string_view (Debian's ABI), distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

// Names by enum value (BackendOp, BackendFaultMode).
constexpr std::array<std::string_view, kNumBackendOps> kOpNames = {
    "alloc", "upload", "download", "copy", "compute", "attention", "append", "sync"};
constexpr std::array<std::string_view, 3> kModeNames = {"oom", "fail", "late"};

// The spec file is looked at every few milliseconds at most, not on every op.
constexpr auto kSpecCheckInterval = std::chrono::milliseconds(10);

}  // namespace

std::string_view BackendOpName(BackendOp op) { return kOpNames[static_cast<size_t>(op)]; }

absl::StatusOr<std::vector<BackendFaultRule>> ParseBackendFaultSpec(std::string_view spec) {
  return ParseTypedFaultRules<BackendOp, BackendFaultMode>("backend fault spec", spec, kOpNames,
                                                           kModeNames);
}

FaultInjectingBackend::FaultInjectingBackend(std::unique_ptr<Backend> base, uint64_t seed)
    : base_(std::move(base)),
      rules_("backend fault spec", &ParseBackendFaultSpec, seed, kSpecCheckInterval) {}

FaultInjectingBackend::~FaultInjectingBackend() = default;

absl::Status FaultInjectingBackend::SetSpec(std::string_view spec) {
  MutexLock lock(&mu_);
  return rules_.Set(spec);
}

FaultInjectingBackend::Decision FaultInjectingBackend::Decide(BackendOp op, std::string_view what) {
  MutexLock lock(&mu_);
  const BackendFaultRule* fired = rules_.Pick(op);
  if (fired == nullptr) return {};
  ++injected_[static_cast<size_t>(op)];
  const std::string where = absl::StrCat("injected fault (", AbslView(BackendOpName(op)), ":",
                                         AbslView(kModeNames[static_cast<size_t>(fired->mode)]),
                                         ") in ", AbslView(what), " on ", AbslView(base_->name()));
  switch (fired->mode) {
    case BackendFaultMode::kOom:
      return {false, absl::ResourceExhaustedError(absl::StrCat(where, ": out of device memory"))};
    case BackendFaultMode::kFail:
      return {false, absl::InternalError(absl::StrCat(where, ": the operation failed"))};
    case BackendFaultMode::kLate:
      return {true, absl::InternalError(absl::StrCat(where, ": error reported after it ran"))};
  }
  return {false, absl::InternalError(where)};
}

template <typename F>
absl::Status FaultInjectingBackend::Run(BackendOp op, std::string_view what, F&& f) {
  Decision d = Decide(op, what);
  if (!d.run) return d.status;
  absl::Status s = f();
  if (!s.ok()) return s;
  return d.status;
}

int64_t FaultInjectingBackend::injected(BackendOp op) const {
  MutexLock lock(&mu_);
  return injected_[static_cast<size_t>(op)];
}

int64_t FaultInjectingBackend::injected_total() const {
  MutexLock lock(&mu_);
  int64_t total = 0;
  for (const int64_t n : injected_) total += n;
  return total;
}

// Ops that return a tensor: a late fault drops it (the caller sees only the error) after the
// base made it, so its memory is allocated and released as with a deferred device error.
absl::StatusOr<Tensor> FaultInjectingBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  Decision d = Decide(BackendOp::kAlloc, "Allocate");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->Allocate(dtype, std::move(shape)));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::AllocateUninitialized(DType dtype,
                                                                    std::vector<int64_t> shape) {
  Decision d = Decide(BackendOp::kAlloc, "AllocateUninitialized");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->AllocateUninitialized(dtype, std::move(shape)));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::CopyFromHost(const Tensor& host) {
  Decision d = Decide(BackendOp::kUpload, "CopyFromHost");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->CopyFromHost(host));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::CopyToHost(const Tensor& t) {
  Decision d = Decide(BackendOp::kDownload, "CopyToHost");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor out, base_->CopyToHost(t));
  if (!d.status.ok()) return d.status;
  return out;
}

absl::Status FaultInjectingBackend::Copy(const Tensor& src, Tensor& dst) {
  return Run(BackendOp::kCopy, "Copy", [&] { return base_->Copy(src, dst); });
}

absl::Status FaultInjectingBackend::FillRows(const Tensor& row, Tensor& dst) {
  return Run(BackendOp::kCopy, "FillRows", [&] { return base_->FillRows(row, dst); });
}

absl::Status FaultInjectingBackend::GatherRows(const Tensor& x, const std::vector<int64_t>& rows,
                                               Tensor& y) {
  return Run(BackendOp::kCopy, "GatherRows", [&] { return base_->GatherRows(x, rows, y); });
}

absl::Status FaultInjectingBackend::ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) {
  return Run(BackendOp::kCopy, "ConcatColumns", [&] { return base_->ConcatColumns(a, b, y); });
}

absl::Status FaultInjectingBackend::Synchronize() {
  return Run(BackendOp::kSync, "Synchronize", [&] { return base_->Synchronize(); });
}

absl::Status FaultInjectingBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias,
                                           Tensor& y) {
  return Run(BackendOp::kCompute, "Linear", [&] { return base_->Linear(x, w, bias, y); });
}

absl::Status FaultInjectingBackend::SparseLinear(const Tensor& x, const SparseWeight& w,
                                                 const Tensor* bias, Tensor& y) {
  return Run(BackendOp::kCompute, "SparseLinear",
             [&] { return base_->SparseLinear(x, w, bias, y); });
}

absl::Status FaultInjectingBackend::LinearBiasActivation(const Tensor& x, const Tensor& w,
                                                         const Tensor& bias, Activation act,
                                                         Tensor& y) {
  return Run(BackendOp::kCompute, "LinearBiasActivation",
             [&] { return base_->LinearBiasActivation(x, w, bias, act, y); });
}

absl::Status FaultInjectingBackend::LayerNorm(const Tensor& x, const Tensor& gamma,
                                              const Tensor& beta, float eps, Tensor& y) {
  return Run(BackendOp::kCompute, "LayerNorm",
             [&] { return base_->LayerNorm(x, gamma, beta, eps, y); });
}

absl::Status FaultInjectingBackend::AddLayerNorm(Tensor& x, const Tensor& delta,
                                                 const Tensor& gamma, const Tensor& beta, float eps,
                                                 Tensor& normed) {
  return Run(BackendOp::kCompute, "AddLayerNorm",
             [&] { return base_->AddLayerNorm(x, delta, gamma, beta, eps, normed); });
}

absl::Status FaultInjectingBackend::RmsNorm(const Tensor& x, const Tensor& gamma, float eps,
                                            Tensor& y) {
  return Run(BackendOp::kCompute, "RmsNorm", [&] { return base_->RmsNorm(x, gamma, eps, y); });
}

absl::Status FaultInjectingBackend::GatedActivation(const Tensor& x, Activation act, Tensor& y) {
  return Run(BackendOp::kCompute, "GatedActivation",
             [&] { return base_->GatedActivation(x, act, y); });
}

absl::Status FaultInjectingBackend::Rotary(Tensor& x, const std::vector<int64_t>& positions,
                                           int num_heads, int head_dim, const Tensor& inv_freq) {
  return Run(BackendOp::kCompute, "Rotary",
             [&] { return base_->Rotary(x, positions, num_heads, head_dim, inv_freq); });
}

absl::Status FaultInjectingBackend::BiasActivation(const Tensor& bias, Activation act, Tensor& y) {
  return Run(BackendOp::kCompute, "BiasActivation",
             [&] { return base_->BiasActivation(bias, act, y); });
}

absl::Status FaultInjectingBackend::Add(const Tensor& a, const Tensor& b, Tensor& y) {
  return Run(BackendOp::kCompute, "Add", [&] { return base_->Add(a, b, y); });
}

absl::Status FaultInjectingBackend::Embedding(const Tensor& table, const std::vector<int32_t>& ids,
                                              float scale, Tensor& y) {
  return Run(BackendOp::kCompute, "Embedding",
             [&] { return base_->Embedding(table, ids, scale, y); });
}

absl::Status FaultInjectingBackend::RelativeAttention(
    const std::vector<RelativeAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "RelativeAttention",
             [&] { return base_->RelativeAttention(batch); });
}

absl::Status FaultInjectingBackend::LinearAttention(const std::vector<LinearAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "LinearAttention",
             [&] { return base_->LinearAttention(batch); });
}

absl::Status FaultInjectingBackend::SparseAttention(const std::vector<SparseAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "SparseAttention",
             [&] { return base_->SparseAttention(batch); });
}

absl::Status FaultInjectingBackend::LshAttention(const std::vector<LshAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "LshAttention", [&] { return base_->LshAttention(batch); });
}

absl::Status FaultInjectingBackend::MemoryCompressedAttention(
    const std::vector<MemoryCompressedAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "MemoryCompressedAttention",
             [&] { return base_->MemoryCompressedAttention(batch); });
}

absl::Status FaultInjectingBackend::RoutingAttention(
    const std::vector<RoutingAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "RoutingAttention",
             [&] { return base_->RoutingAttention(batch); });
}

absl::Status FaultInjectingBackend::LongformerAttention(const LongformerAttentionArgs& args) {
  return Run(BackendOp::kAttention, "LongformerAttention",
             [&] { return base_->LongformerAttention(args); });
}

absl::Status FaultInjectingBackend::BigBirdAttention(const BigBirdAttentionArgs& args) {
  return Run(BackendOp::kAttention, "BigBirdAttention",
             [&] { return base_->BigBirdAttention(args); });
}

absl::Status FaultInjectingBackend::FunnelAttention(const FunnelAttentionArgs& args) {
  return Run(BackendOp::kAttention, "FunnelAttention",
             [&] { return base_->FunnelAttention(args); });
}

absl::Status FaultInjectingBackend::NystromAttention(const NystromAttentionArgs& args) {
  return Run(BackendOp::kAttention, "NystromAttention",
             [&] { return base_->NystromAttention(args); });
}

absl::Status FaultInjectingBackend::LinformerAttention(const LinformerAttentionArgs& args) {
  return Run(BackendOp::kAttention, "LinformerAttention",
             [&] { return base_->LinformerAttention(args); });
}

absl::Status FaultInjectingBackend::SynthesizerAttention(const SynthesizerAttentionArgs& args) {
  return Run(BackendOp::kAttention, "SynthesizerAttention",
             [&] { return base_->SynthesizerAttention(args); });
}

absl::Status FaultInjectingBackend::CompressMemory(const std::vector<CompressArgs>& batch) {
  return Run(BackendOp::kAttention, "CompressMemory", [&] { return base_->CompressMemory(batch); });
}

absl::Status FaultInjectingBackend::AppendToMemory(const std::vector<MemoryAppendArgs>& batch) {
  return Run(BackendOp::kAppend, "AppendToMemory", [&] { return base_->AppendToMemory(batch); });
}

// A failed BeginStep leaves no step open (the model does not abort it), so every fault there
// fails before the base sees the call.
absl::Status FaultInjectingBackend::BeginStep(uint64_t key) {
  Decision d = Decide(BackendOp::kSync, "BeginStep");
  if (!d.status.ok()) return d.status;
  return base_->BeginStep(key);
}

// A failed EndStep closes the step too: the base abandons it (fail) or runs it (late).
absl::Status FaultInjectingBackend::EndStep() {
  Decision d = Decide(BackendOp::kSync, "EndStep");
  if (!d.run) {
    base_->AbortStep();
    return d.status;
  }
  RETURN_IF_ERROR(base_->EndStep());
  return d.status;
}

}  // namespace mnemo::engine
