// LayerState: what one layer of one session keeps between calls (a K/V ring, linear sums, a
// compressed memory, a global store, LSH buckets…). Each attention kind defines its own
// (engine/attention/), creates it, and is the only code that looks inside; the model and the
// session see this interface: exact bytes, the device, copies, and a few counters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

#include "engine/memory/tensor_copy.h"
#include "engine/memory/xl_memory.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// Compressive memory's counters (zero for the kinds that do not compress).
struct CompressionStats {
  int64_t compressions = 0;       // compressed rows produced
  int64_t tokens_compressed = 0;  // document tokens folded into the compressed memory
};

class LayerState {
 public:
  virtual ~LayerState() = default;

  // Exact bytes of tensor storage (the attention kind's StateBytes formula).
  virtual size_t bytes() const = 0;
  // Where the tensors live.
  virtual Device device() const = 0;
  // The K/V ring of the kinds that keep one (dense, sparse, LSH); null for linear attention.
  virtual const XlMemory* ring() const { return nullptr; }
  virtual CompressionStats compression() const { return {}; }
  // A state of the same kind whose tensors are copy(t), visited in an order fixed per kind (two
  // states of one layer visit matching tensors at matching steps); bookkeeping is kept.
  virtual absl::StatusOr<std::unique_ptr<LayerState>> Map(TensorCopy copy) const = 0;
};

}  // namespace mnemo::engine
