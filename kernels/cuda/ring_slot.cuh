// The slot of a session ring's j-th stored row (oldest first) from the ring's start, on the
// device. Ring offsets and starts stay below the capacity, so one conditional subtraction does
// what a 64-bit modulo (~100 instructions) would.
#pragma once

#include <cstdint>

namespace mnemo::kernels::cuda {

__device__ __forceinline__ int64_t RingSlot(int64_t start, int64_t j, int64_t capacity) {
  const int64_t slot = start + j;
  return slot >= capacity ? slot - capacity : slot;
}

}  // namespace mnemo::kernels::cuda
