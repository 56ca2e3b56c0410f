// SessionState: everything a session keeps between requests for one model: per layer either the
// XL memory (projected keys/values) of a dense layer or the (S, z) sums of a linear one, on the
// model's device, and the number of tokens seen. Its size is exact
// and known up front, so a server can budget sessions with SessionStateBytes() before creating
// one. States are created, cloned and moved between host and device by the model
// (TransfoXlModel::NewState / CloneState / StateToHost / StateFromHost).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/memory/layer_aux_state.h"
#include "engine/memory/linear_state.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class SessionState {
 public:
  SessionState() = default;
  SessionState(SessionState&&) = default;
  SessionState& operator=(SessionState&&) = default;

  // Per layer: the XL memory (empty, capacity 0, for a linear layer) …
  std::vector<XlMemory>& layers() { return layers_; }
  const std::vector<XlMemory>& layers() const { return layers_; }
  // … and the linear state (undefined for a dense layer).
  std::vector<LinearState>& linear() { return linear_; }
  const std::vector<LinearState>& linear() const { return linear_; }
  // … and what sparse (globals), LSH and compressive layers keep beside their ring.
  std::vector<LayerAuxState>& aux() { return aux_; }
  const std::vector<LayerAuxState>& aux() const { return aux_; }
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

  // Exact bytes of tensor storage: Σ dense layers 2·mem_len·H·d_h·4 + Σ linear layers
  // 4·H·(m'·d_h + m') + what each layer keeps beside (LayerAuxState::bytes).
  size_t bytes() const;

 private:
  std::vector<XlMemory> layers_;
  std::vector<LinearState> linear_;
  std::vector<LayerAuxState> aux_;
  int64_t position_ = 0;
};

// Bytes a state of `n_layer` layers with `mem_len` memory and `attn_width` = H·d_h occupies.
size_t SessionStateBytes(int64_t n_layer, int64_t mem_len, int64_t attn_width);

}  // namespace mnemo::engine
