#include "engine/memory/global_store.h"

#include "base/status_macros.h"

namespace mnemo::engine {

absl::StatusOr<GlobalStore> GlobalStore::Map(TensorCopy copy) const {
  GlobalStore out;
  ASSIGN_OR_RETURN(out.globals, CopyRing(globals, copy));
  out.global_positions = global_positions;
  return out;
}

}  // namespace mnemo::engine
