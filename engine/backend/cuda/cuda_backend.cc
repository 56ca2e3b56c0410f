// The CUDA backend's plain ops: allocation and copies, cuBLAS float32 / 16-bit GEMMs and the
// decode matrix-vector kernel, LayerNorm, activations, embeddings, and the indirect row copies the
// attention and memory ops share (CopyRowPairs). Ops are asynchronous on the device's shared
// stream and memory pool (device_context.h); CopyToHost and Synchronize wait. Errors carry the
// failing call site.
#include "engine/backend/cuda/cuda_backend.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/tensor/weight_type.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/rotary.h"
#include "kernels/cuda/sparse_matmul.h"

namespace mnemo::engine::cuda {

absl::StatusOr<Tensor> CudaBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
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

absl::StatusOr<Tensor> CudaBackend::AllocateUninitialized(DType dtype, std::vector<int64_t> shape) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  return NewTensor(dtype, std::move(shape));
}

absl::StatusOr<Tensor> CudaBackend::CopyFromHost(const Tensor& host) {
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

absl::StatusOr<Tensor> CudaBackend::CopyToHost(const Tensor& t) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  return recorder_.CopyToHost(t);
}

absl::Status CudaBackend::Copy(const Tensor& src, Tensor& dst) {
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

absl::Status CudaBackend::FillRows(const Tensor& row, Tensor& dst) {
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

absl::Status CudaBackend::GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) {
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

absl::Status CudaBackend::ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) {
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

absl::Status CudaBackend::Synchronize() {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  if (InGraphStep()) return absl::OkStatus();  // EndStep waits
  MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
  return absl::OkStatus();
}

DeviceMemoryInfo CudaBackend::MemoryInfo() const {
  DeviceMemoryInfo info;
  std::lock_guard<std::recursive_mutex> lock(ctx_.mutex());
  if (!ctx_.MemoryInfo(&info.total_bytes, &info.free_bytes).ok()) return {};
  return info;
}

absl::Status CudaBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  const int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
  if (rows == 0) return absl::OkStatus();
  const float* xp = x.data<float>();
  const void* wp = w.raw();
  const float* bp = bias != nullptr ? bias->data<float>() : nullptr;
  float* yp = y.data<float>();
  const DType wt = w.dtype();
  if (rows == 1 && kc::GemvSupported(WeightTypeOf(wt), wp, xp, in)) {  // decode: bandwidth-bound
    Note({6, Addr(xp), Addr(wp), Addr(bp), Addr(yp), U(in), U(out), U(wt)});
    return Launch([this, xp, wp, bp, yp, in, out, wt] {
      MNEMO_CUDA_RETURN_IF_ERROR(
          kc::Gemv(WeightTypeOf(wt), wp, xp, bp, std::nullopt, yp, out, in, ctx_.stream()));
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
                                                 static_cast<const float*>(wp), k, xp, 1, &beta, yp,
                                                 1));
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
absl::Status CudaBackend::SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                                       Tensor& y) {
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

absl::Status CudaBackend::LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                               Activation act, Tensor& y) {
  {
    Lock lock(ctx_);
    RETURN_IF_ERROR(lock.status());
    const float* xp = x.data<float>();
    const void* wp = w.raw();
    const DType wt = w.dtype();
    // (the fused kernel knows relu and gelu; the gated MLPs' activations go through
    // BiasActivation)
    const bool fused_act = act == Activation::kRelu || act == Activation::kGelu;
    if (x.dim(0) == 1 && fused_act && kc::GemvSupported(WeightTypeOf(wt), wp, xp, x.dim(1))) {
      const float* bp = bias.data<float>();
      float* yp = y.data<float>();
      const int64_t in = x.dim(1), out = w.dim(0);
      Note({15, Addr(xp), Addr(wp), Addr(bp), Addr(yp), U(in), U(out), U(act), U(wt)});
      return Launch([this, xp, wp, bp, yp, in, out, act, wt] {
        MNEMO_CUDA_RETURN_IF_ERROR(
            kc::Gemv(WeightTypeOf(wt), wp, xp, bp, act, yp, out, in, ctx_.stream()));
        return absl::OkStatus();
      });
    }
  }
  RETURN_IF_ERROR(Linear(x, w, nullptr, y));
  return BiasActivation(bias, act, y);
}

absl::Status CudaBackend::LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    float eps, Tensor& y) {
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

absl::Status CudaBackend::AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma,
                                       const Tensor& beta, float eps, Tensor& normed) {
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

absl::Status CudaBackend::RmsNorm(const Tensor& x, const Tensor& gamma, float eps, Tensor& y) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  const float* xp = x.data<float>();
  const float* gp = gamma.data<float>();
  float* yp = y.data<float>();
  const int64_t rows = x.dim(0), cols = x.dim(1);
  Note({25, Addr(xp), Addr(gp), Addr(yp), U(rows), U(cols)});
  return Launch([this, xp, gp, yp, rows, cols, eps] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::RmsNorm(xp, gp, eps, yp, rows, cols, ctx_.stream()));
    return absl::OkStatus();
  });
}

