// The CPU backend: OpenBLAS for products, vectorised loops on a thread pool for the rest.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/status_macros.h"
#include "engine/backend/backend.h"
#include "engine/backend/sparse_layer.h"
#include "engine/memory/compression_plan.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/compression.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cpu/lsh_attention.h"
#include "kernels/cpu/lsh_call_attention.h"
#include "kernels/cpu/relative_attention.h"
#include "kernels/cpu/sparse_attention.h"
#include "kernels/cpu/sparse_pattern.h"
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

  absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) override {
    const int64_t wa = a.dim(1), wb = b.dim(1);
    for (int64_t r = 0; r < y.dim(0); ++r) {
      float* row = y.data<float>() + r * (wa + wb);
      std::memcpy(row, a.data<float>() + r * wa, wa * sizeof(float));
      std::memcpy(row + wa, b.data<float>() + r * wb, wb * sizeof(float));
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

  absl::Status SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                            Tensor& y) override {
    const float* b = bias != nullptr ? bias->data<float>() : nullptr;
    const int64_t n = x.dim(0), ldx = x.dim(1), ldy = y.dim(1);
    if (w.format == SparseFormat::kCsr) {
      kernels::CsrMatmul(w.csr, x.data<float>(), n, ldx, b, y.data<float>(), ldy, pool_);
    } else {
      kernels::Sparse24Matmul(w.s24, x.data<float>(), n, ldx, b, y.data<float>(), ldy, pool_);
    }
    return absl::OkStatus();
  }

  absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) override {
    std::vector<kernels::KvSpan> spans;
    std::vector<float> mass;
    for (const RelativeAttentionArgs& a : batch) {
      const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t t = a.qkv->dim(0);
      const float* qkv = a.qkv->data<float>();
      KeySpans(*a.memory, qkv, width, t, spans);
      int64_t before = 0;  // compressed memory rows, ahead of the XL memory
      if (a.compressed != nullptr) {
        std::vector<kernels::KvSpan> compressed;
        a.compressed->AppendSpans(compressed);
        spans.insert(spans.begin(), compressed.begin(), compressed.end());
        before = a.compressed->size();
      }
      const int64_t m = a.memory->size();
      kernels::RelativeAttentionShape shape{a.num_heads, a.head_dim,   t, before + m, a.mem_len_max,
                                            a.clamp_len, a.same_length};
      shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
      shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
      if (a.usage != nullptr) {
        mass.assign(static_cast<size_t>(m), 0.0f);
        shape.key_mass = mass.data();
        shape.mass_begin = before;
        shape.mass_end = before + m;
      }
      kernels::RelativeAttention(shape, qkv, 3 * width, spans, a.rel_table->data<float>(), width,
                                 a.r_w_bias->data<float>(), a.r_r_bias->data<float>(),
                                 a.out->data<float>(), width, pool_);
      if (a.usage != nullptr) {  // key order → ring slots
        float* usage = a.usage->data<float>();
        for (int64_t j = 0; j < m; ++j) {
          usage[(a.memory->start() + j) % a.memory->capacity()] += mass[j];
        }
      }
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
      const LayerConfig& l = *a.layer;
      const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t t = a.qkv->dim(0);
      const float* qkv = a.qkv->data<float>();
      KeySpans(*a.memory, qkv, width, t, spans);
      if (l.pattern == SparsePattern::kWindow && !l.has_globals()) {  // blocked BLAS path
        kernels::SlidingWindowShape shape{a.num_heads,      a.head_dim, t,
                                          a.memory->size(), l.window,   l.dilations.data()};
        shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
        shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
        kernels::SlidingWindowAttention(shape, qkv, 3 * width, spans, a.out->data<float>(), width,
                                        pool_);
        continue;
      }
      const kernels::SparsePattern pattern = PatternOf(l);
      // The kept global positions (oldest first) and which new positions are global.
      kernels::GlobalKeys globals;
      std::vector<uint8_t> is_global;
      auto& aux = *a.aux;
      if (l.has_globals()) {
        const XlMemory& store = aux.globals;
        globals.k = store.keys().data<float>();
        globals.v = store.values().data<float>();
        globals.ld = width;
        StoredGlobals(aux, &globals.positions, &globals.rows);
        is_global = SegmentGlobals(l, a.position, a.tokens, t);
      }
      kernels::SparsePatternShape shape{
          a.num_heads, a.head_dim, t, a.memory->size(), a.position - a.memory->size(),
          l.max_global};
      shape.prev_scores = a.prev_scores != nullptr ? a.prev_scores->data<float>() : nullptr;
      shape.out_scores = a.scores != nullptr ? a.scores->data<float>() : nullptr;
      kernels::SparsePatternAttention(pattern, shape, qkv, 3 * width, spans, globals, is_global,
                                      a.out->data<float>(), width, pool_);
      if (!l.has_globals()) continue;
      // The segment's global positions join the store (the last max_global stay).
      XlMemory& store = aux.globals;
      for (auto [i, slot] : JoinGlobalStore(is_global, a.position, aux)) {
        const float* row = qkv + i * 3 * width;
        std::memcpy(store.keys().data<float>() + slot * width, row + width, width * sizeof(float));
        std::memcpy(store.values().data<float>() + slot * width, row + 2 * width,
                    width * sizeof(float));
      }
    }
    return absl::OkStatus();
  }

  absl::Status LshAttention(const std::vector<LshAttentionArgs>& batch) override {
    std::vector<kernels::KvSpan> spans;
    std::vector<kernels::BucketSpan> bucket_spans;
    for (const LshAttentionArgs& a : batch) {
      const LayerConfig& l = *a.layer;
      const int64_t width = static_cast<int64_t>(a.num_heads) * a.head_dim;
      const int64_t t = a.qkv->dim(0), ld = 2 * width, nb = a.num_heads * l.n_hashes;
      const float* x = a.qkv->data<float>();
      XlMemory& ring = *a.memory;
      kernels::LshShape shape{a.num_heads,
                              a.head_dim,
                              static_cast<int>(l.n_hashes),
                              static_cast<int>(l.n_buckets),
                              l.chunk_len,
                              l.history,
                              t,
                              ring.size()};
      // The new positions' normalised keys, values and buckets.
      std::vector<float> keys(static_cast<size_t>(t * width)), values(keys.size());
      std::vector<int32_t> buckets(static_cast<size_t>(t * nb));
      kernels::LshNormalizeKeys(a.num_heads, a.head_dim, t, x, ld, keys.data(), width);
      for (int64_t r = 0; r < t; ++r) {
        std::memcpy(values.data() + r * width, x + r * ld + width, width * sizeof(float));
      }
      kernels::LshHash(shape, t, x, ld, a.rotations->data<float>(), buckets.data(), nb);
      spans.clear();
      ring.AppendSpans(spans);
      spans.push_back({keys.data(), values.data(), width, t});
      bucket_spans.clear();
      const int32_t* stored = a.aux->buckets.defined() ? a.aux->buckets.data<int32_t>() : nullptr;
      if (ring.size() > 0) {
        const int64_t first = std::min(ring.size(), ring.capacity() - ring.start());
        bucket_spans.push_back({stored + ring.start() * nb, nb, first});
        if (first < ring.size()) bucket_spans.push_back({stored, nb, ring.size() - first});
      }
      bucket_spans.push_back({buckets.data(), nb, t});
      if (l.lsh_call_sort) {
        kernels::LshCallAttention(shape, x, ld, spans, bucket_spans, a.out->data<float>(), width,
                                  pool_);
      } else {
        kernels::LshAttention(shape, x, ld, spans, bucket_spans, a.out->data<float>(), width,
                              pool_);
      }
      for (int64_t r = 0; r < t; ++r) {
        const int64_t slot = ring.SlotOfNewRow(r, t);
        if (slot < 0) continue;
        std::memcpy(ring.keys().data<float>() + slot * width, keys.data() + r * width,
                    width * sizeof(float));
        std::memcpy(ring.values().data<float>() + slot * width, values.data() + r * width,
                    width * sizeof(float));
        std::memcpy(a.aux->buckets.data<int32_t>() + slot * nb, buckets.data() + r * nb,
                    nb * sizeof(int32_t));
      }
    }
    return absl::OkStatus();
  }

  absl::Status CompressMemory(const std::vector<CompressArgs>& batch) override {
    for (const CompressArgs& a : batch) RETURN_IF_ERROR(CompressOne(a));
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
  absl::Status CompressOne(const CompressArgs& a) {
    const LayerConfig& l = *a.layer;
    auto& aux = *a.aux;
    const XlMemory& mem = *a.memory;
    const int64_t t = a.hidden->dim(0), d = a.hidden->dim(1), c = l.compression_rate;
    const bool most_used = l.compression == Compression::kMostUsed;
    float* hidden = aux.hidden.data<float>();
    float* pending = aux.pending.data<float>();
    float* usage = most_used ? aux.usage.data<float>() : nullptr;
    float* pending_usage = most_used ? aux.pending_usage.data<float>() : nullptr;
    const float* in = a.hidden->data<float>();
    const CompressionPlan plan = PlanCompression(mem, aux.pending_rows, t, c);
    auto row_of = [&](const CompressionRow& r) { return RowAddress(r, pending, hidden, in, d); };
    auto mass_of = [&](const CompressionRow& r) {  // most_used: attention mass so far
      switch (r.source) {
        case CompressionRow::Source::kPending:
          return pending_usage[r.index];
        case CompressionRow::Source::kRing:
          return usage[r.index];
        case CompressionRow::Source::kSegment:
          break;
      }
      return 0.0f;
    };
    const int64_t taps = l.compress_taps();
    const int64_t group_width = taps > 0 ? d * taps : d;
    const int64_t num_groups = plan.num_groups();
    std::vector<float> groups(static_cast<size_t>(num_groups * group_width));
    std::vector<float> group_in(static_cast<size_t>(c * d)), masses(static_cast<size_t>(c));
    for (int64_t g = 0; g < num_groups; ++g) {
      for (int64_t k = 0; k < c; ++k) {  // the group's rows, contiguous, oldest first
        const CompressionRow& r = plan.groups[static_cast<size_t>(g * c + k)];
        std::memcpy(group_in.data() + k * d, row_of(r), d * sizeof(float));
        if (most_used) masses[static_cast<size_t>(k)] = mass_of(r);
      }
      float* out = groups.data() + g * group_width;
      switch (l.compression) {
        case Compression::kMaxPool:
        case Compression::kMeanPool:
          kernels::PoolRows(l.compression == Compression::kMaxPool, group_in.data(), c, d, d, out);
          break;
        case Compression::kConv1d:
        case Compression::kDilatedConv:  // packed now, multiplied below in one product
          kernels::PackConvTaps(group_in.data(), taps, c / taps, d, d, out);
          break;
        case Compression::kMostUsed:
          std::memcpy(out, group_in.data() + kernels::MostUsedRow(masses.data(), c) * d,
                      d * sizeof(float));
          break;
      }
    }
    aux.compressions += num_groups;
    aux.tokens_compressed += num_groups * c;
    // The incomplete group waits in the pending buffer (after the groups read it) …
    for (size_t r = 0; r < plan.pending.size(); ++r) {
      const CompressionRow& row = plan.pending[r];
      const auto slot = static_cast<int64_t>(r);
      if (row.source == CompressionRow::Source::kPending && row.index == slot) continue;
      const float mass = most_used ? mass_of(row) : 0.0f;
      std::memmove(pending + slot * d, row_of(row), d * sizeof(float));
      if (most_used) pending_usage[slot] = mass;
    }
    aux.pending_rows = static_cast<int64_t>(plan.pending.size());
    // … and the segment's hidden rows take the slots its keys/values will (fresh usage).
    for (int64_t r = 0; r < t; ++r) {
      const int64_t slot = mem.SlotOfNewRow(r, t);
      if (slot < 0) continue;
      std::memcpy(hidden + slot * d, in + r * d, d * sizeof(float));
      if (most_used) usage[slot] = 0.0f;
    }
    const int64_t n = num_groups;
    if (n == 0) return absl::OkStatus();
    // Project the compressed rows to keys/values; they join the compressed memory's ring.
    Tensor rows = Tensor::Empty(DType::kF32, {n, d});
    if (taps > 0) {
      kernels::ConvGroups(a.compress->data<float>(), a.compress_bias->data<float>(), taps, n,
                          groups.data(), d, rows.data<float>());
    } else {
      std::memcpy(rows.data<float>(), groups.data(), groups.size() * sizeof(float));
    }
    const int64_t width = a.kv_weight->dim(0) / 2;
    Tensor kv = Tensor::Empty(DType::kF32, {n, 2 * width});
    RETURN_IF_ERROR(Linear(rows, *a.kv_weight, nullptr, kv));
    XlMemory& cm = aux.compressed;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t slot = cm.SlotOfNewRow(r, n);
      if (slot < 0) continue;
      std::memcpy(cm.keys().data<float>() + slot * width, kv.data<float>() + r * 2 * width,
                  width * sizeof(float));
      std::memcpy(cm.values().data<float>() + slot * width,
                  kv.data<float>() + r * 2 * width + width, width * sizeof(float));
    }
    cm.Advance(n);
    return absl::OkStatus();
  }

  kernels::ThreadPool& pool_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace mnemo::engine
