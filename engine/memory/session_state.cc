#include "engine/memory/session_state.h"

#include <algorithm>

namespace mnemo::engine {

size_t SessionState::bytes() const {
  size_t total = 0;
  for (const auto& l : layers_) total += l->bytes();
  return total;
}

int64_t SessionState::compressions() const {
  int64_t total = 0;
  for (const auto& l : layers_) total += l->compression().compressions;
  return total;
}

int64_t SessionState::tokens_compressed() const {
  int64_t most = 0;
  for (const auto& l : layers_) most = std::max(most, l->compression().tokens_compressed);
  return most;
}

Device SessionState::device() const {
  for (const auto& l : layers_) {
    if (l->bytes() > 0) return l->device();
  }
  return Device::kCpu;
}

size_t SessionStateBytes(int64_t n_layer, int64_t mem_len, int64_t attn_width, DType dtype) {
  return static_cast<size_t>(n_layer) * 2 * static_cast<size_t>(mem_len) *
         static_cast<size_t>(attn_width) * DTypeSize(dtype);
}

}  // namespace mnemo::engine
