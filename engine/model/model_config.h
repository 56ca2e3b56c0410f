// ModelConfig: the validated contents of a checkpoint's config.json (engine/CHECKPOINT-FORMAT.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"

namespace mnemo::engine {

enum class Activation : uint8_t { kRelu, kGelu };

// First-segment convention of XL memory (MODEL-SPEC §1.3).
enum class MemoryInit : uint8_t {
  kZeros,  // mem_len zero rows, as Hugging Face and the TF code (what wt103 weights expect)
  kEmpty,  // no rows, as the original PyTorch code
};

// What a layer's attention is (MODEL-SPEC §1, §5). More kinds follow.
enum class AttentionKind : uint8_t {
  kDense,   // Transformer-XL relative attention over [memory | segment]
  kLinear,  // kernelised causal attention carried as a recurrent state (S, z) per head
  kSparse,  // softmax attention over a (dilated) sliding window, kept as a rolling K/V buffer
};

// Feature map of a linear layer (MODEL-SPEC §5.2–5.4).
enum class FeatureMap : uint8_t {
  kElu,    // φ(x) = elu(x) + 1, d_h features
  kFavor,  // Performer FAVOR+ positive random features, num_features of them
  kRfa,    // random Fourier features (sin | cos), 2·num_features of them, optionally gated
};

// One entry of config.json's "layers".
struct LayerConfig {
  AttentionKind attention = AttentionKind::kDense;
  FeatureMap feature_map = FeatureMap::kElu;
  int64_t num_features = 0;        // favor, rfa: rows of the stored feature matrix
  double eps = 1e-6;               // linear: the denominator is clamped to at least eps
  bool gated = false;              // rfa: decay the state by a learned per-head gate
  int64_t window = 0;              // sparse: keys a query sees, itself included
  std::vector<int64_t> dilations;  // sparse: per head (n_head entries)

  // sparse: positions before the current segment the layer must keep: (window − 1)·max dilation.
  int64_t sparse_span() const;
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
  // Per layer; empty or shorter than n_layer means dense for the missing layers (a config built
  // in code without them; ParseModelConfig always fills n_layer entries).
  std::vector<LayerConfig> layers;

  int64_t attn_width() const { return n_head * d_head; }  // H·d_h
  const LayerConfig& layer(int64_t l) const;
  bool is_dense(int64_t l) const { return layer(l).attention == AttentionKind::kDense; }
  bool has_dense_layer() const;
  // Features per head of linear layer `layer` (the rows of its state S).
  int64_t linear_features(int64_t layer) const;
};

// Parses and validates config.json text. Errors are INVALID_ARGUMENT and name the field.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace mnemo::engine
