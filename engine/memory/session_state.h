// SessionState: everything a session keeps between requests for one model: per-layer XL memory
// (projected keys/values, on the model's device) and the number of tokens seen. Its size is exact
// and known up front, so a server can budget sessions with SessionStateBytes() before creating
// one. States are created, cloned and moved between host and device by the model
// (TransfoXlModel::NewState / CloneState / StateToHost / StateFromHost).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

class SessionState {
 public:
  SessionState() = default;
  SessionState(SessionState&&) = default;
  SessionState& operator=(SessionState&&) = default;

  std::vector<XlMemory>& layers() { return layers_; }
  const std::vector<XlMemory>& layers() const { return layers_; }
  // Tokens processed by this state since it was opened (the absolute stream position).
  int64_t position() const { return position_; }
  void Advance(int64_t tokens) { position_ += tokens; }
  void set_position(int64_t position) { position_ = position; }
  // Where the tensors live (kCpu for an empty state).
  Device device() const { return layers_.empty() ? Device::kCpu : layers_[0].device(); }

  // Exact bytes of tensor storage: Σ_layers 2·mem_len·H·d_h·4.
  size_t bytes() const;

 private:
  std::vector<XlMemory> layers_;
  int64_t position_ = 0;
};

// Bytes a state of `n_layer` layers with `mem_len` memory and `attn_width` = H·d_h occupies.
size_t SessionStateBytes(int64_t n_layer, int64_t mem_len, int64_t attn_width);

}  // namespace mnemo::engine
