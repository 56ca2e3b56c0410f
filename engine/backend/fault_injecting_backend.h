// FaultInjectingBackend: a Backend that forwards to another one and fails the operations a fault
// spec names, so tests (and a server a test drives, --backend-faults) meet every error a device
// backend can return: an allocation that finds no memory, a kernel that fails, an error reported
// after the op ran. leveldb's fault-injecting Env is the model.
//
// A spec is comma- (or newline-) separated rules `op:mode[@N[+]][%P]` (base/fault_spec.h); ""
// means no faults:
//   op    alloc (Allocate, AllocateUninitialized), upload (CopyFromHost), download (CopyToHost),
//         copy (Copy, FillRows, GatherRows, ConcatColumns), compute (Linear, SparseLinear,
//         LinearBiasActivation, LayerNorm, AddLayerNorm, BiasActivation, Add, Embedding),
//         attention (RelativeAttention, LinearAttention, SparseAttention, LshAttention,
//         MemoryCompressedAttention, RoutingAttention, LongformerAttention, NystromAttention,
//         BigBirdAttention, FunnelAttention, LinformerAttention, SynthesizerAttention,
//         CompressMemory), append
//         (AppendToMemory), sync (Synchronize, BeginStep, EndStep), or any;
//   mode  oom: RESOURCE_EXHAUSTED, as a device out of memory, the op not run; fail: INTERNAL, as
//         a failed launch, the op not run; late: INTERNAL after the op ran (a deferred device
//         error: its outputs and any state it updates are written);
//   @N, %P  the N-th matching op (@N+: and every later one), with probability P.
// A spec `@PATH` takes the rules from the file PATH as it changes, looked at every 10 ms at most.
//
// Threading: every method is safe from any thread (the base backend's own rules still apply).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

#include "base/fault_spec.h"
#include "base/mutex.h"
#include "engine/backend/backend.h"

namespace mnemo::engine {

enum class BackendOp { kAlloc, kUpload, kDownload, kCopy, kCompute, kAttention, kAppend, kSync };
inline constexpr int kNumBackendOps = 8;

// The op's name in a spec ("alloc").
std::string_view BackendOpName(BackendOp op);

enum class BackendFaultMode { kOom, kFail, kLate };

using BackendFaultRule = FaultRule<BackendOp, BackendFaultMode>;

// The rules of `spec` (not an @PATH spec); INVALID_ARGUMENT naming the bad rule.
absl::StatusOr<std::vector<BackendFaultRule>> ParseBackendFaultSpec(std::string_view spec);

class FaultInjectingBackend final : public Backend {
 public:
  // Starts with no faults (SetSpec arms it).
  explicit FaultInjectingBackend(std::unique_ptr<Backend> base, uint64_t seed = 1);
  ~FaultInjectingBackend() override;
  FaultInjectingBackend(const FaultInjectingBackend&) = delete;
  FaultInjectingBackend& operator=(const FaultInjectingBackend&) = delete;

  // Replaces the rules and restarts their counts: a spec, or `@PATH`. INVALID_ARGUMENT naming the
  // bad rule (the rules stay as they were).
  absl::Status SetSpec(std::string_view spec);

  // Faults injected so far, per op and in all.
  int64_t injected(BackendOp op) const;
  int64_t injected_total() const;

  std::string_view name() const override { return base_->name(); }
  Device device() const override { return base_->device(); }
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) override;
  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override;
  absl::Status Copy(const Tensor& src, Tensor& dst) override;
  absl::Status FillRows(const Tensor& row, Tensor& dst) override;
  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override;
  absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) override;
  absl::Status Synchronize() override;
  DeviceMemoryInfo MemoryInfo() const override { return base_->MemoryInfo(); }
  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override;
  absl::Status SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                            Tensor& y) override;
  absl::Status LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                    Activation act, Tensor& y) override;
  absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         Tensor& y) override;
  absl::Status AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma, const Tensor& beta,
                            float eps, Tensor& normed) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& gamma, float eps, Tensor& y) override;
  absl::Status GatedActivation(const Tensor& x, Activation act, Tensor& y) override;
  absl::Status Rotary(Tensor& x, const std::vector<int64_t>& positions, int num_heads, int head_dim,
                      const Tensor& inv_freq) override;
  absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) override;
  absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) override;
  absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                         Tensor& y) override;
  absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) override;
  absl::Status LinearAttention(const std::vector<LinearAttentionArgs>& batch) override;
  absl::Status SparseAttention(const std::vector<SparseAttentionArgs>& batch) override;
  absl::Status LshAttention(const std::vector<LshAttentionArgs>& batch) override;
  absl::Status MemoryCompressedAttention(
      const std::vector<MemoryCompressedAttentionArgs>& batch) override;
  absl::Status RoutingAttention(const std::vector<RoutingAttentionArgs>& batch) override;
  absl::Status LongformerAttention(const LongformerAttentionArgs& args) override;
  absl::Status NystromAttention(const NystromAttentionArgs& args) override;
  absl::Status BigBirdAttention(const BigBirdAttentionArgs& args) override;
  absl::Status FunnelAttention(const FunnelAttentionArgs& args) override;
  absl::Status LinformerAttention(const LinformerAttentionArgs& args) override;
  absl::Status SynthesizerAttention(const SynthesizerAttentionArgs& args) override;
  absl::Status CompressMemory(const std::vector<CompressArgs>& batch) override;
  absl::Status AppendToMemory(const std::vector<MemoryAppendArgs>& batch) override;
  absl::Status BeginStep(uint64_t key) override;
  absl::Status EndStep() override;
  void AbortStep() override { base_->AbortStep(); }
  void AllowBf16Products(bool allow) override { base_->AllowBf16Products(allow); }

 private:
  // What happens to one op: run it or not, and the error to return (ok: none).
  struct Decision {
    bool run = true;
    absl::Status status;
  };
  Decision Decide(BackendOp op, std::string_view what) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `op` (a callable returning absl::Status) unless the decision says otherwise.
  template <typename F>
  absl::Status Run(BackendOp op, std::string_view what, F&& f);

  const std::unique_ptr<Backend> base_;
  mutable Mutex mu_;
  FaultRuleSet<BackendOp, BackendFaultMode> rules_ ABSL_GUARDED_BY(mu_);
  std::array<int64_t, kNumBackendOps> injected_ ABSL_GUARDED_BY(mu_){};
};

}  // namespace mnemo::engine
