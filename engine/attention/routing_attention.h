// Routing attention (Roy et al. 2020, "Efficient Content-Based Sparse Attention with Routing
// Transformers", in causal form; docs/checkpoint-format.md "routing"): each head's queries and
// keys are routed to the nearest of the checkpoint's centroids on the unit sphere, and a query
// attends to the keys of its own cluster among the last `history` positions, itself always. Its
// memory is a ring of the last history − 1 positions' keys and values with their keys' clusters,
// so stored positions are never projected or routed again.
#pragma once

#include <memory>
#include <string>

#include "engine/attention/attention_layer.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class LayerEntryReader;

struct RoutingLayerState final : LayerState {
  XlMemory history;  // [history − 1, H·d_h] keys and values
  Tensor clusters;   // [history − 1, H] int32: each stored key's cluster per head
  int64_t n_clusters = 0;

  size_t bytes() const override { return history.bytes() + clusters.bytes(); }
  Device device() const override { return history.device(); }
  const XlMemory* ring() const override { return &history; }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // The history ring's start and size (size = min(position, history − 1): every position joins
  // it).
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
  // Every cluster id in [0, n_clusters).
  absl::Status CheckContents() const override;
};

class RoutingAttentionLayer final : public AttentionLayer {
 public:
  // Normalises the centroids. `memory`: the dtype of the history's key/value rows
  // (ModelOptions::session_memory); the clusters stay int32.
  static absl::StatusOr<std::unique_ptr<AttentionLayer>> Create(const ModelConfig& config,
                                                                int64_t layer,
                                                                const TransfoXlLayerWeights& host,
                                                                DType memory);

  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [3·H·d_h, D]; centroids [H, n_clusters, d_h].
  static absl::Status ReadWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  TransfoXlLayerWeights& weights);

  // Refuses a device backend (UNIMPLEMENTED, naming the layer): the kind has a CPU kernel only
  // (docs/cuda-backend.md "What has no GPU kernel").
  absl::Status Bind(const TransfoXlLayerWeights& weights, Backend& backend) override;
  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;

 private:
  RoutingAttentionLayer(const ModelConfig& config, int64_t layer, DType memory)
      : AttentionLayer(config, layer), memory_dtype_(memory) {}

  DType memory_dtype_;
  Tensor unit_centroids_;  // [H, n_clusters, d_h], rows of norm 1
};

}  // namespace mnemo::engine
