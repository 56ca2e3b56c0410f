// CpuBackend: the Backend on the host and the oracle every other backend is tested against
// (internal to engine/backend/cpu/). Its ops are defined by concern: plain ops in cpu_backend.cc,
// one file per attention or memory kind, named as its kernels in kernels/cpu/. Products run on
// OpenBLAS, the rest as vectorised loops on the process-wide thread pool; ops never fail for
// valid shapes and finish before they return.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "kernels/cpu/half_linear.h"
#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::engine::cpu {

// The keys/values an attention call sees, oldest first: the layer's stored positions (the ring,
// as at most two spans), then the segment's own k and v blocks of qkv [t, q_width + 2·width]
// (q_width 0: width; grouped-query attention has fewer key/value columns than query columns).
void KeySpans(const XlMemory& memory, const float* qkv, int64_t width, int64_t t,
              std::vector<kernels::KvSpan>& spans, int64_t q_width = 0);

class CpuBackend final : public Backend {
 public:
  CpuBackend() : pool_(kernels::ThreadPool::Default()) {}

  std::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }

  // Plain ops (cpu_backend.cc).
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) override;
  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override { return CopyFromHost(t); }
  absl::Status Copy(const Tensor& src, Tensor& dst) override;
  absl::Status FillRows(const Tensor& row, Tensor& dst) override;
  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override;
  absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  DeviceMemoryInfo MemoryInfo() const override { return {}; }
  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override;
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
  absl::Status SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                            Tensor& y) override;

  // One file per kind: relative_attention.cc, linear_attention.cc, sparse_attention.cc,
  // lsh_attention.cc, compression.cc, memory_append.cc.
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

  void AllowBf16Products(bool allow) override {
    half_products_ = allow ? kernels::HalfProducts::kBf16 : kernels::HalfProducts::kFloat32;
  }

 private:
  // One sequence's compressive-memory update (compression.cc).
  absl::Status CompressOne(const CompressArgs& a);

  kernels::ThreadPool& pool_;
  kernels::HalfProducts half_products_ = kernels::HalfProducts::kFloat32;
};

}  // namespace mnemo::engine::cpu
