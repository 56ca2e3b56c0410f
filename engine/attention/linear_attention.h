// Linear (kernelised) causal attention (MODEL-SPEC §5): elu+1, Performer FAVOR+ or RFA feature
// maps, optionally gated, carried as the recurrent sums (S, z) per head: O(1) state per layer
// however long the document.
#pragma once

#include <memory>
#include <string>

#include "engine/attention/attention_layer.h"
#include "engine/memory/linear_state.h"

namespace mnemo::engine {

class LayerEntryReader;

struct LinearLayerState final : LayerState {
  LinearState sums;  // S [H, m', d_h], z [H, m']

  size_t bytes() const override { return sums.bytes(); }
  Device device() const override { return sums.s.device(); }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // None: the sums are all there is.
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
};

class LinearAttentionLayer final : public AttentionLayer {
 public:
  LinearAttentionLayer(const ModelConfig& config, int64_t layer) : AttentionLayer(config, layer) {}

  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [3·H·d_h, D]; features [num_features, d_h] (favor, rfa); gate [H, D] + [H] (gated).
  static absl::Status ReadWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  TransfoXlLayerWeights& weights);

  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;
};

}  // namespace mnemo::engine
