#include "engine/memory/tensor_copy.h"

#include <utility>

#include "base/status_macros.h"

namespace mnemo::engine {

absl::Status CopyDefined(const Tensor& src, TensorCopy copy, Tensor& dst) {
  if (!src.defined()) return absl::OkStatus();
  ASSIGN_OR_RETURN(dst, copy(src));
  return absl::OkStatus();
}

absl::StatusOr<XlMemory> CopyRing(const XlMemory& ring, TensorCopy copy) {
  if (!ring.keys().defined()) return XlMemory();
  ASSIGN_OR_RETURN(Tensor keys, copy(ring.keys()));
  ASSIGN_OR_RETURN(Tensor values, copy(ring.values()));
  return ring.WithStorage(std::move(keys), std::move(values));
}

}  // namespace mnemo::engine
