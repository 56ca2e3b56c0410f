// The attention kinds: the one list that turns a layer's configured kind into its AttentionLayer.
// Adding a kind is a new file pair in this folder and one case in each switch here (they have no
// default, so a kind that is not listed fails to compile).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

#include "engine/attention/attention_layer.h"

namespace mnemo::engine {

class LayerEntryReader;

// Layer `layer`'s attention, with what it precomputes from the host weights (before the weights
// move to the model's device; AttentionLayer::Bind follows). `context` is shared by the layers of
// one model.
absl::StatusOr<std::unique_ptr<AttentionLayer>> MakeAttentionLayer(
    const ModelConfig& config, int64_t layer, const TransfoXlLayerWeights& host_weights,
    AttentionLoadContext& context);

// Reads and validates the fields of `layer.attention`'s kind from its "layers" entry.
absl::Status ParseAttentionConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);

// Reads layer `layer`'s attention weights under `prefix` ("layers.g.attn."): the projections
// (qkv) and what the kind adds (distance projection and biases, compression, features and
// gate, rotations) into `weights` (docs/checkpoint-format.md names and shapes).
absl::Status ReadAttentionWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  const SharedAttentionWeights& shared,
                                  TransfoXlLayerWeights& weights);

}  // namespace mnemo::engine
