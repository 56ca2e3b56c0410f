#include "engine/attention/routing_attention.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {
namespace {

constexpr int64_t kMaxClusters = 4096;

}  // namespace

absl::StatusOr<std::unique_ptr<LayerState>> RoutingLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<RoutingLayerState>();
  RETURN_IF_ERROR(CopyDefined(clusters, copy, out->clusters));
  out->n_clusters = n_clusters;
  ASSIGN_OR_RETURN(out->history, CopyRing(history, copy));
  return out;
}

std::vector<int64_t> RoutingLayerState::Bookkeeping() const {
  return {history.start(), history.size()};
}

absl::Status RoutingLayerState::SetBookkeeping(std::span<const int64_t> values, int64_t position) {
  RETURN_IF_ERROR(CheckBookkeepingCount(values, 2, "routing"));
  RETURN_IF_ERROR(history.SetBookkeeping(values[0], values[1], "routing history"));
  const int64_t held = std::min(position, history.capacity());
  if (history.size() != held) {
    return absl::InvalidArgumentError(absl::StrCat("routing history: ring size ", history.size(),
                                                   ", expected ", held,
                                                   " at the session's position ", position));
  }
  return absl::OkStatus();
}

absl::Status RoutingLayerState::CheckContents() const {
  if (!clusters.defined()) return absl::OkStatus();
  if (clusters.device() != Device::kCpu || clusters.dtype() != DType::kI32) {
    return absl::InvalidArgumentError("routing clusters: not an int32 host tensor");
  }
  const int32_t* ids = clusters.data<int32_t>();
  for (int64_t i = 0; i < clusters.numel(); ++i) {
    if (ids[i] < 0 || ids[i] >= n_clusters) {
      return absl::InvalidArgumentError(absl::StrCat("routing clusters: entry ", i, " is ", ids[i],
                                                     ", outside [0, ", n_clusters, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AttentionLayer>> RoutingAttentionLayer::Create(
    const ModelConfig& config, int64_t layer, const TransfoXlLayerWeights& host, DType memory) {
  std::unique_ptr<RoutingAttentionLayer> out(new RoutingAttentionLayer(config, layer, memory));
  const Tensor& centroids = host.routing.centroids;
  out->unit_centroids_ = Tensor::Empty(DType::kF32, centroids.shape());
  const int64_t d = config.d_head, rows = centroids.numel() / d;
  const float* src = centroids.data<float>();
  float* dst = out->unit_centroids_.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double norm = 0;
    for (int64_t e = 0; e < d; ++e) norm += double(src[r * d + e]) * src[r * d + e];
    if (!(norm > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": routing centroid ", r % config.layer(layer).routing.n_clusters,
          " of head ", r / config.layer(layer).routing.n_clusters,
          " is zero: it has no direction"));
    }
    const double inv = 1.0 / std::sqrt(norm);
    for (int64_t e = 0; e < d; ++e) dst[r * d + e] = static_cast<float>(src[r * d + e] * inv);
  }
  return out;
}

absl::Status RoutingAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& c,
                                                LayerConfig& layer) {
  ASSIGN_OR_RETURN(layer.routing.n_clusters, r.Int("n_clusters", 2, kMaxClusters));
  ASSIGN_OR_RETURN(layer.routing.history, r.Int("history", 1, kMaxSpan, 4096));
  return absl::OkStatus();
}

absl::Status RoutingAttentionLayer::ReadWeights(const ModelConfig& c, int64_t layer,
                                                const std::string& p, ReadTensorFn read,
                                                TransfoXlLayerWeights& lw) {
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {3 * c.attn_width(), c.d_model}));
  ASSIGN_OR_RETURN(lw.routing.centroids,
                   read(p + "centroids", {c.n_head, c.layer(layer).routing.n_clusters, c.d_head}));
  return absl::OkStatus();
}

absl::Status RoutingAttentionLayer::Bind(const TransfoXlLayerWeights& weights, Backend& backend) {
  weights_ = &weights;
  if (backend.device() != Device::kCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "layer ", layer_, ": routing attention runs on the CPU backend only (no ",
        std::string(backend.name()), " kernel yet); load this model with --device cpu"));
  }
  return absl::OkStatus();
}

size_t RoutingAttentionLayer::StateBytes() const {
  const int64_t rows = lc_.routing.history - 1;
  return SessionStateBytes(1, rows, config_.attn_width(), memory_dtype_) +
         static_cast<size_t>(rows * config_.n_head) * sizeof(int32_t);
}

absl::StatusOr<std::unique_ptr<LayerState>> RoutingAttentionLayer::NewState(Backend& be) const {
  const int64_t rows = lc_.routing.history - 1;
  auto state = std::make_unique<RoutingLayerState>();
  ASSIGN_OR_RETURN(state->history, AllocateRing(be, rows, config_.attn_width(), memory_dtype_));
  ASSIGN_OR_RETURN(state->clusters, be.Allocate(DType::kI32, {rows, config_.n_head}));
  state->n_clusters = lc_.routing.n_clusters;
  return state;
}

bool RoutingAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const RoutingLayerState*>(&state);
  return s != nullptr && s->bytes() == StateBytes() && s->history.keys().defined() &&
         s->history.dtype() == memory_dtype_ && s->history.capacity() == lc_.routing.history - 1 &&
         s->history.width() == config_.attn_width() && s->clusters.defined() &&
         s->clusters.shape() == std::vector<int64_t>{lc_.routing.history - 1, config_.n_head};
}

absl::Status RoutingAttentionLayer::Forward(const AttentionCall& call) const {
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  const std::vector<SequenceInput>& batch = call.batch;
  std::vector<RoutingAttentionArgs> args;
  for (size_t b = 0; b < batch.size(); ++b) {
    auto& st = call.StateOf<RoutingLayerState>(b, layer_);
    args.push_back({&call.qkv_rows[b], &st.history, &st.clusters, &lc_.routing, &unit_centroids_,
                    static_cast<int>(config_.n_head), static_cast<int>(config_.d_head),
                    &call.out_rows[b]});
  }
  RETURN_IF_ERROR(call.backend.RoutingAttention(args));
  for (size_t b = 0; b < batch.size(); ++b) {
    call.StateOf<RoutingLayerState>(b, layer_).history.Advance(batch[b].num_tokens);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
