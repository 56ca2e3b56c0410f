// ModelConfig: the validated contents of a checkpoint's config.json (engine/CHECKPOINT-FORMAT.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

#include "base/dtype.h"

namespace mnemo::engine {

enum class Activation : uint8_t { kRelu, kGelu };

// First-segment convention of XL memory (MODEL-SPEC §1.3).
enum class MemoryInit : uint8_t {
  kZeros,  // mem_len zero rows, as Hugging Face and the TF code (what wt103 weights expect)
  kEmpty,  // no rows, as the original PyTorch code
};

struct ModelConfig {
  std::string architecture;  // "transfo_xl"
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t d_head = 0;
  int64_t d_inner = 0;
  int64_t mem_len = 0;
  int64_t clamp_len = 0;  // 0 = no clamp
  bool same_length = false;
  bool pre_lnorm = false;
  bool untie_r = true;
  Activation activation = Activation::kRelu;
  double layer_norm_epsilon = 1e-5;
  MemoryInit memory_init = MemoryInit::kZeros;
  bool tie_word_embeddings = false;
  DType dtype = DType::kF32;  // storage dtype of the weights
  std::optional<int64_t> eos_token_id;

  int64_t attn_width() const { return n_head * d_head; }  // H·d_h
};

// Parses and validates config.json text. Errors are INVALID_ARGUMENT and name the field.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace mnemo::engine
