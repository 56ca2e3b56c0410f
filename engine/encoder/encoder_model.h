// EncoderModel: a loaded encoder checkpoint (engine/encoder/encoder_config.h) on the CPU backend:
// one pass over a whole window of a document returns every token's final hidden state. Several
// windows (of one document or of several) may share a pass: their rows go through each product
// together, so the weights are read once per pass, and attention runs per window.
//
// Threading: a loaded EncoderModel is immutable; Encode may run concurrently from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/encoder/encoder_config.h"
#include "engine/encoder/encoder_sequence.h"
#include "engine/encoder/encoder_weights.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

class EncoderModel {
 public:
  // Loads `<dir>/config.json` and `<dir>/model.safetensors` (every tensor checked by name, shape,
  // dtype and finiteness; 16-bit checkpoints are widened to float32). NOT_FOUND / INVALID_ARGUMENT
  // naming the file and field.
  static absl::StatusOr<std::unique_ptr<EncoderModel>> Load(const std::string& dir);

  const EncoderConfig& config() const { return config_; }

  // One pass over several windows: each one's final hidden states [ids.size(), D] (float32,
  // host), as the window would get alone (to float32 rounding), and the masked-LM
  // log-probabilities of its mlm_positions. INVALID_ARGUMENT, naming the window, when any is bad
  // (no ids, more than config().max_tokens(), an id outside the vocabulary, a bad position;
  // nothing runs then); FAILED_PRECONDITION for MLM positions on a checkpoint without the head.
  absl::StatusOr<std::vector<EncodedWindow>> EncodeBatch(
      std::span<const EncoderSequence> batch) const;

 private:
  EncoderModel(EncoderConfig config, EncoderWeights weights)
      : config_(std::move(config)), weights_(std::move(weights)), backend_(MakeCpuBackend()) {}

  EncoderConfig config_;
  EncoderWeights weights_;
  std::unique_ptr<Backend> backend_;
};

}  // namespace mnemo::engine
