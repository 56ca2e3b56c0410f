// What a sparse layer with global positions or tokens keeps beside its rolling window
// (MODEL-SPEC §3): the keys/values of the last max_global global positions, a ring, and the
// stream position held by each slot (−1: empty). Its size is fixed by the config.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/memory/tensor_copy.h"
#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

struct GlobalStore {
  XlMemory globals;                       // [max_global, H·d_h] keys and values
  std::vector<int64_t> global_positions;  // [max_global], by slot

  size_t bytes() const { return globals.bytes(); }
  // A copy whose ring storage is copy(t) (keys, then values); positions are kept.
  absl::StatusOr<GlobalStore> Map(TensorCopy copy) const;

  // Snapshot bookkeeping (LayerState::Bookkeeping): the ring's start and size, then
  // global_positions by slot (max_global values).
  void AppendBookkeeping(std::vector<int64_t>& out) const;
  size_t bookkeeping_values() const { return 2 + global_positions.size(); }
  // Sets those values after checking them: the ring's against its capacity, the stored slots'
  // positions ascending from the oldest, each in [0, position) (`position`: the session's stream
  // position), −1 in the other slots. INVALID_ARGUMENT naming the bad value.
  absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position);
};

}  // namespace mnemo::engine
