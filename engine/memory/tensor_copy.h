// TensorCopy: how a session state's tensors are copied when the state is cloned, moved between
// host and device, or (later) serialised: one call per tensor, in an order each state fixes, so a
// caller can pair the tensors of two states of the same model slot by slot.
#pragma once

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

#include "engine/memory/xl_memory.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// Returns the copy of `t` (new storage, same dtype and shape), or the error that stops the copy.
using TensorCopy = absl::FunctionRef<absl::StatusOr<Tensor>(const Tensor&)>;

// dst = copy(src) for a defined src; an undefined src leaves dst undefined.
absl::Status CopyDefined(const Tensor& src, TensorCopy copy, Tensor& dst);

// A ring over copies of `ring`'s storage with the same bookkeeping (an empty ring stays empty).
absl::StatusOr<XlMemory> CopyRing(const XlMemory& ring, TensorCopy copy);

}  // namespace mnemo::engine
