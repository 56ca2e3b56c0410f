// The generation loop: continues a document token by token from a session's memory. It flushes
// the pending tokens (all but the last, in segments), samples each next token (with the history
// for the repetition penalty), ends on eos, stop ids, stop strings or the length limit, releases
// text as UTF-8-safe deltas (holding back bytes that may still begin a stop string) and, given a
// draft model, decodes speculatively. The server (through its scheduler) and the command line
// (calling the model directly) both run it; how the model is stepped is the caller's
// GenerationSteps.
//
// Threading: RunGeneration runs on the calling thread; the steps are called from it, one at a
// time. Errors: INVALID_ARGUMENT for nothing to continue; a step's or the check's status ends the
// generation with it; CANCELLED when on_token returns false.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "engine/memory/session_state.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/speculative_decoder.h"
#include "engine/sampling/stop_condition.h"
#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine {

struct GenerationParams {
  SamplingParams sampling;
  int64_t max_tokens = 16;
  std::vector<std::string> stop;  // stop strings (need a tokenizer to match)
  std::vector<int32_t> stop_ids;
  bool ignore_eos = false;
};

// One generated token and the text it released (valid UTF-8; text that may still begin a stop
// string is held back until decided).
struct GeneratedToken {
  SampledToken sample;
  std::string text;
};

struct GenerationResult {
  FinishReason reason = FinishReason::kLength;
  int64_t generated = 0;
  std::string text;             // everything released, stop string excluded
  std::string tail;             // released at the end (after the last token's delta)
  absl::Time first_token_time;  // when the first token was sampled
  // Speculative decoding: verification passes, tokens the draft proposed and how many of them the
  // model kept.
  int64_t draft_passes = 0;
  int64_t draft_proposed = 0;
  int64_t draft_accepted = 0;
};

// A decode step that may still be running. Wait blocks until its logits are written; destroying
// a step that was not waited for must withdraw it or wait for it (the loop drops its step on an
// early return, and its logits buffer must then no longer be written).
class PendingStep {
 public:
  virtual ~PendingStep() = default;
  virtual absl::Status Wait() = 0;
};

// A step that already ran, with its status (callers that step the model synchronously).
std::unique_ptr<PendingStep> CompletedStep(absl::Status status);

// How the loop runs the model; each function is bound by the caller to the session's state(s).
struct GenerationSteps {
  // Runs a prefill segment through the model's state and, with a draft, through the draft's state
  // too (both states always hold the same document). Required.
  std::function<absl::Status(std::span<const int32_t> tokens)> prefill;
  // Starts one decode step: `token` into the model's state, its next-token logits [vocab_size]
  // into *logits, which stays alive until the step is waited for or dropped. Required without
  // a draft.
  std::function<absl::StatusOr<std::unique_ptr<PendingStep>>(int32_t token,
                                                             std::vector<float>* logits)>
      decode;
  // Speculative decoding: the model's and the draft's token_by_token calls (empty: direct
  // Forward calls on the calling thread, SpeculativeDecoder's default).
  TokenByTokenStep target_token_by_token;
  TokenByTokenStep draft_token_by_token;
  // Called before each step or pass the loop starts; a non-OK status (cancellation, a passed
  // deadline) ends the generation with it. May be empty.
  std::function<absl::Status()> check;
};

// What the loop needs of the model.
struct GenerationModel {
  int64_t vocab_size = 0;
  const Tokenizer* tokenizer = nullptr;  // null: ids only (no text, no stop strings, no eos)
  int64_t segment_tokens = 1;            // prefill segment length, ≥ 1
  // Speculative decoding when set: both models and the states the steps advance.
  struct Speculative {
    TransfoXlModel* target = nullptr;
    SessionState* target_state = nullptr;
    TransfoXlModel* draft = nullptr;
    SessionState* draft_state = nullptr;
    int draft_tokens = 0;
  };
  std::optional<Speculative> speculative;
};

// Generates from a memory whose not yet run tokens are `pending` (the document's tail; its last
// token is the next input): all pending tokens but the last are run first, in segments; each
// sampled token becomes the next input; at the end `pending` holds the last sampled token, not
// yet run, like the tail of an ingest. `history` seeds the repetition penalty. `on_token`
// returning false stops with CANCELLED. With a draft (model.speculative) the tokens are the same
// under greedy sampling, the same distribution otherwise; both memories end holding exactly the
// emitted tokens. On failure the states and `pending` are valid but arbitrary.
absl::StatusOr<GenerationResult> RunGeneration(
    const GenerationModel& model, std::vector<int32_t>& pending, const GenerationParams& params,
    std::vector<int32_t> history, const GenerationSteps& steps,
    const std::function<bool(const GeneratedToken&)>& on_token);

// Steps that call model.Forward (and draft->Forward) on the calling thread for `state` (and
// `draft_state`).
GenerationSteps DirectGenerationSteps(TransfoXlModel& model, SessionState* state,
                                      TransfoXlModel* draft = nullptr,
                                      SessionState* draft_state = nullptr);

}  // namespace mnemo::engine
