// What an LSH layer keeps beside its ring of normalised keys and values: each ring slot's
// buckets, one per (head, hash round), so stored positions are never hashed again.
#pragma once

#include <cstdint>

#include "engine/tensor/tensor.h"

namespace mnemo::engine {

struct LshBuckets {
  Tensor buckets;  // [history − 1, H·n_hashes] int32, same slots as the K/V ring
  // The layer's n_buckets: every id in `buckets` is in [0, n_buckets) (kernels index by them).
  int64_t n_buckets = 0;
};

}  // namespace mnemo::engine
