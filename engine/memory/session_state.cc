#include "engine/memory/session_state.h"

#include <algorithm>

namespace mnemo::engine {

size_t SessionState::bytes() const {
  size_t total = 0;
  for (const XlMemory& m : layers_) total += m.bytes();
  for (const LinearState& l : linear_) total += l.bytes();
  for (const LayerAuxState& a : aux_) total += a.bytes();
  return total;
}

int64_t SessionState::compressions() const {
  int64_t total = 0;
  for (const LayerAuxState& a : aux_) total += a.compressions;
  return total;
}

int64_t SessionState::tokens_compressed() const {
  int64_t most = 0;
  for (const LayerAuxState& a : aux_) most = std::max(most, a.tokens_compressed);
  return most;
}

Device SessionState::device() const {
  for (const XlMemory& m : layers_) {
    if (m.keys().defined()) return m.device();
  }
  for (const LinearState& l : linear_) {
    if (l.defined()) return l.s.device();
  }
  return Device::kCpu;
}

size_t SessionStateBytes(int64_t n_layer, int64_t mem_len, int64_t attn_width) {
  return static_cast<size_t>(n_layer) * 2 * static_cast<size_t>(mem_len) *
         static_cast<size_t>(attn_width) * sizeof(float);
}

}  // namespace mnemo::engine
