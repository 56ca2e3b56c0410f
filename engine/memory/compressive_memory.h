// What a compressive layer keeps beside its XL K/V ring (MODEL-SPEC §2.2): the ring's positions
// in hidden form, the evicted rows waiting for a full group, the compressed memory's keys and
// values, and (most_used) the attention mass of each. Every part has a size fixed by the config,
// so a session's bytes never grow with the document. Backends update it in CompressMemory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

#include "engine/memory/tensor_copy.h"
#include "engine/memory/xl_memory.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

struct CompressiveMemory {
  Tensor hidden;   // [mem_len, d_model]: same slots as the K/V ring
  Tensor pending;  // [compression_rate, d_model]: evicted rows waiting for a full group
  int64_t pending_rows = 0;
  XlMemory compressed;  // a ring of cmem_len compressed keys/values
  // most_used: the attention mass each memory slot received, [mem_len], and the pending rows',
  // [compression_rate]; undefined for the other compressions.
  Tensor usage;
  Tensor pending_usage;
  // Compressed rows produced and the evicted rows they took, since the state opened.
  int64_t compressions = 0;
  int64_t tokens_compressed = 0;

  // Exact bytes of tensor storage.
  size_t bytes() const;
  // A copy whose tensors are copy(t), in the order compressed keys, values, hidden, pending,
  // usage, pending_usage; bookkeeping is kept.
  absl::StatusOr<CompressiveMemory> Map(TensorCopy copy) const;
};

}  // namespace mnemo::engine
