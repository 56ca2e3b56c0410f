#include "engine/model/model_options.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mnemo::engine {

absl::StatusOr<CpuWeights> ParseCpuWeights(std::string_view name) {
  if (name == "stored") return CpuWeights::kAsStored;
  if (name == "float32") return CpuWeights::kFloat32;
  return absl::InvalidArgumentError(
      absl::StrCat("--cpu-weights must be stored or float32, got \"", std::string(name), "\""));
}

}  // namespace mnemo::engine
