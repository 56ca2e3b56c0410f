// What a compressive layer keeps beside its XL K/V ring (MODEL-SPEC §2.2): the ring's positions
// in hidden form, the evicted rows waiting for a full group, the compressed memory's keys and
// values, and (most_used) the attention mass of each. Every part has a size fixed by the config,
// so a session's bytes never grow with the document. Backends update it in CompressMemory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

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

  // Snapshot bookkeeping (LayerState::Bookkeeping): the compressed ring's start and size,
  // pending_rows, compressions, tokens_compressed.
  static constexpr size_t kBookkeepingValues = 5;
  void AppendBookkeeping(std::vector<int64_t>& out) const;
  // Sets those values after checking them against the shapes: pending_rows in [0, rate), the
  // counters ≥ 0 with tokens_compressed = compressions · rate, a ring that holds no more rows
  // than were compressed. INVALID_ARGUMENT naming the bad value.
  absl::Status SetBookkeeping(std::span<const int64_t> values);
};

}  // namespace mnemo::engine
