// Reformer LSH attention (docs/checkpoint-format.md "lsh"): shared query/key, random-rotation
// hashing in n_hashes rounds, chunked sorted buckets, over a window of `history` positions. Its
// memory is a ring of the last history − 1 positions' normalised keys and values with their
// buckets, so stored positions are never projected or hashed again.
#pragma once

#include <memory>
#include <string>

#include "engine/attention/attention_layer.h"
#include "engine/memory/lsh_buckets.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class LayerEntryReader;

struct LshLayerState final : LayerState {
  XlMemory history;    // [history − 1, H·d_h] normalised keys and values
  LshBuckets buckets;  // [history − 1, H·n_hashes]

  size_t bytes() const override;
  Device device() const override { return history.device(); }
  const XlMemory* ring() const override { return &history; }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // The history ring's start and size (size ≤ position: every position joins it).
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
  // Every bucket id in [0, n_buckets).
  absl::Status CheckContents() const override;
};

class LshAttentionLayer final : public AttentionLayer {
 public:
  // `history_memory`: the dtype of the history's key/value rows (ModelOptions::session_memory);
  // the buckets stay int32.
  LshAttentionLayer(const ModelConfig& config, int64_t layer, DType history_memory)
      : AttentionLayer(config, layer), history_memory_(history_memory) {}

  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [2·H·d_h, D] (shared query/key | value), rotations [H, d_h, n_hashes, n_buckets / 2].
  static absl::Status ReadWeights(const ModelConfig& config, int64_t layer,
                                  const std::string& prefix, ReadTensorFn read,
                                  TransfoXlLayerWeights& weights);

  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;

 private:
  DType history_memory_;
};

}  // namespace mnemo::engine
