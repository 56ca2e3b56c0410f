// CudaBackend: the Backend of one GPU (internal to engine/backend/cuda/). Its ops are defined by
// concern: plain ops and row copies in cuda_backend.cc, one file per attention or memory kind
// (named as its kernels in kernels/cuda/), and the recorded-step machinery in step_recorder.h.
// Every op takes the device context's lock, notes its launch parameters in the step's
// fingerprint and issues its device work through the recorder, so that it can be replayed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_context.h"
#include "engine/backend/cuda/step_recorder.h"
#include "kernels/cuda/relative_attention.h"

namespace mnemo::engine::cuda {

namespace kc = kernels::cuda;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(DeviceContext* context) : ctx_(*context), recorder_(context) {}

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }

  // Plain ops (cuda_backend.cc).
  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) override;
  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override;
  absl::Status Copy(const Tensor& src, Tensor& dst) override;
  absl::Status FillRows(const Tensor& row, Tensor& dst) override;
  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override;
  absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) override;
  absl::Status Synchronize() override;
  DeviceMemoryInfo MemoryInfo() const override;
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

  // One file per kind: relative_attention.cc, linear_attention.cc, sparse_attention.cc,
  // lsh_attention.cc, compression.cc, memory_append.cc.
  absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) override;
  absl::Status LinearAttention(const std::vector<LinearAttentionArgs>& batch) override;
  absl::Status SparseAttention(const std::vector<SparseAttentionArgs>& batch) override;
  absl::Status LshAttention(const std::vector<LshAttentionArgs>& batch) override;
  absl::Status CompressMemory(const std::vector<CompressArgs>& batch) override;
  absl::Status AppendToMemory(const std::vector<MemoryAppendArgs>& batch) override;

  // Recorded steps (step_recorder.h).
  absl::Status BeginStep(uint64_t key) override { return recorder_.Begin(key); }
  absl::Status EndStep() override { return recorder_.End(); }
  void AbortStep() override { recorder_.Abort(); }

 private:
  // Holds the context's lock with the device current on this thread.
  class Lock {
   public:
    explicit Lock(DeviceContext& ctx) : lock_(ctx.mutex()) {
      const cudaError_t err = cudaSetDevice(ctx.ordinal());
      if (err != cudaSuccess) {
        status_ = cuda::CudaStatus(err, "cudaSetDevice", __FILE__, __LINE__);
      }
    }
    const absl::Status& status() const { return status_; }

   private:
    std::lock_guard<std::recursive_mutex> lock_;
    absl::Status status_;
  };

  // The relative-attention kernel's launch parameters other than the sequences.
  struct RelativeKernelParams {
    const float* rel;  // null: no positional term (a sliding window as a band)
    const float* r_w_bias;
    const float* r_r_bias;
    int num_heads;
    int head_dim;
    int64_t mem_len_max;
    int64_t clamp_len;
    bool same_length;
  };

  // A sequence of the relative-attention kernel over `m`'s ring and the new rows `qkv`, with
  // RealFormer's scores when given (relative_attention.cc).
  static kc::AttentionSequence RingSequence(const Tensor& qkv, const XlMemory& m, Tensor& out,
                                            const Tensor* prev_scores, Tensor* scores);
  // Plans the sequences' work items, stages them with the sequences in one upload and launches
  // the relative-attention kernel (and the attention-mass pass when a sequence has usage).
  absl::Status LaunchRelativeKernel(const std::vector<kc::AttentionSequence>& seqs,
                                    const RelativeKernelParams& k, int64_t cmem_len_max,
                                    bool with_usage);
  // For i < n: copy `width` floats from src[i] to dst[i] (device pointers), one launch
  // (cuda_backend.cc).
  absl::Status CopyRowPairs(const std::vector<const float*>& src, const std::vector<float*>& dst,
                            int64_t width);
  // Any sparse pattern, global tokens included (sparse_attention.cc).
  absl::Status GatheredSparseAttention(const SparseAttentionArgs& a);
  // One sequence's compressive-memory update (compression.cc).
  absl::Status CompressOne(const CompressArgs& a);

  // The recorder's parts every op uses (step_recorder.h).
  bool InGraphStep() const { return recorder_.InGraphStep(); }
  void Note(std::initializer_list<uint64_t> values) { recorder_.Note(values); }
  absl::Status Launch(std::function<absl::Status()> work) {
    return recorder_.Launch(std::move(work));
  }
  absl::StatusOr<Tensor> NewTensor(DType dtype, std::vector<int64_t> shape) {
    return recorder_.NewTensor(dtype, std::move(shape));
  }
  absl::StatusOr<Tensor> Stage(const void* data, size_t bytes) {
    return recorder_.Stage(data, bytes);
  }

  DeviceContext& ctx_;
  StepRecorder recorder_;
};

}  // namespace mnemo::engine::cuda
