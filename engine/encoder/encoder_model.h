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
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// One block's weights (docs/checkpoint-format.md "Encoders": names and shapes).
struct EncoderLayerWeights {
  Tensor qkv, qkv_bias;  // [3·D, D], [3·D]: query | key | value (Synthesizer: value only, [D, D])
  Tensor global_qkv, global_qkv_bias;  // Longformer: the global positions' own projections
  Tensor conv;                         // Nyströmformer: [H, taps] of the values' convolution
  Tensor proj_k, proj_v;               // Linformer: E, F [linformer_k, segment_len]
  Tensor synth1, synth1_bias;          // dense Synthesizer: [D, D], [D]
  Tensor synth2, synth2_bias;          // dense Synthesizer: [H, segment_len, d_head], [H, seg]
  Tensor random;                       // random Synthesizer: [H, segment_len, segment_len]
  Tensor o, o_bias;                    // [D, D], [D]
  Tensor attn_ln_gamma, attn_ln_beta;  // [D]
  Tensor fc1, fc1_bias;                // [d_inner, D], [d_inner]
  Tensor fc2, fc2_bias;                // [D, d_inner], [D]
  Tensor ff_ln_gamma, ff_ln_beta;      // [D]
};

// The masked-LM head (config mlm_head): logits = W_emb · LN(gelu(W·h + b)) + decoder_bias.
struct MaskedLmWeights {
  Tensor dense, dense_bias;  // [D, D], [D]
  Tensor ln_gamma, ln_beta;  // [D]
  Tensor decoder_bias;       // [V]; the output matrix is the word embeddings
};

struct EncoderWeights {
  Tensor word_emb;                   // [V, D]
  Tensor position_emb;               // [position_rows, D]
  Tensor token_type_emb;             // [type_vocab_size, D]
  Tensor emb_ln_gamma, emb_ln_beta;  // [D]
  std::vector<EncoderLayerWeights> layers;
  MaskedLmWeights mlm;  // empty without config mlm_head
};

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
