// Sparse softmax attention (MODEL-SPEC §3): a (dilated) sliding window, Sparse Transformer
// strided and fixed patterns, BigBird blocks, with Longformer-style global positions and tokens.
// Its memory is a rolling K/V window of the positions its pattern can still name, plus a store of
// the last max_global global positions.
#pragma once

#include <memory>
#include <string>

#include "engine/attention/attention_layer.h"
#include "engine/memory/global_store.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class LayerEntryReader;

struct SparseLayerState final : LayerState {
  XlMemory window;      // [sparse_span, H·d_h] keys and values
  GlobalStore globals;  // layers with globals only

  size_t bytes() const override { return window.bytes() + globals.bytes(); }
  Device device() const override { return window.device(); }
  const XlMemory* ring() const override { return &window; }
  absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const override;
  // The window's start and size (size ≤ position: every position joins it), then (globals) the
  // global store's values.
  std::vector<int64_t> Bookkeeping() const override;
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) override;
};

class SparseAttentionLayer final : public AttentionLayer {
 public:
  // `window_memory`: the dtype of the window ring (ModelOptions::session_memory); the global
  // store stays float32.
  SparseAttentionLayer(const ModelConfig& config, int64_t layer, DType window_memory)
      : AttentionLayer(config, layer), window_memory_(window_memory) {}

  // Reads and validates the kind's fields of a "layers" entry into `layer` (errors name the
  // field; docs/checkpoint-format.md "layers").
  static absl::Status ParseConfig(LayerEntryReader& reader, const ModelConfig& config,
                                  LayerConfig& layer);
  // qkv [3·H·d_h, D]: nothing beyond the projections.
  static absl::Status ReadWeights(const ModelConfig& config, const std::string& prefix,
                                  ReadTensorFn read, TransfoXlLayerWeights& weights);

  size_t StateBytes() const override;
  absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const override;
  bool Fits(const LayerState& state) const override;
  // Listed keys (patterns other than a plain window, global tokens) change the bytes a step
  // uploads as the memory fills or globals arrive.
  bool RepeatsSteps() const override;
  std::pair<int64_t, int64_t> ScoredMemoryKeys(const LayerState& state) const override;
  absl::Status Forward(const AttentionCall& call) const override;

 private:
  DType window_memory_;
};

}  // namespace mnemo::engine
