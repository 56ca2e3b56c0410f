// What a sparse layer with global positions or tokens keeps beside its rolling window
// (MODEL-SPEC §3): the keys/values of the last max_global global positions, a ring, and the
// stream position held by each slot (−1: empty). Its size is fixed by the config.
#pragma once

#include <cstddef>
#include <cstdint>
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
};

}  // namespace mnemo::engine
