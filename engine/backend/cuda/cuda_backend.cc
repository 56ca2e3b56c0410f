// The CUDA backend: cuBLAS float32 GEMMs and the kernels of kernels/cuda/, on the device's shared
// stream and memory pool (device_context.h). Ops are asynchronous; CopyToHost and Synchronize
// wait. Errors carry the failing call site.
//
// Recorded steps (Backend::BeginStep): the first time a key is seen the step runs eagerly and
// measures the device memory and pinned staging it needs; the second time it runs against a
// per-key arena of that size while the stream is captured into a CUDA graph; from then on the
// ops only do their host part (allocate from the arena in the same order, so every address
// repeats, and write the step's host inputs into the pinned staging the graph copies from) and
// EndStep launches the graph. Every op adds its launch parameters to a fingerprint; a replay
// whose fingerprint differs from the recording's runs its ops eagerly instead (and the key is
// no longer replayed), so a broken promise costs speed, never correctness.
#include <algorithm>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_context.h"
#include "engine/backend/sparse_layer.h"
#include "engine/memory/compression_plan.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/compression.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/linear_attention.h"
#include "kernels/cuda/lsh_attention.h"
#include "kernels/cuda/relative_attention.h"
#include "kernels/cuda/sparse_attention.h"
#include "kernels/cuda/sparse_gemm.h"

namespace mnemo::engine {
namespace {

namespace kc = kernels::cuda;
using cuda::DeviceContext;

// Bytes rounded up so consecutive parts of one staging upload stay 16-byte aligned.
size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }
// Arena allocations are 256-byte aligned, as the pool's are.
size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0); }

// The matrix-vector kernel's name for a weight dtype (float32, bfloat16, float16).
kc::GemvWeights GemvType(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return kc::GemvWeights::kBF16;
    case DType::kF16:
      return kc::GemvWeights::kF16;
    default:
      return kc::GemvWeights::kF32;
  }
}

// Recordings kept per backend (one per decode batch size in practice); later keys run eagerly.
constexpr size_t kMaxRecordings = 16;

// One key's recorded step: its arena, pinned staging and graph.
struct Recording {
  enum class State { kNew, kMeasured, kRecorded, kFailed };
  State state = State::kNew;
  size_t device_bytes = 0;       // arena: every tensor the step allocates
  size_t stage_bytes = 0;        // host inputs (ids, attention work lists, append slots)
  size_t output_bytes = 0;       // CopyToHost results
  std::shared_ptr<void> device;  // arena; tensors of replays alias it
  std::shared_ptr<void> stage;  // device mirror of `pinned_stage`, filled by the graph's first node
  void* pinned_stage = nullptr;
  void* pinned_output = nullptr;
  cudaGraphExec_t exec = nullptr;
  uint64_t fingerprint = 0;

