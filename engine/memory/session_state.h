// SessionState: everything a session keeps between requests for one model: one LayerState per
// layer (its attention kind's memory: K/V ring, linear sums, compressed memory, …) on the model's
// device, and the number of tokens seen. Its size is exact and known up front, so a server can
// budget sessions with the model's StateBytes() before creating one. States are created, cloned
// and moved between host and device by the model (TransfoXlModel::NewState / CloneState /
// StateToHost / StateFromHost).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/memory/layer_state.h"

namespace mnemo::engine {

class SessionState {
 public:
  SessionState() = default;
  SessionState(SessionState&&) = default;
  SessionState& operator=(SessionState&&) = default;

  // Per layer, in layer order.
  std::vector<std::unique_ptr<LayerState>>& layers() { return layers_; }
  const std::vector<std::unique_ptr<LayerState>>& layers() const { return layers_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  LayerState& layer(int64_t l) { return *layers_[static_cast<size_t>(l)]; }
  const LayerState& layer(int64_t l) const { return *layers_[static_cast<size_t>(l)]; }
  // Tokens processed by this state since it was opened (the absolute stream position).
  int64_t position() const { return position_; }
  void Advance(int64_t tokens) { position_ += tokens; }
  void set_position(int64_t position) { position_ = position; }
  // Compressive memory: compressed rows produced by all layers, and the most document tokens any
  // one layer has folded into its compressed memory, since the state opened.
  int64_t compressions() const;
  int64_t tokens_compressed() const;
  // Where the tensors live (kCpu for an empty state).
  Device device() const;

  // Exact bytes of tensor storage: the sum of the layers' (LayerState::bytes).
  size_t bytes() const;

 private:
  std::vector<std::unique_ptr<LayerState>> layers_;
  int64_t position_ = 0;
};

// Bytes of `n_layer` K/V rings of `mem_len` rows of width `attn_width` = H·d_h, stored as `dtype`.
size_t SessionStateBytes(int64_t n_layer, int64_t mem_len, int64_t attn_width,
                         DType dtype = DType::kF32);

}  // namespace mnemo::engine
