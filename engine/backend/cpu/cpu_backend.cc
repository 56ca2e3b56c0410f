// The CPU backend's plain ops: allocation and copies, products (float32 weights on OpenBLAS,
// 16-bit weights on kernels/cpu/half_linear, pruned weights on the sparse kernels), and
// LayerNorm, activations and embeddings as vectorised loops on the thread pool.
#include "engine/backend/cpu/cpu_backend.h"

#include <cstring>
#include <memory>
#include <utility>

#include "base/status_macros.h"
#include "engine/tensor/weight_type.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/half_linear.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/sparse_matmul.h"

namespace mnemo::engine::cpu {
void KeySpans(const XlMemory& memory, const float* qkv, int64_t width, int64_t t,
              std::vector<kernels::KvSpan>& spans, int64_t q_width) {
  if (q_width == 0) q_width = width;
  spans.clear();
  memory.AppendSpans(spans);
  spans.push_back({qkv + q_width, qkv + q_width + width, q_width + 2 * width, t});
}

absl::StatusOr<Tensor> CpuBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  return Tensor::Zeros(dtype, std::move(shape));
}

absl::StatusOr<Tensor> CpuBackend::AllocateUninitialized(DType dtype, std::vector<int64_t> shape) {
  return Tensor::Empty(dtype, std::move(shape));
}

absl::StatusOr<Tensor> CpuBackend::CopyFromHost(const Tensor& host) {
  Tensor copy = Tensor::Empty(host.dtype(), host.shape());
  std::memcpy(copy.raw(), host.raw(), host.bytes());
  return copy;
}

absl::Status CpuBackend::Copy(const Tensor& src, Tensor& dst) {
  std::memcpy(dst.raw(), src.raw(), src.bytes());
  return absl::OkStatus();
}

absl::Status CpuBackend::FillRows(const Tensor& row, Tensor& dst) {
  const size_t row_bytes = row.bytes();
  auto* out = static_cast<char*>(dst.raw());
  for (int64_t r = 0; r < dst.dim(0); ++r) std::memcpy(out + r * row_bytes, row.raw(), row_bytes);
  return absl::OkStatus();
}

absl::Status CpuBackend::GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) {
  const int64_t n = x.dim(1);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(y.data<float>() + static_cast<int64_t>(i) * n, x.data<float>() + rows[i] * n,
                n * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) {
  const int64_t wa = a.dim(1), wb = b.dim(1);
  for (int64_t r = 0; r < y.dim(0); ++r) {
    float* row = y.data<float>() + r * (wa + wb);
    std::memcpy(row, a.data<float>() + r * wa, wa * sizeof(float));
    std::memcpy(row + wa, b.data<float>() + r * wb, wb * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
  const float* b = bias != nullptr ? bias->data<float>() : nullptr;
  if (w.dtype() == DType::kF32) {
    kernels::Linear(x.data<float>(), in, w.data<float>(), b, y.data<float>(), out, rows, in, out,
                    pool_);
  } else {
    kernels::HalfLinear(x.data<float>(), in, w.data<uint16_t>(), WeightTypeOf(w.dtype()), b,
                        y.data<float>(), out, rows, in, out, pool_, half_products_);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                              Activation act, Tensor& y) {
  RETURN_IF_ERROR(Linear(x, w, nullptr, y));
  return BiasActivation(bias, act, y);
}

absl::Status CpuBackend::LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                   float eps, Tensor& y) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  pool_.ParallelFor(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      kernels::LayerNormRow(xp + r * n, gamma.data<float>(), beta.data<float>(), eps, yp + r * n,
                            n);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma,
                                      const Tensor& beta, float eps, Tensor& normed) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  float* xp = x.data<float>();
  const float* dp = delta.data<float>();
  float* yp = normed.data<float>();
  pool_.ParallelFor(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      kernels::AddVectors(xp + r * n, dp + r * n, xp + r * n, n);
      kernels::LayerNormRow(xp + r * n, gamma.data<float>(), beta.data<float>(), eps, yp + r * n,
                            n);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(const Tensor& x, const Tensor& gamma, float eps, Tensor& y) {
  const int64_t rows = x.dim(0), n = x.dim(1);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  pool_.ParallelFor(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      kernels::RmsNormRow(xp + r * n, gamma.data<float>(), eps, yp + r * n, n);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::GatedActivation(const Tensor& x, Activation act, Tensor& y) {
  const int64_t rows = y.dim(0), f = y.dim(1);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  pool_.ParallelFor(rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      kernels::GatedActivationRow(xp + r * 2 * f, xp + r * 2 * f + f, act, yp + r * f, f);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Rotary(Tensor& x, const std::vector<int64_t>& positions, int num_heads,
                                int head_dim, const Tensor& inv_freq) {
  const kernels::RotaryShape shape{x.dim(0), num_heads, head_dim, inv_freq.data<float>()};
  kernels::ApplyRotary(shape, positions.data(), x.data<float>(), x.dim(1), pool_);
  return absl::OkStatus();
}

absl::Status CpuBackend::BiasActivation(const Tensor& bias, Activation act, Tensor& y) {
  const int64_t rows = y.dim(0), n = y.dim(1);
  float* yp = y.data<float>();
  pool_.ParallelFor(rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      switch (act) {
        case Activation::kRelu:
          kernels::BiasRelu(yp + r * n, bias.data<float>(), n);
          break;
        case Activation::kGelu:
          kernels::BiasGelu(yp + r * n, bias.data<float>(), n);
          break;
        case Activation::kSilu:
        case Activation::kGeluTanh:
          kernels::BiasActivate(yp + r * n, bias.data<float>(), act, n);
          break;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::Add(const Tensor& a, const Tensor& b, Tensor& y) {
  kernels::AddVectors(a.data<float>(), b.data<float>(), y.data<float>(), y.numel());
  return absl::OkStatus();
}

absl::Status CpuBackend::Embedding(const Tensor& table, const std::vector<int32_t>& ids,
                                   float scale, Tensor& y) {
  const int64_t d = table.dim(1);
  if (table.dtype() != DType::kF32) {
    for (size_t n = 0; n < ids.size(); ++n) {
      kernels::WidenRow(table.data<uint16_t>() + static_cast<int64_t>(ids[n]) * d,
                        WeightTypeOf(table.dtype()), scale,
                        y.data<float>() + static_cast<int64_t>(n) * d, d);
    }
    return absl::OkStatus();
  }
  for (size_t n = 0; n < ids.size(); ++n) {
    const float* src = table.data<float>() + static_cast<int64_t>(ids[n]) * d;
    float* dst = y.data<float>() + static_cast<int64_t>(n) * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = src[i] * scale;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                                      Tensor& y) {
  const float* b = bias != nullptr ? bias->data<float>() : nullptr;
  const int64_t n = x.dim(0), ldx = x.dim(1), ldy = y.dim(1);
  if (w.format == SparseFormat::kCsr) {
    kernels::CsrMatmul(w.csr, x.data<float>(), n, ldx, b, y.data<float>(), ldy, pool_);
  } else {
    kernels::Sparse24Matmul(w.s24, x.data<float>(), n, ldx, b, y.data<float>(), ldy, pool_);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu

namespace mnemo::engine {

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<cpu::CpuBackend>(); }

}  // namespace mnemo::engine