  Recording() = default;
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;
  ~Recording() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (pinned_stage != nullptr) cudaFreeHost(pinned_stage);
    if (pinned_output != nullptr) cudaFreeHost(pinned_output);
  }
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(DeviceContext* context) : ctx_(*context) {}
  ~CudaBackend() override {
    if (mode_ != Mode::kEager || step_lock_.owns_lock()) AbortStep();
  }

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }

  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor t, NewTensor(dtype, std::move(shape)));
    void* p = t.raw();
    const size_t bytes = t.bytes();
    Note({1, Addr(p), bytes});
    RETURN_IF_ERROR(Launch([this, p, bytes] {
      MNEMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p, 0, bytes, ctx_.stream()));
      return absl::OkStatus();
    }));
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
    if (InGraphStep()) {
      return absl::FailedPreconditionError("CopyFromHost inside a recorded step");
    }
    ASSIGN_OR_RETURN(Tensor t, NewTensor(host.dtype(), host.shape()));
    // Pageable source: the copy is complete (staged) when the stream reaches it; wait so the
    // caller may free the host buffer at once. Not a hot path (weights, state restore).
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(t.raw(), host.raw(), host.bytes(), cudaMemcpyHostToDevice, ctx_.stream()));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return t;
  }

  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    Tensor host = Tensor::Empty(t.dtype(), t.shape());
    if (!InGraphStep()) {
      if (mode_ == Mode::kMeasure) output_used_ += Align256(t.bytes());
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(host.raw(), t.raw(), t.bytes(), cudaMemcpyDeviceToHost, ctx_.stream()));
      MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
      return host;
    }
    // In a recorded step: into pinned staging by the graph, to `host` by EndStep.
    if (output_used_ + Align256(t.bytes()) > rec_->output_bytes) {
      return absl::InternalError("a recorded step copied out more than its first run measured");
    }
    void* pinned = static_cast<char*>(rec_->pinned_output) + output_used_;
    output_used_ += Align256(t.bytes());
    const void* src = t.raw();
    const size_t bytes = t.bytes();
    Note({2, Addr(src), bytes});
    post_copies_.push_back({pinned, host.raw(), bytes});
    RETURN_IF_ERROR(Launch([this, pinned, src, bytes] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(pinned, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
      return absl::OkStatus();
    }));
    return host;
  }

  absl::Status Copy(const Tensor& src, Tensor& dst) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const void* s = src.raw();
    void* d = dst.raw();
    const size_t bytes = src.bytes();
    Note({3, Addr(s), Addr(d), bytes});
    return Launch([this, s, d, bytes] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status FillRows(const Tensor& row, Tensor& dst) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const float* r = row.data<float>();
    float* d = dst.data<float>();
    const int64_t rows = dst.dim(0), cols = dst.numel() / std::max<int64_t>(dst.dim(0), 1);
    Note({4, Addr(r), Addr(d), U(rows), U(cols)});
    return Launch([this, r, d, rows, cols] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::FillRows(r, d, rows, cols, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor index, Stage(rows.data(), rows.size() * sizeof(int64_t)));
    const float* xp = x.data<float>();
    const int64_t* ip = index.data<int64_t>();
    float* yp = y.data<float>();
    const int64_t count = static_cast<int64_t>(rows.size()), cols = x.dim(1);
    Note({5, Addr(xp), Addr(ip), Addr(yp), U(count), U(cols)});
    return Launch([this, xp, ip, yp, count, cols] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::GatherRows(xp, ip, count, cols, yp, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const int64_t wa = a.dim(1), wb = b.dim(1);
    std::vector<const float*> src_a, src_b;
    std::vector<float*> dst_a, dst_b;
    for (int64_t r = 0; r < y.dim(0); ++r) {
      float* row = y.data<float>() + r * (wa + wb);
      src_a.push_back(a.data<float>() + r * wa);
      dst_a.push_back(row);
      src_b.push_back(b.data<float>() + r * wb);
      dst_b.push_back(row + wa);
    }
    RETURN_IF_ERROR(CopyRowPairs(src_a, dst_a, wa));
    return CopyRowPairs(src_b, dst_b, wb);
  }

  absl::Status Synchronize() override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    if (InGraphStep()) return absl::OkStatus();  // EndStep waits
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return absl::OkStatus();
  }

  DeviceMemoryInfo MemoryInfo() const override {
    DeviceMemoryInfo info;
    std::lock_guard<std::recursive_mutex> lock(ctx_.mutex());
    if (!ctx_.MemoryInfo(&info.total_bytes, &info.free_bytes).ok()) return {};
    return info;
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
    if (rows == 0) return absl::OkStatus();
    const float* xp = x.data<float>();
    const void* wp = w.raw();
    const float* bp = bias != nullptr ? bias->data<float>() : nullptr;
    float* yp = y.data<float>();
    const DType wt = w.dtype();
    if (rows == 1 && kc::GemvSupported(GemvType(wt), wp, xp, in)) {  // decode: bandwidth-bound
      Note({6, Addr(xp), Addr(wp), Addr(bp), Addr(yp), U(in), U(out), U(wt)});
      return Launch([this, xp, wp, bp, yp, in, out, wt] {
        MNEMO_CUDA_RETURN_IF_ERROR(
            kc::Gemv(GemvType(wt), wp, xp, bp, -1, yp, out, in, ctx_.stream()));
        return absl::OkStatus();
      });
    }
    // 16-bit weights: the activations are rounded to the same type and the product runs on the
    // tensor cores with float32 accumulation.
    Tensor narrow;
    if (wt != DType::kF32) {
      ASSIGN_OR_RETURN(narrow, NewTensor(wt, {rows, in}));
    }
    uint16_t* np = narrow.defined() ? narrow.data<uint16_t>() : nullptr;
    Note({16, Addr(xp), Addr(wp), Addr(bp), Addr(yp), Addr(np), U(rows), U(in), U(out), U(wt)});
    return Launch([this, xp, wp, bp, yp, np, rows, in, out, wt] {
      float beta = 0.0f;
      if (bp != nullptr) {  // y = bias, then y += x·wᵀ
        MNEMO_CUDA_RETURN_IF_ERROR(kc::FillRows(bp, yp, rows, out, ctx_.stream()));
        beta = 1.0f;
      }
      // Row-major y[rows, out] = x · wᵀ is column-major yᵀ[out, rows] = w_cm[in, out]ᵀ · xᵀ.
      const float alpha = 1.0f;
      const int m = static_cast<int>(out), n = static_cast<int>(rows), k = static_cast<int>(in);
      if (wt == DType::kF32) {
        if (rows == 1) {  // shapes the own kernel does not take
          MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSgemv(ctx_.cublas(), CUBLAS_OP_T, k, m, &alpha,
                                                   static_cast<const float*>(wp), k, xp, 1, &beta,
                                                   yp, 1));
          return absl::OkStatus();
        }
        MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSgemm(ctx_.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, k,
                                                 &alpha, static_cast<const float*>(wp), k, xp, k,
                                                 &beta, yp, m));
        return absl::OkStatus();
      }
      const bool bf16 = wt == DType::kBF16;
      MNEMO_CUDA_RETURN_IF_ERROR(kc::NarrowFloat(xp, np, rows * in, bf16, ctx_.stream()));
      const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
      MNEMO_CUBLAS_RETURN_IF_ERROR(
          cublasGemmEx(ctx_.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, wp, type, k, np,
                       type, k, &beta, yp, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return absl::OkStatus();
    });
  }

  // Pruned weights from their CSR / 2:4 device arrays (the model uploads them at load).
  absl::Status SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                            Tensor& y) override {
    if (!w.device_values.defined() || w.device_values.device() != Device::kCuda) {
      return absl::FailedPreconditionError("the sparse weight has no copy on this device");
    }
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const int64_t n = x.dim(0), ldx = x.dim(1), ldy = y.dim(1);
    const float* xp = x.data<float>();
    const float* bp = bias != nullptr ? bias->data<float>() : nullptr;
    float* yp = y.data<float>();
    const float* vp = static_cast<const float*>(w.device_values.raw());
    if (w.format == SparseFormat::kCsr) {
      const int64_t rows = w.csr.rows;
      const auto* rs = static_cast<const int64_t*>(w.device_row_start.raw());
      const bool narrow = !w.csr.col16.empty();
      const auto* c16 = narrow ? static_cast<const uint16_t*>(w.device_cols.raw()) : nullptr;
      const auto* c32 = narrow ? nullptr : static_cast<const int32_t*>(w.device_cols.raw());
      Note({19, Addr(xp), Addr(vp), Addr(bp), Addr(yp), U(n), U(ldx), U(ldy), U(rows)});
      return Launch([this, rs, c16, c32, vp, rows, xp, n, ldx, bp, yp, ldy] {
        MNEMO_CUDA_RETURN_IF_ERROR(
            kc::CsrMatmul(rs, c16, c32, vp, rows, xp, n, ldx, bp, yp, ldy, ctx_.stream()));
        return absl::OkStatus();
      });
    }
    const int64_t rows = w.s24.rows, cols = w.s24.cols;
    const auto* mp = static_cast<const uint8_t*>(w.device_meta.raw());
    Note({20, Addr(xp), Addr(vp), Addr(bp), Addr(yp), U(n), U(ldx), U(ldy), U(rows)});
    return Launch([this, vp, mp, rows, cols, xp, n, ldx, bp, yp, ldy] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::Sparse24Matmul(vp, mp, rows, cols, xp, n, ldx, bp, yp, ldy, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                    Activation act, Tensor& y) override {
    const int kind = act == Activation::kRelu ? 0 : 1;
    {
      Lock lock(ctx_);
      RETURN_IF_ERROR(lock.status());
      const float* xp = x.data<float>();
      const void* wp = w.raw();
      const DType wt = w.dtype();
      if (x.dim(0) == 1 && kc::GemvSupported(GemvType(wt), wp, xp, x.dim(1))) {  // one kernel
        const float* bp = bias.data<float>();
        float* yp = y.data<float>();
        const int64_t in = x.dim(1), out = w.dim(0);
        Note({15, Addr(xp), Addr(wp), Addr(bp), Addr(yp), U(in), U(out), U(kind), U(wt)});
        return Launch([this, xp, wp, bp, yp, in, out, kind, wt] {
          MNEMO_CUDA_RETURN_IF_ERROR(
              kc::Gemv(GemvType(wt), wp, xp, bp, kind, yp, out, in, ctx_.stream()));
          return absl::OkStatus();
        });
      }
    }
    RETURN_IF_ERROR(Linear(x, w, nullptr, y));
    return BiasActivation(bias, act, y);
  }

  absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const float* xp = x.data<float>();
    const float* gp = gamma.data<float>();
    const float* bp = beta.data<float>();
    float* yp = y.data<float>();
    const int64_t rows = x.dim(0), cols = x.dim(1);
    Note({7, Addr(xp), Addr(gp), Addr(bp), Addr(yp), U(rows), U(cols)});
    return Launch([this, xp, gp, bp, yp, rows, cols, eps] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::LayerNorm(xp, gp, bp, eps, yp, rows, cols, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma, const Tensor& beta,
                            float eps, Tensor& normed) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    float* xp = x.data<float>();
    const float* dp = delta.data<float>();
    const float* gp = gamma.data<float>();
    const float* bp = beta.data<float>();
    float* yp = normed.data<float>();
    const int64_t rows = x.dim(0), cols = x.dim(1);
    Note({14, Addr(xp), Addr(dp), Addr(gp), Addr(bp), Addr(yp), U(rows), U(cols)});
    return Launch([this, xp, dp, gp, bp, yp, rows, cols, eps] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::AddLayerNorm(xp, dp, gp, bp, eps, yp, rows, cols, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const float* bp = bias.data<float>();
    float* yp = y.data<float>();
    const int64_t rows = y.dim(0), cols = y.dim(1);
    const int kind = act == Activation::kRelu ? 0 : 1;
    Note({8, Addr(bp), Addr(yp), U(rows), U(cols), U(kind)});
    return Launch([this, bp, yp, rows, cols, kind] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::BiasActivation(yp, bp, rows, cols, kind, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const float* ap = a.data<float>();
    const float* bp = b.data<float>();
    float* yp = y.data<float>();
    const int64_t n = y.numel();
    Note({9, Addr(ap), Addr(bp), Addr(yp), U(n)});
    return Launch([this, ap, bp, yp, n] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::Add(ap, bp, yp, n, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                         Tensor& y) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    ASSIGN_OR_RETURN(Tensor staged, Stage(ids.data(), ids.size() * sizeof(int32_t)));
    const void* tp = table.raw();
    const int type = table.dtype() == DType::kBF16 ? 1 : (table.dtype() == DType::kF16 ? 2 : 0);
    const int32_t* ip = staged.data<int32_t>();
    float* yp = y.data<float>();
    const int64_t count = static_cast<int64_t>(ids.size()), dim = table.dim(1);
    Note({10, Addr(tp), U(type), Addr(ip), Addr(yp), U(count), U(dim)});
    return Launch([this, tp, type, ip, yp, count, dim, scale] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::EmbeddingGather(tp, type, ip, count, dim, scale, yp, ctx_.stream()));
      return absl::OkStatus();
    });
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
    int64_t cmem_len_max = 0;
    bool with_usage = false;
    for (const RelativeAttentionArgs& a : batch) {
      kc::AttentionSequence seq = RingSequence(*a.qkv, *a.memory, *a.out, a.prev_scores, a.scores);
      if (a.compressed != nullptr && a.compressed->capacity() > 0) {
        const XlMemory& cm = *a.compressed;
        seq.cmem_k = cm.keys().data<float>();
        seq.cmem_v = cm.values().data<float>();
        seq.cmem_len = cm.size();
        seq.cmem_capacity = cm.capacity();
        seq.cmem_start = cm.start();
        seq.memory_len += cm.size();
        cmem_len_max = std::max(cmem_len_max, cm.capacity());
      }
      if (a.usage != nullptr) {
        seq.usage = a.usage->data<float>();
        with_usage = true;
      }
      seqs.push_back(seq);
    }
    const RelativeKernelParams params{first.rel_table->data<float>(),
                                      first.r_w_bias->data<float>(),
                                      first.r_r_bias->data<float>(),
                                      first.num_heads,
                                      first.head_dim,
                                      first.mem_len_max,
                                      first.clamp_len,
                                      first.same_length};
    return LaunchRelativeKernel(seqs, params, cmem_len_max, with_usage);
  }

  absl::Status LinearAttention(const std::vector<LinearAttentionArgs>& batch) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    auto ptr = [](const Tensor* t) {
      return t != nullptr && t->defined() ? t->data<float>() : nullptr;
    };
    for (const LinearAttentionArgs& a : batch) {
      const LayerConfig& l = *a.layer;
      kc::LinearAttentionLaunch launch{};
      launch.query_len = a.qkv->dim(0);
      launch.num_heads = a.num_heads;
      launch.head_dim = a.head_dim;
      launch.map = l.feature_map == FeatureMap::kElu     ? kc::LinearMap::kElu
                   : l.feature_map == FeatureMap::kFavor ? kc::LinearMap::kFavor
                                                         : kc::LinearMap::kRfa;
      launch.num_features = l.num_features;
      launch.state_features = a.state->z.dim(1);
      launch.gated = l.gated;
      launch.eps = static_cast<float>(l.eps);
      launch.input_width = a.input->dim(1);
      launch.qkv = a.qkv->data<float>();
      launch.input = a.input->data<float>();
      launch.features = ptr(a.features);
      launch.gate_w = ptr(a.gate_weight);
      launch.gate_b = ptr(a.gate_bias);
      launch.s = a.state->s.data<float>();
      launch.z = a.state->z.data<float>();
      launch.out = a.out->data<float>();
      const int64_t t = launch.query_len, h = a.num_heads, mf = launch.state_features;
      ASSIGN_OR_RETURN(Tensor fq, NewTensor(DType::kF32, {t, h, mf}));
      ASSIGN_OR_RETURN(Tensor fk, NewTensor(DType::kF32, {t, h, mf}));
      Tensor gate;
      if (l.gated) {
        ASSIGN_OR_RETURN(gate, NewTensor(DType::kF32, {t, h}));
      }
      launch.fq = fq.data<float>();
      launch.fk = fk.data<float>();
      launch.gate = gate.defined() ? gate.data<float>() : nullptr;
      const int64_t chunk_floats =
          kc::LinearAttentionChunkScratchFloats(t, a.num_heads, mf, a.head_dim);
      Tensor chunk_scratch;
      if (chunk_floats > 0) {
        ASSIGN_OR_RETURN(chunk_scratch, NewTensor(DType::kF32, {chunk_floats}));
      }
      launch.chunk_scratch = chunk_scratch.defined() ? chunk_scratch.data<float>() : nullptr;
      Note({20,
            Addr(launch.qkv),
            Addr(launch.input),
            Addr(launch.features),
            Addr(launch.gate_w),
            Addr(launch.gate_b),
            Addr(launch.s),
            Addr(launch.z),
            Addr(launch.out),
            Addr(launch.fq),
            Addr(launch.fk),
            Addr(launch.gate),
            Addr(launch.chunk_scratch),
            U(t),
            U(h),
            U(a.head_dim),
            U(static_cast<int>(launch.map)),
            U(launch.num_features),
            U(mf),
            U(launch.gated),
            U(launch.input_width)});
      RETURN_IF_ERROR(Launch([this, launch] {
        MNEMO_CUDA_RETURN_IF_ERROR(kc::LinearAttention(launch, ctx_.stream()));
        return absl::OkStatus();
      }));
    }
    return absl::OkStatus();
  }

  // Sparse attention. A window of dilation 1 (no global tokens) is a band of the causal mask:
  // the relative-attention kernel without its positional term runs it, tiled (key tiles shared
  // by a block's queries through shared memory, tiles outside the band never visited, long
  // memories split across blocks for decode), with every such sequence of the batch in one
  // launch. Dilated windows take the warp-per-query window kernel; the other patterns and
  // global tokens the listed-keys kernel.
  absl::Status SparseAttention(const std::vector<SparseAttentionArgs>& batch) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    std::vector<kc::AttentionSequence> band_seqs;
    int64_t window = 0;
    for (const SparseAttentionArgs& a : batch) {
      const LayerConfig& l = *a.layer;
      if (a.head_dim > 128) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the CUDA sparse attention kernels support d_head ≤ 128, not ", a.head_dim));
      }
      if (l.pattern != SparsePattern::kWindow || l.has_globals()) {
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
            U(launch.num_heads), U(launch.head_dim), Addr(launch.prev_scores),
            Addr(launch.scores)});
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

  // Reformer LSH attention, either sort (kernels/cuda/lsh_attention.h), then the new positions'
  // normalised keys, values and buckets into the ring's next slots, as the CPU backend does.
  absl::Status LshAttention(const std::vector<LshAttentionArgs>& batch) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    for (const LshAttentionArgs& a : batch) {
      const LayerConfig& l = *a.layer;
      if (a.head_dim > 128) {
        return absl::InvalidArgumentError(
            absl::StrCat("the CUDA LSH attention kernel supports d_head ≤ 128, not ", a.head_dim));
      }
      XlMemory& ring = *a.memory;
      const int64_t t = a.qkv->dim(0), w = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t segments = a.num_heads * l.n_hashes;
      if (t == 0) continue;
      ASSIGN_OR_RETURN(Tensor new_k, NewTensor(DType::kF32, {t, w}));
      ASSIGN_OR_RETURN(Tensor new_bucket, NewTensor(DType::kI32, {t, segments}));
      // Sized for a full ring, so that every decode step of a session asks for the same bytes.
      const size_t scratch_bytes =
          kc::LshAttentionScratchBytes(ring.capacity() + t, a.num_heads,
                                       static_cast<int>(l.n_hashes), static_cast<int>(l.n_buckets));
      ASSIGN_OR_RETURN(Tensor scratch,
                       NewTensor(DType::kI32, {static_cast<int64_t>(scratch_bytes / 4)}));
      const float* x = a.qkv->data<float>();
      const kc::LshAttentionLaunch launch{x,
                                          2 * w,
                                          x + w,
                                          a.rotations->data<float>(),
                                          ring.keys().data<float>(),
                                          ring.values().data<float>(),
                                          a.aux->buckets.data<int32_t>(),
                                          ring.size(),
                                          std::max<int64_t>(ring.capacity(), 1),
                                          ring.start(),
                                          new_k.data<float>(),
                                          new_bucket.data<int32_t>(),
                                          scratch.raw(),
                                          a.out->data<float>(),
                                          t,
                                          a.num_heads,
                                          a.head_dim,
                                          static_cast<int>(l.n_hashes),
                                          static_cast<int>(l.n_buckets),
                                          l.chunk_len,
                                          l.history,
                                          l.lsh_call_sort};
      Note({24,
            Addr(launch.x),
            Addr(launch.rotations),
            Addr(launch.mem_k),
            Addr(launch.mem_v),
            Addr(launch.mem_bucket),
            Addr(launch.new_k),
            Addr(launch.new_bucket),
            Addr(launch.scratch),
            Addr(launch.out),
            U(t),
            U(launch.memory_len),
            U(launch.capacity),
            U(launch.ring_start),
            U(launch.num_heads),
            U(launch.head_dim),
            U(launch.n_hashes),
            U(launch.n_buckets),
            U(launch.chunk_len),
            U(launch.history),
            U(launch.call_sort)});
      RETURN_IF_ERROR(Launch([this, launch] {
        MNEMO_CUDA_RETURN_IF_ERROR(kc::LshAttention(launch, ctx_.stream()));
        return absl::OkStatus();
      }));
      // The kept rows join the ring (after the attention read it: stream order).
      std::vector<const float*> src, bucket_src;
      std::vector<float*> dst, bucket_dst;
      for (int64_t r = 0; r < t; ++r) {
        const int64_t slot = ring.SlotOfNewRow(r, t);
        if (slot < 0) continue;
        src.push_back(new_k.data<float>() + r * w);
        dst.push_back(ring.keys().data<float>() + slot * w);
        src.push_back(x + r * 2 * w + w);
        dst.push_back(ring.values().data<float>() + slot * w);
        // Bucket rows move as 4-byte words (a copy, no arithmetic: the bits are kept).
        bucket_src.push_back(reinterpret_cast<const float*>(new_bucket.data<int32_t>()) +
                             r * segments);
        bucket_dst.push_back(reinterpret_cast<float*>(a.aux->buckets.data<int32_t>()) +
                             slot * segments);
      }
      RETURN_IF_ERROR(CopyRowPairs(src, dst, w));
      RETURN_IF_ERROR(CopyRowPairs(bucket_src, bucket_dst, segments));
    }
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
    return CopyRowPairs(src, dst, width);
  }

  // Compressive memory (MODEL-SPEC §2.2), as the CPU backend does it: the host does the
  // bookkeeping (which rows are evicted, which groups complete) and the device moves and
  // combines rows through pointer tables. Per sequence, in stream order: complete groups are
  // pooled or packed (GroupRows), the rows of an incomplete group go to the pending buffer, the
  // segment's hidden rows take their ring slots, and the new compressed rows are convolved
  // (one product), projected to keys/values (one product) and written into the compressed ring.
  absl::Status CompressMemory(const std::vector<CompressArgs>& batch) override {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    for (const CompressArgs& a : batch) RETURN_IF_ERROR(CompressOne(a));
    return absl::OkStatus();
  }

  // ---- Recorded steps ----------------------------------------------------------------------

  absl::Status BeginStep(uint64_t key) override {
    std::unique_lock<std::recursive_mutex> lock(ctx_.mutex());
    if (step_lock_.owns_lock()) return absl::FailedPreconditionError("steps do not nest");
    MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx_.ordinal()));
    rec_ = nullptr;
    mode_ = Mode::kEager;
    auto it = recordings_.find(key);
    if (it == recordings_.end() && recordings_.size() < kMaxRecordings) {
      it = recordings_.emplace(key, std::make_unique<Recording>()).first;
    }
    device_used_ = stage_used_ = output_used_ = 0;
    fingerprint_ = 0x9e3779b97f4a7c15ULL;
    post_copies_.clear();
    deferred_.clear();
    capture_failed_ = false;
    if (it != recordings_.end()) {
      Recording& rec = *it->second;
      switch (rec.state) {
        case Recording::State::kNew:
          mode_ = Mode::kMeasure;
          break;
        case Recording::State::kMeasured: {
          // The arena and staging are allocated before the capture starts (not in the graph).
          ASSIGN_OR_RETURN(rec.device, ctx_.Allocate(rec.device_bytes));
          ASSIGN_OR_RETURN(rec.stage, ctx_.Allocate(rec.stage_bytes));
          if (rec.pinned_stage == nullptr) {
            MNEMO_CUDA_RETURN_IF_ERROR(
                cudaMallocHost(&rec.pinned_stage, std::max<size_t>(rec.stage_bytes, 256)));
          }
          if (rec.pinned_output == nullptr) {
            MNEMO_CUDA_RETURN_IF_ERROR(
                cudaMallocHost(&rec.pinned_output, std::max<size_t>(rec.output_bytes, 256)));
          }
          MNEMO_CUDA_RETURN_IF_ERROR(
              cudaStreamBeginCapture(ctx_.stream(), cudaStreamCaptureModeThreadLocal));
          mode_ = Mode::kCapture;
          break;
        }
        case Recording::State::kRecorded:
          mode_ = Mode::kReplay;
          break;
        case Recording::State::kFailed:
          break;
      }
      rec_ = &rec;
    }
    step_lock_ = std::move(lock);
    return absl::OkStatus();
  }

  absl::Status EndStep() override {
    if (!step_lock_.owns_lock()) return absl::FailedPreconditionError("EndStep without BeginStep");
    const Mode mode = mode_;
    Recording* rec = rec_;
    absl::Status status = absl::OkStatus();
    if (mode == Mode::kMeasure) {
      rec->device_bytes = device_used_;
      rec->stage_bytes = stage_used_;
      rec->output_bytes = output_used_;
      rec->state = Recording::State::kMeasured;
    } else if (mode == Mode::kCapture) {
      cudaGraph_t graph = nullptr;
      const cudaError_t end = cudaStreamEndCapture(ctx_.stream(), &graph);
      bool recorded = false;
      if (end == cudaSuccess && !capture_failed_ && graph != nullptr &&
          PrependStageCopy(graph).ok()) {
        recorded = cudaGraphInstantiate(&rec->exec, graph, 0) == cudaSuccess;
      }
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();  // a failed capture is handled by running the ops eagerly
      if (recorded) {
        rec->fingerprint = fingerprint_;
        rec->state = Recording::State::kRecorded;
        status = GraphLaunch(*rec);
      } else {
        rec->state = Recording::State::kFailed;
        status = RunDeferred();
      }
    } else if (mode == Mode::kReplay) {
      if (fingerprint_ == rec->fingerprint) {
        status = GraphLaunch(*rec);
      } else {
        rec->state = Recording::State::kFailed;  // the step changed shape: no more replays
        status = RunDeferred();
      }
    }
    mode_ = Mode::kEager;
    if (status.ok()) {
      const cudaError_t err = cudaStreamSynchronize(ctx_.stream());
      if (err != cudaSuccess) status = cuda::CudaStatus(err, "step", __FILE__, __LINE__);
    }
    if (status.ok()) {
      for (const PostCopy& c : post_copies_) std::memcpy(c.host, c.pinned, c.bytes);
    }
    post_copies_.clear();
    deferred_.clear();
    rec_ = nullptr;
    step_lock_.unlock();
    return status;
  }

  void AbortStep() override {
    if (mode_ == Mode::kCapture) {
      cudaGraph_t graph = nullptr;
      cudaStreamEndCapture(ctx_.stream(), &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      rec_->state = Recording::State::kFailed;
    }
    mode_ = Mode::kEager;
    rec_ = nullptr;
    post_copies_.clear();
    deferred_.clear();
    if (step_lock_.owns_lock()) step_lock_.unlock();
  }

 private:
  enum class Mode {
    kEager,    // ops run as they come (no step, or a key that is not recorded)
    kMeasure,  // first run of a key: eager, counting arena and staging bytes
    kCapture,  // second run: ops run from the arena while the stream is captured
    kReplay,   // later runs: host parts only; EndStep launches the graph
  };

  // A sequence of the relative-attention kernel over `m`'s ring and the new rows `qkv`, with
  // RealFormer's scores when given.
  static kc::AttentionSequence RingSequence(const Tensor& qkv, const XlMemory& m, Tensor& out,
                                            const Tensor* prev_scores, Tensor* scores) {
    kc::AttentionSequence seq{qkv.data<float>(),
                              m.keys().data<float>(),
                              m.values().data<float>(),
                              out.data<float>(),
                              qkv.dim(0),
                              m.size(),
                              std::max<int64_t>(m.capacity(), 1),
                              m.start()};
    if (prev_scores != nullptr) seq.prev_scores = prev_scores->data<float>();
    if (scores != nullptr) seq.scores = scores->data<float>();
    return seq;
  }

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

  // Plans the sequences' work items, stages them with the sequences in one upload and launches
  // the relative-attention kernel (and the attention-mass pass when a sequence has usage).
  absl::Status LaunchRelativeKernel(const std::vector<kc::AttentionSequence>& seqs,
                                    const RelativeKernelParams& k, int64_t cmem_len_max,
                                    bool with_usage) {
    std::vector<kc::AttentionShapeInput> shapes;
    int64_t max_query_len = 0;
    for (const kc::AttentionSequence& seq : seqs) {
      shapes.push_back({seq.query_len, seq.memory_len});
      max_query_len = std::max(max_query_len, seq.query_len);
    }
    const kc::AttentionPlan plan =
        kc::PlanRelativeAttention(shapes, k.num_heads, k.mem_len_max, k.same_length,
                                  2 * ctx_.multiprocessors(), /*min_split_keys=*/128, cmem_len_max);
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
      ASSIGN_OR_RETURN(partials,
                       NewTensor(DType::kF32, {plan.partial_rows, k.num_heads, k.head_dim + 2}));
    }
    auto* base = static_cast<char*>(staged.raw());
    const kc::RelativeAttentionLaunch launch{
        reinterpret_cast<const kc::AttentionSequence*>(base),
        reinterpret_cast<const kc::AttentionWorkItem*>(base + seq_bytes),
        reinterpret_cast<const kc::AttentionCombineItem*>(base + seq_bytes + item_bytes),
        static_cast<int>(plan.items.size()),
        static_cast<int>(plan.combines.size()),
        plan.query_tile,
        partials.defined() ? partials.data<float>() : nullptr,
        k.rel,
        k.r_w_bias,
        k.r_r_bias,
        k.num_heads,
        k.head_dim,
        k.mem_len_max,
        k.clamp_len,
        k.same_length};
    Note({11, Addr(base), host.size(), U(launch.num_items), U(launch.num_combines),
          U(launch.query_tile), Addr(launch.partials), Addr(launch.rel), Addr(launch.r_w_bias),
          Addr(launch.r_r_bias), U(launch.num_heads), U(launch.head_dim), U(launch.mem_len_max),
          U(launch.clamp_len), U(launch.same_length)});
    RETURN_IF_ERROR(Launch([this, launch] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::RelativeAttention(launch, ctx_.stream()));
      return absl::OkStatus();
    }));
    if (!with_usage) return absl::OkStatus();
    const int num_seqs = static_cast<int>(seqs.size());
    Note({23, Addr(base), U(num_seqs), U(max_query_len)});
    return Launch([this, launch, num_seqs, max_query_len] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::AttentionMass(launch, num_seqs, max_query_len, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  // For i < n: copy `width` floats from src[i] to dst[i] (device pointers), one launch.
  absl::Status CopyRowPairs(const std::vector<const float*>& src, const std::vector<float*>& dst,
                            int64_t width) {
    if (src.empty()) return absl::OkStatus();
    const size_t n = src.size();
    std::vector<const void*> pointers(2 * n);
    std::copy(src.begin(), src.end(), pointers.begin());
    std::copy(dst.begin(), dst.end(), pointers.begin() + static_cast<std::ptrdiff_t>(n));
    ASSIGN_OR_RETURN(Tensor staged, Stage(pointers.data(), pointers.size() * sizeof(void*)));
    auto* table = static_cast<void**>(staged.raw());
    Note({12, Addr(table), n, U(width)});
    return Launch([this, table, n, width] {
      MNEMO_CUDA_RETURN_IF_ERROR(kc::CopyRowsIndirect(
          reinterpret_cast<const float* const*>(table), reinterpret_cast<float* const*>(table + n),
          static_cast<int64_t>(n), width, ctx_.stream()));
      return absl::OkStatus();
    });
  }

  // Any sparse pattern, global tokens included: the host lists each (head, query)'s keys (the
  // plan the CPU uses, kernels::SparseQueryKeys) as device row addresses, one warp per task
  // attends over them, and the segment's global rows then join the layer's global store.
  absl::Status GatheredSparseAttention(const SparseAttentionArgs& a) {
    const LayerConfig& l = *a.layer;
    auto& aux = *a.aux;
    const XlMemory& m = *a.memory;
    const int64_t w = static_cast<int64_t>(a.num_heads) * a.head_dim, t = a.qkv->dim(0);
    const float* qkv = a.qkv->data<float>();
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
              keys.push_back(m.keys().data<float>() + slot * w);
              values.push_back(m.values().data<float>() + slot * w);
            } else {
              const float* row = qkv + (j - m.size()) * 3 * w;
              keys.push_back(row + w);
              values.push_back(row + 2 * w);
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
        3 * w,
        reinterpret_cast<const int64_t*>(base),
        reinterpret_cast<const float* const*>(base + offset_bytes),
        reinterpret_cast<const float* const*>(base + offset_bytes + list_bytes),
        a.out->data<float>(),
        w,
        t,
        a.num_heads,
        a.head_dim};
    if (residual) {
      launch.key_index = reinterpret_cast<const int64_t*>(base + offset_bytes + 2 * list_bytes);
      launch.key_count = m.size() + t;
      launch.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
      launch.scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
    }
    Note({22, Addr(base), host.size(), Addr(launch.q), Addr(launch.out), U(t), U(launch.num_heads),
          U(launch.head_dim), Addr(launch.prev_scores), Addr(launch.scores)});
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

  absl::Status CompressOne(const CompressArgs& a) {
    const LayerConfig& l = *a.layer;
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
      Note(
          {13, Addr(table), U(n), U(ci), U(d), U(static_cast<int>(op)), U(ti), U(step), Addr(out)});
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

  struct PostCopy {
    const void* pinned;
    void* host;
    size_t bytes;
  };

  static uint64_t Addr(const void* p) { return reinterpret_cast<uint64_t>(p); }
  template <typename T>
  static uint64_t U(T v) {
    return static_cast<uint64_t>(v);
  }

  // Capturing or replaying: allocations come from the arena, host inputs from pinned staging.
  bool InGraphStep() const { return mode_ == Mode::kCapture || mode_ == Mode::kReplay; }

  // Mixes an op's launch parameters into the step's fingerprint.
  void Note(std::initializer_list<uint64_t> values) {
    for (uint64_t v : values) {
      fingerprint_ ^= v + 0x9e3779b97f4a7c15ULL + (fingerprint_ << 6) + (fingerprint_ >> 2);
    }
  }

  // Runs an op's device work now (eager, measure, capture) or keeps it for EndStep (replay).
  absl::Status Launch(std::function<absl::Status()> work) {
    if (mode_ == Mode::kReplay) {
      deferred_.push_back(std::move(work));
      return absl::OkStatus();
    }
    if (mode_ != Mode::kCapture) return work();
    deferred_.push_back(work);  // kept in case the capture fails and the step runs eagerly
    if (!work().ok()) capture_failed_ = true;
    return absl::OkStatus();
  }

  absl::Status RunDeferred() {
    for (auto& work : deferred_) RETURN_IF_ERROR(work());
    return absl::OkStatus();
  }

  // Makes the captured graph start with one copy of all the step's staged host inputs (pinned)
  // to their device mirror, instead of one small copy per op.
  absl::Status PrependStageCopy(cudaGraph_t graph) {
    if (stage_used_ == 0) return absl::OkStatus();
    size_t count = 0;
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphGetRootNodes(graph, nullptr, &count));
    std::vector<cudaGraphNode_t> roots(count);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphGetRootNodes(graph, roots.data(), &count));
    cudaGraphNode_t copy = nullptr;
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphAddMemcpyNode1D(&copy, graph, nullptr, 0, rec_->stage.get(),
                                                        rec_->pinned_stage, stage_used_,
                                                        cudaMemcpyHostToDevice));
    for (cudaGraphNode_t root : roots) {
      MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphAddDependencies(graph, &copy, &root, nullptr, 1));
    }
    return absl::OkStatus();
  }

  absl::Status GraphLaunch(Recording& rec) {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(rec.exec, ctx_.stream()));
    return absl::OkStatus();
  }

  // A tensor from the pool, or from the step's arena (caller holds the lock).
  absl::StatusOr<Tensor> NewTensor(DType dtype, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) return absl::InvalidArgumentError("negative dimension");
      n *= d;
    }
    const size_t bytes = static_cast<size_t>(n) * DTypeSize(dtype);
    if (InGraphStep()) {
      const size_t need = Align256(bytes);
      if (device_used_ + need > rec_->device_bytes) {
        return absl::InternalError("a recorded step allocated more than its first run measured");
      }
      void* p = static_cast<char*>(rec_->device.get()) + device_used_;
      device_used_ += need;
      return Tensor(std::shared_ptr<void>(rec_->device, p), dtype, Device::kCuda, std::move(shape));
    }
    if (mode_ == Mode::kMeasure) device_used_ += Align256(bytes);
    ASSIGN_OR_RETURN(std::shared_ptr<void> buffer, ctx_.Allocate(bytes));
    return Tensor(std::move(buffer), dtype, Device::kCuda, std::move(shape));
  }

  // A device copy of small host data for one op. In a recorded step it lands in the step's
  // pinned staging; the graph's first node copies all of it to the device mirror at once.
  absl::StatusOr<Tensor> Stage(const void* data, size_t bytes) {
    const int64_t words = static_cast<int64_t>((bytes + 3) / 4);
    if (!InGraphStep()) {
      ASSIGN_OR_RETURN(Tensor t, NewTensor(DType::kI32, {words}));
      if (mode_ == Mode::kMeasure) stage_used_ += Align256(bytes);
      RETURN_IF_ERROR(ctx_.Upload(data, bytes, t.raw()));
      return t;
    }
    const size_t offset = stage_used_;
    if (offset + Align256(bytes) > rec_->stage_bytes) {
      return absl::InternalError("a recorded step staged more than its first run measured");
    }
    stage_used_ += Align256(bytes);
    void* pinned = static_cast<char*>(rec_->pinned_stage) + offset;
    void* dst = static_cast<char*>(rec_->stage.get()) + offset;
    std::memcpy(pinned, data, bytes);
    Note({13, offset, bytes});
    // Not captured (the prepended copy does it); kept for a step that falls back to eager.
    deferred_.emplace_back([this, dst, pinned, bytes] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(dst, pinned, bytes, cudaMemcpyHostToDevice, ctx_.stream()));
      return absl::OkStatus();
    });
    return Tensor(std::shared_ptr<void>(rec_->stage, dst), DType::kI32, Device::kCuda, {words});
  }

  DeviceContext& ctx_;
  // Step state (guarded by step_lock_, held from BeginStep to EndStep).
  std::unique_lock<std::recursive_mutex> step_lock_;
  Mode mode_ = Mode::kEager;
  Recording* rec_ = nullptr;
  size_t device_used_ = 0;
  size_t stage_used_ = 0;
  size_t output_used_ = 0;
  uint64_t fingerprint_ = 0;
  bool capture_failed_ = false;
  std::vector<std::function<absl::Status()>> deferred_;
  std::vector<PostCopy> post_copies_;
  std::map<uint64_t, std::unique_ptr<Recording>> recordings_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  ASSIGN_OR_RETURN(DeviceContext * context, DeviceContext::Get(ordinal));
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(context));
}

}  // namespace mnemo::engine
