#include "server/echo.h"

#include "absl/strings/str_cat.h"

#include "engine/api/types.h"

namespace mnemo::server {

std::string Echo(absl::string_view value, size_t max_bytes) {
  if (value.size() <= max_bytes) return std::string(value);
  const std::string_view head(value.data(), max_bytes);
  const size_t keep = engine::api::CompleteUtf8Prefix(head);
  return absl::StrCat(absl::string_view(value.data(), keep), "…(", value.size(), " bytes)");
}

}  // namespace mnemo::server
