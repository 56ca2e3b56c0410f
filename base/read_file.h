// ReadFile: a whole file as bytes, for the command lines and loaders.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace mnemo {

// NOT_FOUND naming the path when the file cannot be opened; DATA_LOSS when reading fails.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace mnemo