absl::Status CudaBackend::GatedActivation(const Tensor& x, Activation act, Tensor& y) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const int64_t rows = y.dim(0), cols = y.dim(1);
  Note({26, Addr(xp), Addr(yp), U(rows), U(cols), U(act)});
  return Launch([this, xp, yp, rows, cols, act] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::GatedActivation(xp, act, yp, rows, cols, ctx_.stream()));
    return absl::OkStatus();
  });
}

absl::Status CudaBackend::Rotary(Tensor& x, const std::vector<int64_t>& positions, int num_heads,
                                 int head_dim, const Tensor& inv_freq) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  ASSIGN_OR_RETURN(Tensor staged, Stage(positions.data(), positions.size() * sizeof(int64_t)));
  float* xp = x.data<float>();
  const int64_t* pp = staged.data<int64_t>();
  const float* fp = inv_freq.data<float>();
  const int64_t rows = x.dim(0), ld = x.dim(1);
  Note({27, Addr(xp), Addr(pp), Addr(fp), U(rows), U(ld), U(num_heads), U(head_dim)});
  return Launch([this, xp, pp, fp, rows, ld, num_heads, head_dim] {
    MNEMO_CUDA_RETURN_IF_ERROR(
        kc::ApplyRotary(xp, ld, rows, pp, num_heads, head_dim, fp, ctx_.stream()));
    return absl::OkStatus();
  });
}

absl::Status CudaBackend::BiasActivation(const Tensor& bias, Activation act, Tensor& y) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  const float* bp = bias.data<float>();
  float* yp = y.data<float>();
  const int64_t rows = y.dim(0), cols = y.dim(1);
  Note({8, Addr(bp), Addr(yp), U(rows), U(cols), U(act)});
  return Launch([this, bp, yp, rows, cols, act] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::BiasActivation(yp, bp, rows, cols, act, ctx_.stream()));
    return absl::OkStatus();
  });
}

absl::Status CudaBackend::Add(const Tensor& a, const Tensor& b, Tensor& y) {
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

absl::Status CudaBackend::Embedding(const Tensor& table, const std::vector<int32_t>& ids,
                                    float scale, Tensor& y) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  ASSIGN_OR_RETURN(Tensor staged, Stage(ids.data(), ids.size() * sizeof(int32_t)));
  const void* tp = table.raw();
  const kernels::WeightType type = WeightTypeOf(table.dtype());
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

// For i < n: copy `width` floats from src[i] to dst[i] (device pointers), one launch.
absl::Status CudaBackend::CopyRowPairs(const std::vector<const float*>& src,
                                       const std::vector<float*>& dst, int64_t width) {
  if (src.empty()) return absl::OkStatus();
  const size_t n = src.size();
  std::vector<const void*> pointers(2 * n);
  std::copy(src.begin(), src.end(), pointers.begin());
  std::copy(dst.begin(), dst.end(), pointers.begin() + static_cast<std::ptrdiff_t>(n));
  ASSIGN_OR_RETURN(Tensor staged, Stage(pointers.data(), pointers.size() * sizeof(void*)));
  auto* table = static_cast<void**>(staged.raw());
  Note({12, Addr(table), n, U(width)});
  return Launch([this, table, n, width] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::CopyRowsIndirect(reinterpret_cast<const float* const*>(table),
                                                    reinterpret_cast<float* const*>(table + n),
                                                    static_cast<int64_t>(n), width, ctx_.stream()));
    return absl::OkStatus();
  });
}

}  // namespace mnemo::engine::cuda

namespace mnemo::engine {

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  ASSIGN_OR_RETURN(cuda::DeviceContext * context, cuda::DeviceContext::Get(ordinal));
  return std::unique_ptr<Backend>(std::make_unique<cuda::CudaBackend>(context));
}

}  // namespace mnemo::engine
