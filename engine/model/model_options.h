// ModelOptions: how a model is prepared at load (TransfoXlModel::Load, engine::api::Model).
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace mnemo::engine {

// How the CPU backend holds the weight matrices of a bf16 or f16 checkpoint.
enum class CpuWeights : uint8_t {
  kAsStored,  // 16-bit as in the checkpoint: half the bytes per decode step (half_linear.h)
  kFloat32,   // widened to float32 at load: the oracle the 16-bit products are checked against
};

// The `--cpu-weights` flag's values (EnumTable<CpuWeights>: "stored", "float32"); an error naming
// the flag and the names otherwise.
absl::StatusOr<CpuWeights> ParseCpuWeights(std::string_view name);

// How a model is prepared at load.
struct ModelOptions {
  // CPU: pruned weight matrices (checkpoints store them densely with zeros) run from a sparse
  // form (CSR or 2:4) wherever that moves at most 80% of the dense bytes (sparse_weight.h).
  bool sparse_weights = true;
  // CPU: how a 16-bit checkpoint's weight matrices and embeddings are held (float32 checkpoints
  // and device backends are not affected: devices always keep the checkpoint's type).
  CpuWeights cpu_weights = CpuWeights::kAsStored;
};

}  // namespace mnemo::engine
