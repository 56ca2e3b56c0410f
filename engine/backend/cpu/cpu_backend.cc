// The CPU backend: OpenBLAS for products, vectorised loops on a thread pool for the rest.
#include <cmath>
#include <cstring>

#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cpu/relative_attention.h"
#include "kernels/cpu/sparse_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/vector_ops.h"

namespace mnemo::engine {
namespace {

// The keys/values an attention call sees, oldest first: the layer's stored positions (the ring,
// as at most two spans), then the segment's own k and v blocks of qkv [t, 3·width].
void KeySpans(const XlMemory& memory, const float* qkv, int64_t width, int64_t t,
              std::vector<kernels::KvSpan>& spans) {
  spans.clear();
  memory.AppendSpans(spans);
  spans.push_back({qkv + width, qkv + 2 * width, 3 * width, t});
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() : pool_(kernels::ThreadPool::Default()) {}

  std::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }

  absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) override {
    return Tensor::Zeros(dtype, std::move(shape));
  }

  absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) override {
    return Tensor::Empty(dtype, std::move(shape));
  }

  absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) override {
    Tensor copy = Tensor::Empty(host.dtype(), host.shape());
    std::memcpy(copy.raw(), host.raw(), host.bytes());
    return copy;
  }

  absl::StatusOr<Tensor> CopyToHost(const Tensor& t) override { return CopyFromHost(t); }

  absl::Status Copy(const Tensor& src, Tensor& dst) override {
    std::memcpy(dst.raw(), src.raw(), src.bytes());
    return absl::OkStatus();
  }

  absl::Status FillRows(const Tensor& row, Tensor& dst) override {
    const size_t row_bytes = row.bytes();
    auto* out = static_cast<char*>(dst.raw());
    for (int64_t r = 0; r < dst.dim(0); ++r) std::memcpy(out + r * row_bytes, row.raw(), row_bytes);
    return absl::OkStatus();
  }

  absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) override {
    const int64_t n = x.dim(1);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::memcpy(y.data<float>() + static_cast<int64_t>(i) * n, x.data<float>() + rows[i] * n,
                  n * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  DeviceMemoryInfo MemoryInfo() const override { return {}; }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    const int64_t rows = x.dim(0), in = x.dim(1), out = w.dim(0);
    kernels::Linear(x.data<float>(), in, w.data<float>(),
                    bias != nullptr ? bias->data<float>() : nullptr, y.data<float>(), out, rows, in,
                    out, pool_);
    return absl::OkStatus();
  }

  absl::Status LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                    Activation act, Tensor& y) override {
    RETURN_IF_ERROR(Linear(x, w, nullptr, y));
    return BiasActivation(bias, act, y);
  }

  absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                         Tensor& y) override {
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

  absl::Status AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma, const Tensor& beta,
                            float eps, Tensor& normed) override {
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

  absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) override {
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
        }
      }
    });
    return absl::OkStatus();
  }

  absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) override {
    kernels::AddVectors(a.data<float>(), b.data<float>(), y.data<float>(), y.numel());
    return absl::OkStatus();
  }

  absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                         Tensor& y) override {
    const int64_t d = table.dim(1);
    for (size_t n = 0; n < ids.size(); ++n) {
      const float* src = table.data<float>() + static_cast<int64_t>(ids[n]) * d;
      float* dst = y.data<float>() + static_cast<int64_t>(n) * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = src[i] * scale;
    }
    return absl::OkStatus();
  }

  absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) override {
    std::vector<kernels::KvSpan> spans;
    for (const RelativeAttentionArgs& a : batch) {
      const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t t = a.qkv->dim(0);
      const float* qkv = a.qkv->data<float>();
      KeySpans(*a.memory, qkv, width, t, spans);
      kernels::RelativeAttentionShape shape{
          a.num_heads, a.head_dim, t, a.memory->size(), a.mem_len_max, a.clamp_len, a.same_length};
      kernels::RelativeAttention(shape, qkv, 3 * width, spans, a.rel_table->data<float>(), width,
                                 a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                                 a.out->data<float>(), width, pool_);
    }
    return absl::OkStatus();
  }

  absl::Status LinearAttention(const std::vector<LinearAttentionArgs>& batch) override {
    for (const LinearAttentionArgs& a : batch) {
      const LayerConfig& l = *a.layer;
      kernels::LinearAttentionShape shape{
          a.num_heads,
          a.head_dim,
          a.qkv->dim(0),
          l.feature_map == FeatureMap::kElu     ? kernels::LinearFeatureMap::kElu
          : l.feature_map == FeatureMap::kFavor ? kernels::LinearFeatureMap::kFavor
                                                : kernels::LinearFeatureMap::kRfa,
          l.num_features,
          l.gated,
          static_cast<float>(l.eps),
          a.input->dim(1)};
      auto ptr = [](const Tensor* t) {
        return t != nullptr && t->defined() ? t->data<float>() : nullptr;
      };
      kernels::LinearAttention(shape, a.qkv->data<float>(), a.input->data<float>(), ptr(a.features),
                               ptr(a.gate_weight), ptr(a.gate_bias), a.state->s.data<float>(),
                               a.state->z.data<float>(), a.out->data<float>(), pool_);
    }
    return absl::OkStatus();
  }

  absl::Status SparseAttention(const std::vector<SparseAttentionArgs>& batch) override {
    std::vector<kernels::KvSpan> spans;
    for (const SparseAttentionArgs& a : batch) {
      const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t t = a.qkv->dim(0);
      const float* qkv = a.qkv->data<float>();
      KeySpans(*a.memory, qkv, width, t, spans);
      kernels::SlidingWindowShape shape{
          a.num_heads, a.head_dim, t, a.memory->size(), a.layer->window, a.layer->dilations.data()};
      kernels::SlidingWindowAttention(shape, qkv, 3 * width, spans, a.out->data<float>(), width,
                                      pool_);
    }
    return absl::OkStatus();
  }

  absl::Status AppendToMemory(const std::vector<MemoryAppendArgs>& batch) override {
    for (const MemoryAppendArgs& a : batch) {
      XlMemory& m = *a.memory;
      const int64_t width = m.width(), rows = a.qkv->dim(0);
      const float* qkv = a.qkv->data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t slot = m.SlotOfNewRow(r, rows);
        if (slot < 0) continue;
        std::memcpy(m.keys().data<float>() + slot * width, qkv + r * 3 * width + width,
                    width * sizeof(float));
        std::memcpy(m.values().data<float>() + slot * width, qkv + r * 3 * width + 2 * width,
                    width * sizeof(float));
      }
    }
    return absl::OkStatus();
  }

 private:
  kernels::ThreadPool& pool_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace mnemo::engine
