// What every backend derives the same way from a sparse layer's configuration and state before
// and after its attention (MODEL-SPEC §3): the pattern's parameters, the kept global positions,
// which new positions are global, and where the segment's global rows join the store. Backends
// differ only in how they move and combine the rows.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"

#include "engine/memory/global_store.h"
#include "engine/memory/xl_memory.h"
#include "engine/model/model_config.h"
#include "kernels/cpu/sparse_pattern.h"

namespace mnemo::engine {

// The layer's pattern (pointers into `l`, which must outlive it).
kernels::SparsePattern PatternOf(const SparseConfig& l);

// The pattern reaches back sparse_span positions and finds a key older than the window's ring only
// in the global store, so the ring must hold every earlier position it can: min(position,
// capacity). Restore checks this (SparseLayerState::SetBookkeeping); backends check it again before
// they index rows by position, so a broken state is an error, never a read outside the store.
absl::Status CheckWindowHoldsRecentPositions(const XlMemory& window, int64_t position);

// The kept global positions, oldest first, and the store slot of each.
void StoredGlobals(const GlobalStore& aux, std::vector<int64_t>* positions,
                   std::vector<int64_t>* slots);

// Per new position (stream positions position … position + t − 1, token ids `tokens`): whether it
// is global (a configured global position or token).
std::vector<uint8_t> SegmentGlobals(const SparseConfig& l, int64_t position, const int32_t* tokens,
                                    int64_t t);

// The segment's global rows joining the store (the last max_global stay): (segment row, store
// slot) pairs for the caller to copy keys and values into. The store's bookkeeping (positions,
// ring) is updated here.
std::vector<std::pair<int64_t, int64_t>> JoinGlobalStore(const std::vector<uint8_t>& is_global,
                                                         int64_t position, GlobalStore& aux);

}  // namespace mnemo::engine
