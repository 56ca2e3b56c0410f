// engine::api::Encoder: a loaded encoder checkpoint (docs/checkpoint-format.md "Encoders"): a
// document's token ids in, one vector per token or one pooled vector out. A document longer than
// one pass runs in overlapping windows (the rule is PlanEncodeWindows below, and
// docs/command-line.md). The command line (`mnemo encode`) calls Encode; the server plans the
// windows itself (Plan, WindowSequence) and runs them through its scheduler, which puts windows of
// several requests into one pass (EncodeBatch), and folds them with a Pooler.
//
// Threading: a loaded Encoder is immutable; Encode may run concurrently from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/encoder/encoder_config.h"
#include "engine/encoder/encoder_sequence.h"
#include "engine/tensor/tensor.h"
#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine {
class EncoderModel;
}  // namespace mnemo::engine

namespace mnemo::engine::api {

using EncoderConfig = engine::EncoderConfig;
using EncoderSequence = engine::EncoderSequence;
using EncodedWindow = engine::EncodedWindow;
using engine::IsEncoderCheckpoint;

enum class Pooling : uint8_t {
  kNone,   // every token's vector: [N, D]
  kMean,   // the mean of every token's vector: [1, D]
  kFirst,  // the first token's vector: [1, D]
  // A Funnel encoder's pooled sequence, the output of its last block: [rows, D], the first
  // token's row first. The document runs in one pass.
  kFunnel,
};

struct EncodeOptions {
  Pooling pooling = Pooling::kNone;
  // Document positions that attend globally (ascending); a window holds those inside it.
  std::vector<int64_t> global_positions;
  // Tokens per pass; 0: the model's maximum (EncoderConfig::max_tokens).
  int64_t window_tokens = 0;
  // Document positions (ascending) whose masked-LM log-probabilities to return (checkpoints with
  // the MLM head): each from the window that keeps the position's vector.
  std::vector<int64_t> mlm_positions;
};

struct EncodeOutput {
  Tensor vectors;       // [N, D] per token, or [1, D] pooled
  Tensor mlm_logprobs;  // [mlm_positions.size(), V]; empty without mlm_positions
};

// One pass of a long document: tokens [begin, begin + length) run together; the tokens
// [keep_begin, keep_end) take their vectors from this pass.
struct EncodeWindow {
  int64_t begin = 0;
  int64_t length = 0;
  int64_t keep_begin = 0;
  int64_t keep_end = 0;
};

// The passes over a document of n tokens in windows of `window` tokens: one pass when it fits;
// otherwise windows start every ⌊window/2⌋ tokens, the last one ending at the document's end, and
// each token takes its vector from the window where it lies farthest from an edge (the earlier
// window on a tie), so every token but those near the document's ends sees at least ⌊window/4⌋
// tokens of context on each side. The kept ranges tile [0, n) in order.
std::vector<EncodeWindow> PlanEncodeWindows(int64_t n, int64_t window);

// The window of `ids` (the whole document) that `w` runs, with the document's global positions
// that fall inside it and the masked-LM positions it keeps.
EncoderSequence WindowSequence(std::span<const int32_t> ids, const EncodeWindow& w,
                               const EncodeOptions& options);

// Folds a document's windows, in plan order, into one pooled vector (kMean or kFirst).
class Pooler {
 public:
  Pooler(Pooling pooling, int64_t tokens, int64_t d_model);
  // Adds window `w`'s kept rows; `hidden` is its pass's output [w.length, D].
  void Add(const EncodeWindow& w, const Tensor& hidden);
  // The pooled vector [1, D] once every window was added.
  Tensor Finish();

 private:
  Pooling pooling_;
  int64_t tokens_;
  Tensor sum_;
};

class Encoder {
 public:
  // Loads `<dir>/config.json`, `<dir>/model.safetensors` and, when present, a sentencepiece
  // `<dir>/tokenizer.model`.
  static absl::StatusOr<std::unique_ptr<Encoder>> Load(const std::string& dir);
  ~Encoder();
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  const EncoderConfig& config() const;
  // The fewest tokens a window may hold: 2, or the more a Funnel pass needs.
  int64_t min_window() const;
  // Null when the checkpoint has no tokenizer.model.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }

  // The document's vectors as `options.pooling` says (float32, host), and the masked-LM
  // log-probabilities options.mlm_positions asks for. INVALID_ARGUMENT for no ids, an id outside
  // the vocabulary, a bad global or MLM position or window size.
  absl::StatusOr<EncodeOutput> Encode(std::span<const int32_t> ids,
                                      const EncodeOptions& options) const;

  // The windows a document of `tokens` tokens runs in under `options`, in order: the plan's
  // windows (PlanEncodeWindows) but, under kFirst pooling, only the first one and those keeping
  // a masked-LM position. INVALID_ARGUMENT for no tokens, a window outside [min_window(),
  // max_tokens], a bad global or MLM position (ids are checked by the pass), or kFunnel for an
  // encoder other than Funnel or a document longer than one window; FAILED_PRECONDITION for MLM
  // positions without the checkpoint's MLM head, or a Funnel base model (it has no per-token
  // vectors) asked for anything but kFunnel.
  absl::StatusOr<std::vector<EncodeWindow>> Plan(int64_t tokens,
                                                 const EncodeOptions& options) const;

  // One pass over several windows, of one document or of several (EncoderModel::EncodeBatch):
  // each one's final hidden states [ids.size(), D].
  absl::StatusOr<std::vector<EncodedWindow>> EncodeBatch(
      std::span<const EncoderSequence> batch) const;

 private:
  Encoder() = default;
  std::unique_ptr<EncoderModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace mnemo::engine::api
