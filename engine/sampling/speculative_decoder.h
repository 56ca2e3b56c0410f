// SpeculativeDecoder: generation from a target model with a small draft model proposing tokens
// (speculative sampling, Leviathan et al. 2023; Chen et al. 2023). Each cycle the draft proposes
// k tokens one at a time; the target scores all of them in one token_by_token pass (one weight
// read for k + 1 positions, each computed exactly as a single decode step); the accept/reject
// rule keeps a prefix of them and adds one token from the target's corrected distribution.
//
// Guarantees: with greedy sampling the tokens are exactly the target's own greedy decode; with
// any other sampling they follow the target's sampling distribution (temperature, top-k, top-p
// and repetition penalty included). Both models' memories stay those of exactly the emitted
// document: rejected tokens are rolled back by restoring a snapshot, and the kept tokens are fed
// with the model's next call (the draft's next proposal, the target's next verification).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/memory/session_state.h"
#include "engine/model/draft_spec.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/sampling/sampler.h"

namespace mnemo::engine {

// Runs one token_by_token call of a model on `state` (see SequenceInput::token_by_token) and
// writes the logits `mode` asks for into *logits (kLast: [vocab]; kAll: [tokens, vocab]; kNone:
// untouched). The decoder's own default calls Forward on the calling thread; a server passes one
// that goes through its engine loop.
using TokenByTokenStep =
    std::function<absl::Status(SessionState* state, std::span<const int32_t> tokens,
                               LogitsMode mode, std::vector<float>* logits)>;

// A TokenByTokenStep calling model.Forward directly.
TokenByTokenStep DirectStep(TransfoXlModel& model);

// One side of the decoder: the model, the session state it advances, and how it runs.
struct SpeculativeModel {
  TransfoXlModel* model = nullptr;
  SessionState* state = nullptr;
  TokenByTokenStep step;  // empty: DirectStep(*model)
};

struct SpeculativeStats {
  int64_t cycles = 0;    // draft-then-verify rounds
  int64_t drafted = 0;   // tokens the draft proposed
  int64_t accepted = 0;  // of which the target kept
  int64_t emitted = 0;   // tokens returned (accepted + one per cycle)
};

class SpeculativeDecoder {
 public:
  // `target_state` and `draft_state` both hold the document except its last token
  // (`history.back()`), which neither model has been fed. The models must share the vocabulary;
  // draft_tokens in [1, 64]. The states must outlive the decoder and not be used elsewhere while
  // it runs. INVALID_ARGUMENT on a mismatch or a model the token_by_token pass refuses.
  static absl::StatusOr<SpeculativeDecoder> Create(TransfoXlModel& target,
                                                   SessionState* target_state,
                                                   TransfoXlModel& draft, SessionState* draft_state,
                                                   const SamplingParams& params, int draft_tokens,
                                                   std::vector<int32_t> history);
  // The general form: `history` (possibly empty) is what the repetition penalty sees and `last`
  // the document's last token, which neither state has been fed; each side runs through its step.
  static absl::StatusOr<SpeculativeDecoder> Create(SpeculativeModel target, SpeculativeModel draft,
                                                   const SamplingParams& params, int draft_tokens,
                                                   std::vector<int32_t> history, int32_t last);

  // The next 1 … draft_tokens + 1 tokens of the document, reported as Sampler::Sample reports
  // (the target's log-probabilities). `max_tokens` ≥ 1 caps the proposals at max_tokens − 1
  // (at least one), so at most one token more than asked for comes back.
  absl::StatusOr<std::vector<SampledToken>> Next(int64_t max_tokens = kMaxDraftTokens + 1);

  // Keeps only the first `keep` (≥ 1) tokens the last Next returned, as if the others had never
  // been produced: both memories and the history go back to the document ending with token
  // keep − 1 (a stop condition or a length limit hit inside a pass). Must directly follow Next.
  absl::Status Rewind(int64_t keep);

  // Feeds each model the kept tokens it has not been fed but the last, so that both states hold
  // exactly the document except history().back() (as Create found them), e.g. before the states
  // are used on their own.
  absl::Status Settle();

  const SpeculativeStats& stats() const { return stats_; }
  // The penalty history given to Create plus every token emitted since.
  const std::vector<int32_t>& history() const { return history_; }
  // The document's last token (fed to neither model).
  int32_t last() const { return last_; }

 private:
  SpeculativeDecoder(SpeculativeModel target, SpeculativeModel draft, const SamplingParams& params,
                     int draft_tokens, std::vector<int32_t> history, int32_t last);

  // What Rewind needs of the last pass.
  struct Pass {
    bool valid = false;
    size_t history_size = 0;            // history_ before the pass
    std::vector<int32_t> target_unfed;  // target_unfed_ before the pass
    bool target_at_snapshot = false;    // the target state was already put back
    bool draft_at_snapshot = false;
    std::vector<int32_t> emitted;
  };

  SpeculativeModel target_;
  SpeculativeModel draft_;
  Sampler sampler_;
  int draft_tokens_;
  std::vector<int32_t> history_;
  int32_t last_;
  // Kept tokens a model has not been fed; both end with last_.
  std::vector<int32_t> target_unfed_;
  std::vector<int32_t> draft_unfed_;
  // Snapshots of the states before a pass (their buffers are reused from pass to pass).
  SessionState target_snapshot_;
  SessionState draft_snapshot_;
  Pass pass_;
  SpeculativeStats stats_;
  // Per-pass scratch, kept so that a pass allocates nothing once warm: the draft's
  // distributions, the target's, the rejection residual and the logits of either model.
  std::vector<std::vector<double>> q_;
  std::vector<double> p_;
  std::vector<double> residual_;
  std::vector<float> logits_;
};

}  // namespace mnemo::engine
