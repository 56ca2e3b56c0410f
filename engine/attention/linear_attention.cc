#include "engine/attention/linear_attention.h"

#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {

absl::StatusOr<std::unique_ptr<LayerState>> LinearLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<LinearLayerState>();
  ASSIGN_OR_RETURN(out->sums.s, copy(sums.s));
  ASSIGN_OR_RETURN(out->sums.z, copy(sums.z));
  return out;
}

std::vector<int64_t> LinearLayerState::Bookkeeping() const { return {}; }

absl::Status LinearLayerState::SetBookkeeping(std::span<const int64_t> values,
                                              int64_t /*position*/) {
  return CheckBookkeepingCount(values, 0, "linear");
}

absl::Status LinearAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& c,
                                               LayerConfig& layer) {
  const nlohmann::json& j = r.json();
  ASSIGN_OR_RETURN(std::string map, r.String("feature_map", std::nullopt, EnumNames<FeatureMap>()));
  layer.linear.feature_map = *ParseEnum<FeatureMap>(map);
  if (layer.linear.feature_map == FeatureMap::kElu) {
    if (r.Has("num_features")) return r.Error("(elu) has d_head features: no \"num_features\"");
  } else {
    ASSIGN_OR_RETURN(layer.linear.num_features, r.Int("num_features", 1, 65536));
  }
  if (layer.linear.feature_map == FeatureMap::kFavor && c.d_head > 128) {
    // Keys carry no stabiliser (so the state can be carried): exp(u − ‖k̂‖²/2) ≤ exp(d_h/2)
    // must stay far inside float32 range even summed over millions of tokens.
    return r.Error("(favor) needs d_head ≤ 128");
  }
  if (r.Has("eps")) {
    if (!j.at("eps").is_number() || !(j.at("eps").get<double>() > 0.0)) {
      return r.Error("\"eps\" must be a number > 0");
    }
    layer.linear.eps = j.at("eps").get<double>();
  }
  if (r.Has("gated")) {
    if (!j.at("gated").is_boolean()) return r.Error("\"gated\" must be true or false");
    layer.linear.gated = j.at("gated").get<bool>();
    if (layer.linear.gated && layer.linear.feature_map != FeatureMap::kRfa) {
      return r.Error("\"gated\" is only for rfa");
    }
  }
  return absl::OkStatus();
}

absl::Status LinearAttentionLayer::ReadWeights(const ModelConfig& c, int64_t layer,
                                               const std::string& p, ReadTensorFn read,
                                               TransfoXlLayerWeights& lw) {
  const LayerConfig& lc = c.layer(layer);
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {3 * c.attn_width(), c.d_model}));
  // No positions, no r biases; random features and gate as configured.
  if (lc.linear.feature_map != FeatureMap::kElu) {
    ASSIGN_OR_RETURN(lw.linear.features, read(p + "features", {lc.linear.num_features, c.d_head}));
  }
  if (lc.linear.gated) {
    ASSIGN_OR_RETURN(lw.linear.gate_weight, read(p + "gate.weight", {c.n_head, c.d_model}));
    ASSIGN_OR_RETURN(lw.linear.gate_bias, read(p + "gate.bias", {c.n_head}));
  }
  return absl::OkStatus();
}

size_t LinearAttentionLayer::StateBytes() const {
  const int64_t m = config_.linear_features(layer_);
  return static_cast<size_t>(config_.n_head * (m * config_.d_head + m)) * sizeof(float);
}

absl::StatusOr<std::unique_ptr<LayerState>> LinearAttentionLayer::NewState(Backend& be) const {
  const int64_t m = config_.linear_features(layer_);
  auto state = std::make_unique<LinearLayerState>();  // zero sums
  ASSIGN_OR_RETURN(state->sums.s, be.Allocate(DType::kF32, {config_.n_head, m, config_.d_head}));
  ASSIGN_OR_RETURN(state->sums.z, be.Allocate(DType::kF32, {config_.n_head, m}));
  return state;
}

bool LinearAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const LinearLayerState*>(&state);
  const int64_t m = config_.linear_features(layer_);
  return s != nullptr && s->sums.defined() &&
         s->sums.s.shape() == std::vector<int64_t>{config_.n_head, m, config_.d_head} &&
         s->sums.z.shape() == std::vector<int64_t>{config_.n_head, m};
}

absl::Status LinearAttentionLayer::Forward(const AttentionCall& call) const {
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  // The state advances with the outputs; the gate reads the layer input.
  std::vector<Tensor> input_rows;
  for (size_t b = 0; b < call.batch.size(); ++b) input_rows.push_back(call.RowsOf(call.input, b));
  const TransfoXlLayerWeights& lw = *weights_;
  std::vector<LinearAttentionArgs> args;
  for (size_t b = 0; b < call.batch.size(); ++b) {
    args.push_back({&call.qkv_rows[b], &input_rows[b], &lc_.linear, &lw.linear.features,
                    &lw.linear.gate_weight, &lw.linear.gate_bias,
                    &call.StateOf<LinearLayerState>(b, layer_).sums,
                    static_cast<int>(config_.n_head), static_cast<int>(config_.d_head),
                    &call.out_rows[b]});
  }
  return call.backend.LinearAttention(args);
}

}  // namespace mnemo::engine
