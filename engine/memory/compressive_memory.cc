#include "engine/memory/compressive_memory.h"

#include "base/status_macros.h"

namespace mnemo::engine {

size_t CompressiveMemory::bytes() const {
  size_t total = compressed.bytes();
  for (const Tensor* t : {&hidden, &pending, &usage, &pending_usage}) {
    if (t->defined()) total += t->bytes();
  }
  return total;
}

absl::StatusOr<CompressiveMemory> CompressiveMemory::Map(TensorCopy copy) const {
  CompressiveMemory out;
  ASSIGN_OR_RETURN(out.compressed, CopyRing(compressed, copy));
  RETURN_IF_ERROR(CopyDefined(hidden, copy, out.hidden));
  RETURN_IF_ERROR(CopyDefined(pending, copy, out.pending));
  RETURN_IF_ERROR(CopyDefined(usage, copy, out.usage));
  RETURN_IF_ERROR(CopyDefined(pending_usage, copy, out.pending_usage));
  out.pending_rows = pending_rows;
  out.compressions = compressions;
  out.tokens_compressed = tokens_compressed;
  return out;
}

}  // namespace mnemo::engine
