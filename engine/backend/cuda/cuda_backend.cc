// The CUDA backend: cuBLAS float32 GEMMs and the kernels of kernels/cuda/, on the device's shared
// stream and memory pool (device_context.h). Ops are asynchronous; CopyToHost and Synchronize
// wait. Errors carry the failing call site.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_context.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/relative_attention.h"

namespace mnemo::engine {
namespace {

namespace kc = kernels::cuda;
using cuda::DeviceContext;

// Bytes rounded up so consecutive parts of one staging upload stay 16-byte aligned.
size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(DeviceContext* context) : ctx_(*context) {}

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }

  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor t, NewTensor(dtype, std::move(shape)));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(t.raw(), 0, t.bytes(), ctx_.stream()));
    return t;
  }

  absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    return NewTensor(dtype, std::move(shape));
  }

  absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) override {
    if (host.device() != Device::kCpu) return absl::InvalidArgumentError("not a host tensor");
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor t, NewTensor(host.dtype(), host.shape()));
    // Pageable source: the copy is complete (staged) when the stream reaches it; wait so the
    // caller may free the host buffer at once. Not a hot path (weights, state restore).
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.raw(), host.raw(), host.bytes(),
                                               cudaMemcpyHostToDevice, ctx_.stream()));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return t;
  }

  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    Tensor host = Tensor::Empty(t.dtype(), t.shape());
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host.raw(), t.raw(), t.bytes(), cudaMemcpyDeviceToHost, ctx_.stream()));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return host;
  }

  absl::Status Copy(const Tensor& src, Tensor& dst) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.raw(), src.raw(), src.bytes(),
                                               cudaMemcpyDeviceToDevice, ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status FillRows(const Tensor& row, Tensor& dst) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(kc::FillRows(row.data<float>(), dst.data<float>(), dst.dim(0),
                                            dst.numel() / std::max<int64_t>(dst.dim(0), 1),
                                            ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor index, Stage(rows.data(), rows.size() * sizeof(int64_t)));
    MNEMO_CUDA_RETURN_IF_ERROR(kc::GatherRows(x.data<float>(), index.data<int64_t>(),
                                              static_cast<int64_t>(rows.size()), x.dim(1),
                                              y.data<float>(), ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return absl::OkStatus();
  }

  DeviceMemoryInfo MemoryInfo() const override {
    DeviceMemoryInfo info;
    std::lock_guard<std::mutex> lock(ctx_.mutex());
    if (!ctx_.MemoryInfo(&info.total_bytes, &info.free_bytes).ok()) return {};
    return info;
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
    if (rows == 0) return absl::OkStatus();
    float beta = 0.0f;
    if (bias != nullptr) {  // y = bias, then y += x·wᵀ
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::FillRows(bias->data<float>(), y.data<float>(), rows, out, ctx_.stream()));
      beta = 1.0f;
    }
    // Row-major y[rows, out] = x · wᵀ is column-major yᵀ[out, rows] = w_cm[in, out]ᵀ · xᵀ.
    const float alpha = 1.0f;
    MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSgemm(
        ctx_.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows),
        static_cast<int>(in), &alpha, w.data<float>(), static_cast<int>(in), x.data<float>(),
        static_cast<int>(in), &beta, y.data<float>(), static_cast<int>(out)));
    return absl::OkStatus();
  }

  absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(kc::LayerNorm(x.data<float>(), gamma.data<float>(),
                                             beta.data<float>(), eps, y.data<float>(), x.dim(0),
                                             x.dim(1), ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(kc::BiasActivation(y.data<float>(), bias.data<float>(), y.dim(0),
                                                  y.dim(1), act == Activation::kRelu ? 0 : 1,
                                                  ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    MNEMO_CUDA_RETURN_IF_ERROR(
        kc::Add(a.data<float>(), b.data<float>(), y.data<float>(), y.numel(), ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                         Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor staged, Stage(ids.data(), ids.size() * sizeof(int32_t)));
    MNEMO_CUDA_RETURN_IF_ERROR(kc::EmbeddingGather(table.data<float>(), staged.data<int32_t>(),
                                                   static_cast<int64_t>(ids.size()), table.dim(1),
                                                   scale, y.data<float>(), ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) override {
    if (batch.empty()) return absl::OkStatus();
    const RelativeAttentionArgs& first = batch[0];
    if (first.head_dim > kc::kMaxHeadDim) {
      return absl::InvalidArgumentError(absl::StrCat("the CUDA attention kernel supports d_head ≤ ",
                                                     kc::kMaxHeadDim, ", not ", first.head_dim));
    }
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    std::vector<kc::AttentionSequence> seqs;
    std::vector<kc::AttentionShapeInput> shapes;
    for (const RelativeAttentionArgs& a : batch) {
      const XlMemory& m = *a.memory;
      seqs.push_back({a.qkv->data<float>(), m.keys().data<float>(), m.values().data<float>(),
                      a.out->data<float>(), a.qkv->dim(0), m.size(), std::max<int64_t>(
                          m.capacity(), 1), m.start()});
      shapes.push_back({a.qkv->dim(0), m.size()});
    }
    const kc::AttentionPlan plan =
        kc::PlanRelativeAttention(shapes, first.num_heads, first.mem_len_max, first.same_length,
                                  2 * ctx_.multiprocessors());
    // One upload: sequences | work items | combine items.
    const size_t seq_bytes = Align16(seqs.size() * sizeof(kc::AttentionSequence));
    const size_t item_bytes = Align16(plan.items.size() * sizeof(kc::AttentionWorkItem));
    const size_t combine_bytes = plan.combines.size() * sizeof(kc::AttentionCombineItem);
    std::vector<char> host(seq_bytes + item_bytes + combine_bytes);
    std::memcpy(host.data(), seqs.data(), seqs.size() * sizeof(kc::AttentionSequence));
    std::memcpy(host.data() + seq_bytes, plan.items.data(),
                plan.items.size() * sizeof(kc::AttentionWorkItem));
    std::memcpy(host.data() + seq_bytes + item_bytes, plan.combines.data(), combine_bytes);
    ASSIGN_OR_RETURN(Tensor staged, Stage(host.data(), host.size()));
    Tensor partials;
    if (plan.partial_rows > 0) {
      ASSIGN_OR_RETURN(partials, NewTensor(DType::kF32, {plan.partial_rows, first.num_heads,
                                                         first.head_dim + 2}));
    }
    auto* base = static_cast<char*>(staged.raw());
    kc::RelativeAttentionLaunch launch{
        reinterpret_cast<const kc::AttentionSequence*>(base),
        reinterpret_cast<const kc::AttentionWorkItem*>(base + seq_bytes),
        reinterpret_cast<const kc::AttentionCombineItem*>(base + seq_bytes + item_bytes),
        static_cast<int>(plan.items.size()),
        static_cast<int>(plan.combines.size()),
        plan.query_tile,
        partials.defined() ? partials.data<float>() : nullptr,
        first.rel_table->data<float>(),
        first.r_w_bias->data<float>(),
        first.r_r_bias->data<float>(),
        first.num_heads,
        first.head_dim,
        first.mem_len_max,
        first.clamp_len,
        first.same_length};
    MNEMO_CUDA_RETURN_IF_ERROR(kc::RelativeAttention(launch, ctx_.stream()));
    return absl::OkStatus();
  }

  absl::Status AppendToMemory(const std::vector<MemoryAppendArgs>& batch) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    // (source row, destination slot) pointer pairs for keys and values of every kept row.
    std::vector<const float*> src;
    std::vector<float*> dst;
    int64_t width = 0;
    for (const MemoryAppendArgs& a : batch) {
      XlMemory& m = *a.memory;
      width = m.width();
      const int64_t rows = a.qkv->dim(0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t slot = m.SlotOfNewRow(r, rows);
        if (slot < 0) continue;
        const float* row = a.qkv->data<float>() + r * 3 * width;
        src.push_back(row + width);
        dst.push_back(m.keys().data<float>() + slot * width);
        src.push_back(row + 2 * width);
        dst.push_back(m.values().data<float>() + slot * width);
      }
    }
    if (src.empty()) return absl::OkStatus();
    const size_t n = src.size();
    std::vector<const void*> pointers(2 * n);
    std::copy(src.begin(), src.end(), pointers.begin());
    std::copy(dst.begin(), dst.end(), pointers.begin() + static_cast<std::ptrdiff_t>(n));
    ASSIGN_OR_RETURN(Tensor staged, Stage(pointers.data(), pointers.size() * sizeof(void*)));
    auto* table = static_cast<void**>(staged.raw());
    MNEMO_CUDA_RETURN_IF_ERROR(kc::CopyRowsIndirect(reinterpret_cast<const float* const*>(table),
                                                    reinterpret_cast<float* const*>(table + n),
                                                    static_cast<int64_t>(n), width,
                                                    ctx_.stream()));
    return absl::OkStatus();
  }

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
    std::lock_guard<std::mutex> lock_;
    absl::Status status_;
  };

  // A tensor from the pool (caller holds the lock).
  absl::StatusOr<Tensor> NewTensor(DType dtype, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) return absl::InvalidArgumentError("negative dimension");
      n *= d;
    }
    ASSIGN_OR_RETURN(std::shared_ptr<void> buffer,
                     ctx_.Allocate(static_cast<size_t>(n) * DTypeSize(dtype)));
    return Tensor(std::move(buffer), dtype, Device::kCuda, std::move(shape));
  }

  // A device copy of small host data for one op (freed stream-ordered after the op).
  absl::StatusOr<Tensor> Stage(const void* data, size_t bytes) {
    ASSIGN_OR_RETURN(Tensor t, NewTensor(DType::kI32, {static_cast<int64_t>((bytes + 3) / 4)}));
    RETURN_IF_ERROR(ctx_.Upload(data, bytes, t.raw()));
    return t;
  }

  DeviceContext& ctx_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  ASSIGN_OR_RETURN(DeviceContext * context, DeviceContext::Get(ordinal));
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(context));
}

}  // namespace mnemo::engine
