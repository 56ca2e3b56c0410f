// Backend selection by device name ("cpu", "cuda", "cuda:N").
#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"

#include "engine/backend/backend.h"

namespace mnemo::engine {

#ifndef MNEMO_WITH_CUDA
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal) {
  return absl::UnavailableError("this build of mnemo has no CUDA backend (built without nvcc)");
}
#endif

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device) {
  if (device == "cpu") return MakeCpuBackend();
  if (device == "cuda") return MakeCudaBackend(0);
  if (device.substr(0, 5) == "cuda:" && device.size() > 5 && device.size() <= 8) {
    int ordinal = 0;
    for (char c : device.substr(5)) {
      if (!std::isdigit(static_cast<unsigned char>(c))) {
        ordinal = -1;
        break;
      }
      ordinal = ordinal * 10 + (c - '0');
    }
    if (ordinal >= 0) return MakeCudaBackend(ordinal);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device \"", std::string(device), "\": expected cpu, cuda or cuda:N"));
}

}  // namespace mnemo::engine
