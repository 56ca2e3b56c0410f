// ModelOptions: how a model is prepared at load (TransfoXlModel::Load, engine::api::Model).
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

#include "base/dtype.h"

namespace mnemo::engine {

// How the CPU backend holds the weight matrices of a bf16 or f16 checkpoint.
enum class CpuWeights : uint8_t {
  kAsStored,  // 16-bit as in the checkpoint: half the bytes per decode step (half_linear.h)
  kFloat32,   // widened to float32 at load: the oracle the 16-bit products are checked against
  // As stored, and decode products against bf16 weights round their activations to bf16 for the
  // CPU's AVX-512 BF16 dot products where it has them (kernels::HalfProducts::kBf16): faster
  // batched decode, each output within 2⁻⁹ of Σ|x·w| of kAsStored's.
  kBf16Products,
};

// The `--cpu-weights` flag's values (EnumTable<CpuWeights>: "stored", "float32",
// "bf16-products"); an error naming the flag and the names otherwise.
absl::StatusOr<CpuWeights> ParseCpuWeights(std::string_view name);

// The `--session-memory` flag's values: "float32", "bfloat16" or "float16" (the dtype of the
// session memory's key/value rings); an error naming the flag and the names otherwise.
absl::StatusOr<DType> ParseSessionMemory(std::string_view name);

// How a model is prepared at load.
struct ModelOptions {
  // CPU: pruned weight matrices (checkpoints store them densely with zeros) run from a sparse
  // form (CSR or 2:4) wherever that moves at most 80% of the dense bytes (sparse_weight.h).
  bool sparse_weights = true;
  // CPU: how a 16-bit checkpoint's weight matrices and embeddings are held (float32 checkpoints
  // and device backends are not affected: devices always keep the checkpoint's type).
  CpuWeights cpu_weights = CpuWeights::kAsStored;
  // CPU: the dtype of the Transformer-XL key/value rings of dense and compressive layers (the
  // XL memory and the compressed memory) in every session. bfloat16 / float16 halve the state
  // bytes a session holds and a decode step reads; each stored key and value is rounded once
  // when it joins the ring, and the attention computes in float32 on the widened rows. float32
  // is the oracle. Other kinds' state stays float32; device backends refuse 16-bit memory.
  DType session_memory = DType::kF32;
};

}  // namespace mnemo::engine
