#include "engine/model/model_options.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "engine/model/enum_names.h"

namespace mnemo::engine {

absl::StatusOr<CpuWeights> ParseCpuWeights(std::string_view name) {
  if (const std::optional<CpuWeights> parsed = ParseEnum<CpuWeights>(name)) return *parsed;
  const auto names = EnumNames<CpuWeights>();  // "a, b or c"
  return absl::InvalidArgumentError(
      absl::StrCat("--cpu-weights must be ", absl::StrJoin(names.begin(), names.end() - 1, ", "),
                   " or ", names.back(), ", got \"", std::string(name), "\""));
}

absl::StatusOr<DType> ParseSessionMemory(std::string_view name) {
  const absl::StatusOr<DType> dtype = ParseDTypeName(name);
  if (dtype.ok() && *dtype != DType::kI32) return *dtype;
  return absl::InvalidArgumentError(absl::StrCat(
      "--session-memory must be float32, bfloat16 or float16, got \"", std::string(name), "\""));
}

}  // namespace mnemo::engine
