#include "engine/memory/layer_state.h"

#include "absl/strings/str_cat.h"

namespace mnemo::engine {

absl::Status CheckBookkeepingCount(std::span<const int64_t> values, size_t count,
                                   absl::string_view kind) {
  if (values.size() == count) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(kind, " state: ", values.size(), " bookkeeping values, expected ", count));
}

}  // namespace mnemo::engine
