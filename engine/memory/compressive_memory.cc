#include "engine/memory/compressive_memory.h"

#include <limits>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/memory/layer_state.h"

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

void CompressiveMemory::AppendBookkeeping(std::vector<int64_t>& out) const {
  out.insert(out.end(), {compressed.start(), compressed.size(), pending_rows, compressions,
                         tokens_compressed});
}

absl::Status CompressiveMemory::SetBookkeeping(std::span<const int64_t> v) {
  RETURN_IF_ERROR(CheckBookkeepingCount(v, kBookkeepingValues, "compressive memory"));
  const int64_t rate = pending.dim(0);
  RETURN_IF_ERROR(compressed.SetBookkeeping(v[0], v[1], "compressed memory"));
  if (v[2] < 0 || v[2] >= rate) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressive memory: pending_rows ", v[2], " outside [0, ", rate, ")"));
  }
  if (v[3] < 0 || v[3] > std::numeric_limits<int64_t>::max() / rate) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressive memory: compressions ", v[3], " out of range"));
  }
  if (v[4] != v[3] * rate) {
    return absl::InvalidArgumentError(absl::StrCat("compressive memory: tokens_compressed ", v[4],
                                                   " != compressions ", v[3], " × rate ", rate));
  }
  if (v[1] > v[3]) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressive memory: ring size ", v[1], " > compressions ", v[3]));
  }
  pending_rows = v[2];
  compressions = v[3];
  tokens_compressed = v[4];
  return absl::OkStatus();
}

}  // namespace mnemo::engine
