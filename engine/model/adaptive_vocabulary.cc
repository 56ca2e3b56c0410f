#include "engine/model/adaptive_vocabulary.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "base/status_macros.h"
#include "engine/sampling/sampler.h"

namespace mnemo::engine {
namespace {

// Band i's rows of a per-band list, or of its one whole-vocabulary tensor (div_val 1).
Tensor BandRows(const std::vector<Tensor>& list, const VocabularyBand& band, size_t i) {
  return list.size() == 1 ? list[0].Rows(band.begin, band.end) : list[i];
}

// A band's hidden input: hidden projected to the band's width, or hidden itself.
absl::StatusOr<Tensor> BandInput(Backend& be, const AdaptiveWeights& w, size_t i,
                                 const Tensor& hidden) {
  if (w.head_proj.empty()) return hidden;
  const Tensor& proj = w.head_proj[i];
  ASSIGN_OR_RETURN(Tensor out, be.AllocateUninitialized(DType::kF32, {hidden.dim(0), proj.dim(0)}));
  RETURN_IF_ERROR(be.Linear(hidden, proj, nullptr, out));
  return out;
}

// logits on the host (a device backend's copied back).
absl::StatusOr<Tensor> OnHost(Backend& be, Tensor t) {
  if (be.device() == Device::kCpu) return t;
  return be.CopyToHost(t);
}

}  // namespace

absl::Status AdaptiveEmbed(Backend& be, const ModelConfig& c, const AdaptiveWeights& w,
                           const std::vector<int32_t>& ids, float scale, Tensor& x) {
  const auto n = static_cast<int64_t>(ids.size());
  if (c.div_val == 1) {  // one table; projected when d_embed ≠ d_model
    if (w.emb_proj.empty()) return be.Embedding(w.emb[0], ids, scale, x);
    ASSIGN_OR_RETURN(Tensor e, be.AllocateUninitialized(DType::kF32, {n, c.embed_width()}));
    RETURN_IF_ERROR(be.Embedding(w.emb[0], ids, scale, e));
    return be.Linear(e, w.emb_proj[0], nullptr, x);
  }
  // Rows grouped by band into `grouped`, each band's projected into its slice; then back into
  // token order. (The scale commutes with the projection.)
  const std::vector<VocabularyBand> bands = c.bands();
  ASSIGN_OR_RETURN(Tensor grouped, be.AllocateUninitialized(DType::kF32, {n, c.d_model}));
  std::vector<int64_t> order(static_cast<size_t>(n));  // token t's row in `grouped`
  int64_t next = 0;
  for (size_t i = 0; i < bands.size(); ++i) {
    std::vector<int32_t> local;
    for (int64_t t = 0; t < n; ++t) {
      const int32_t id = ids[static_cast<size_t>(t)];
      if (id >= bands[i].begin && id < bands[i].end) {
        order[static_cast<size_t>(t)] = next + static_cast<int64_t>(local.size());
        local.push_back(static_cast<int32_t>(id - bands[i].begin));
      }
    }
    if (local.empty()) continue;
    const auto rows = static_cast<int64_t>(local.size());
    ASSIGN_OR_RETURN(Tensor e, be.AllocateUninitialized(DType::kF32, {rows, bands[i].width}));
    RETURN_IF_ERROR(be.Embedding(w.emb[i], local, scale, e));
    Tensor slice = grouped.Rows(next, next + rows);
    RETURN_IF_ERROR(be.Linear(e, w.emb_proj[i], nullptr, slice));
    next += rows;
  }
  return be.GatherRows(grouped, order, x);
}

absl::StatusOr<Tensor> AdaptiveLogProbs(Backend& be, const ModelConfig& c, const AdaptiveWeights& w,
                                        const Tensor& hidden) {
  const std::vector<VocabularyBand> bands = c.bands();
  const int64_t m = hidden.dim(0), k = static_cast<int64_t>(bands.size()) - 1;
  // Every band's logits (and the clusters' with band 0), on the host.
  std::vector<Tensor> logits;
  Tensor clusters;
  for (size_t i = 0; i < bands.size(); ++i) {
    ASSIGN_OR_RETURN(const Tensor in, BandInput(be, w, i, hidden));
    ASSIGN_OR_RETURN(Tensor out,
                     be.AllocateUninitialized(DType::kF32, {m, bands[i].end - bands[i].begin}));
    const Tensor bias = BandRows(w.head_bias, bands[i], i);
    RETURN_IF_ERROR(be.Linear(in, BandRows(w.head, bands[i], i), &bias, out));
    ASSIGN_OR_RETURN(logits.emplace_back(), OnHost(be, std::move(out)));
    if (i == 0 && k > 0) {
      ASSIGN_OR_RETURN(Tensor cl, be.AllocateUninitialized(DType::kF32, {m, k}));
      RETURN_IF_ERROR(be.Linear(in, w.cluster_weight, &w.cluster_bias, cl));
      ASSIGN_OR_RETURN(clusters, OnHost(be, std::move(cl)));
    }
  }
  Tensor out = Tensor::Empty(DType::kF32, {m, c.vocab_size});
  const int64_t shortlist = bands[0].end;
  for (int64_t r = 0; r < m; ++r) {
    float* row = out.data<float>() + r * c.vocab_size;
    const float* head = logits[0].data<float>() + r * shortlist;
    const float* cluster = k > 0 ? clusters.data<float>() + r * k : nullptr;
    // The head's softmax runs over the shortlist and the K cluster logits together.
    float head_lse = LogSumExp(head, shortlist);
    if (k > 0) {
      const float cluster_lse = LogSumExp(cluster, k);
      const float hi = std::max(head_lse, cluster_lse), lo = std::min(head_lse, cluster_lse);
      head_lse = hi + std::log1p(std::exp(lo - hi));
    }
    for (int64_t j = 0; j < shortlist; ++j) row[j] = head[j] - head_lse;
    for (int64_t i = 1; i <= k; ++i) {
      const VocabularyBand& band = bands[static_cast<size_t>(i)];
      const int64_t size = band.end - band.begin;
      const float* tail = logits[static_cast<size_t>(i)].data<float>() + r * size;
      const float base = (cluster[i - 1] - head_lse) - LogSumExp(tail, size);
      for (int64_t j = 0; j < size; ++j) row[band.begin + j] = base + tail[j];
    }
  }
  return out;
}

}  // namespace mnemo::engine
