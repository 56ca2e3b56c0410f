#include "engine/memory/global_store.h"

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/memory/layer_state.h"

namespace mnemo::engine {

absl::StatusOr<GlobalStore> GlobalStore::Map(TensorCopy copy) const {
  GlobalStore out;
  ASSIGN_OR_RETURN(out.globals, CopyRing(globals, copy));
  out.global_positions = global_positions;
  return out;
}

void GlobalStore::AppendBookkeeping(std::vector<int64_t>& out) const {
  out.push_back(globals.start());
  out.push_back(globals.size());
  out.insert(out.end(), global_positions.begin(), global_positions.end());
}

absl::Status GlobalStore::SetBookkeeping(std::span<const int64_t> v, int64_t position) {
  RETURN_IF_ERROR(CheckBookkeepingCount(v, bookkeeping_values(), "global store"));
  const auto cap = static_cast<int64_t>(global_positions.size());
  if (globals.capacity() != cap) {
    return absl::InvalidArgumentError("global store: positions do not match the ring");
  }
  RETURN_IF_ERROR(globals.SetBookkeeping(v[0], v[1], "global store"));
  const std::span<const int64_t> by_slot = v.subspan(2);
  std::vector<uint8_t> stored(static_cast<size_t>(cap), 0);
  int64_t previous = -1;
  for (int64_t j = 0; j < globals.size(); ++j) {  // oldest first
    const int64_t slot = (globals.start() + j) % cap;
    stored[static_cast<size_t>(slot)] = 1;
    const int64_t p = by_slot[static_cast<size_t>(slot)];
    if (p <= previous || p >= position) {
      return absl::InvalidArgumentError(
          absl::StrCat("global store: slot ", slot, " holds position ", p, ", expected one in (",
                       previous, ", ", position, ") (ascending, before the session's position)"));
    }
    previous = p;
  }
  for (int64_t slot = 0; slot < cap; ++slot) {
    const int64_t p = by_slot[static_cast<size_t>(slot)];
    if (stored[static_cast<size_t>(slot)] == 0 && p != -1) {
      return absl::InvalidArgumentError(
          absl::StrCat("global store: empty slot ", slot, " holds position ", p, ", expected -1"));
    }
  }
  global_positions.assign(by_slot.begin(), by_slot.end());
  return absl::OkStatus();
}

}  // namespace mnemo::engine
