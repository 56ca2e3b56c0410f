// LayerState: what one layer of one session keeps between calls (a K/V ring, linear sums, a
// compressed memory, a global store, LSH buckets…). Each attention kind defines its own
// (engine/attention/), creates it, and is the only code that looks inside; the model and the
// session see this interface: exact bytes, the device, copies, a few counters, and what a
// snapshot (engine/api/snapshot.h) needs beside the tensors: the bookkeeping as integers and the
// checks that make a state read from a file safe to run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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

  // What the state keeps outside its tensors (ring starts and sizes, compression counters, global
  // positions…), as integers in an order fixed per kind; a state of the same layer reads them
  // back with SetBookkeeping.
  virtual std::vector<int64_t> Bookkeeping() const = 0;
  // Sets the bookkeeping from another state's Bookkeeping() (a snapshot) after checking every
  // value against this state's shapes and against `position`, the stream position of the session
  // the state belongs to (SessionState::position). INVALID_ARGUMENT naming the bad value; the
  // state may then be partly set and must be discarded.
  virtual absl::Status SetBookkeeping(std::span<const int64_t> values, int64_t position) = 0;
  // Host states only: checks the tensor contents a kernel uses as indices (LSH bucket ids), so
  // that a state read from a file cannot make a kernel read out of bounds. INVALID_ARGUMENT
  // naming the first bad value.
  virtual absl::Status CheckContents() const { return absl::OkStatus(); }
};

// INVALID_ARGUMENT unless `values` holds exactly `count` bookkeeping values (`kind` names the
// state in the message).
absl::Status CheckBookkeepingCount(std::span<const int64_t> values, size_t count,
                                   absl::string_view kind);

}  // namespace mnemo::engine
