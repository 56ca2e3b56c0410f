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
#include <vector>

#include "absl/status/statusor.h"

#include "engine/memory/session_state.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/sampling/sampler.h"

namespace mnemo::engine {

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

  // The next 1 … draft_tokens + 1 tokens of the document, reported as Sampler::Sample reports
  // (the target's log-probabilities). A caller that stops early simply drops the rest.
  absl::StatusOr<std::vector<SampledToken>> Next();

  // Feeds each model the kept tokens it has not been fed but the last, so that both states hold
  // exactly the document except history().back() (as Create found them), e.g. before the states
  // are used on their own.
  absl::Status Settle();

  const SpeculativeStats& stats() const { return stats_; }
  const std::vector<int32_t>& history() const { return history_; }

 private:
  SpeculativeDecoder(TransfoXlModel& target, SessionState* target_state, TransfoXlModel& draft,
                     SessionState* draft_state, const SamplingParams& params, int draft_tokens,
                     std::vector<int32_t> history);

  TransfoXlModel* target_;
  SessionState* target_state_;
  TransfoXlModel* draft_;
  SessionState* draft_state_;
  Sampler sampler_;
  int draft_tokens_;
  std::vector<int32_t> history_;  // the document so far; its last token is fed to no model
  // Kept tokens a model has not been fed; both end with history_.back().
  std::vector<int32_t> target_unfed_;
  std::vector<int32_t> draft_unfed_;
  SpeculativeStats stats_;
};

}  // namespace mnemo::engine
