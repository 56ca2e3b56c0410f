// What every backend derives the same way from a sparse layer's configuration and state
// (sparse_layer.h): pattern parameters, kept and new global positions, store slots.
#include "engine/backend/sparse_layer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mnemo::engine {

kernels::SparsePattern PatternOf(const SparseConfig& l) {
  kernels::SparsePattern pattern;
  pattern.kind = l.pattern;
  pattern.span = l.sparse_span();
  pattern.window = l.window;
  pattern.dilations = l.dilations.data();
  pattern.stride = l.stride;
  pattern.block = l.block;
  pattern.summary = l.summary;
  pattern.window_blocks = l.window_blocks;
  pattern.random_blocks = l.random_blocks;
  pattern.seed = l.seed;
  pattern.head_components = l.head_components.data();
  return pattern;
}

absl::Status CheckWindowHoldsRecentPositions(const XlMemory& window, int64_t position) {
  const int64_t expected = std::min(position, window.capacity());
  if (window.size() != expected) {
    return absl::InternalError(absl::StrCat("sparse window holds ", window.size(),
                                            " positions, expected ", expected, " at position ",
                                            position));
  }
  return absl::OkStatus();
}

void StoredGlobals(const GlobalStore& aux, std::vector<int64_t>* positions,
                   std::vector<int64_t>* slots) {
  positions->clear();
  slots->clear();
  const XlMemory& store = aux.globals;
  for (int64_t j = 0; j < store.size(); ++j) {
    const int64_t slot = (store.start() + j) % store.capacity();
    positions->push_back(aux.global_positions[slot]);
    slots->push_back(slot);
  }
}

std::vector<uint8_t> SegmentGlobals(const SparseConfig& l, int64_t position, const int32_t* tokens,
                                    int64_t t) {
  std::vector<uint8_t> is_global(static_cast<size_t>(t), 0);
  for (int64_t i = 0; i < t; ++i) {
    is_global[i] =
        std::binary_search(l.global_positions.begin(), l.global_positions.end(), position + i) ||
        std::binary_search(l.global_tokens.begin(), l.global_tokens.end(), tokens[i]);
  }
  return is_global;
}

std::vector<std::pair<int64_t, int64_t>> JoinGlobalStore(const std::vector<uint8_t>& is_global,
                                                         int64_t position, GlobalStore& aux) {
  std::vector<int64_t> fresh;
  for (size_t i = 0; i < is_global.size(); ++i) {
    if (is_global[i]) fresh.push_back(static_cast<int64_t>(i));
  }
  XlMemory& store = aux.globals;
  const auto n = static_cast<int64_t>(fresh.size());
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t slot = store.SlotOfNewRow(r, n);
    if (slot < 0) continue;
    rows.emplace_back(fresh[r], slot);
    aux.global_positions[slot] = position + fresh[r];
  }
  store.Advance(n);
  return rows;
}

}  // namespace mnemo::engine
