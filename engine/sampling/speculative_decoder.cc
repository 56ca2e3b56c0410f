#include "engine/sampling/speculative_decoder.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/draft_spec.h"

namespace mnemo::engine {
namespace {

// Feeds `tokens` as single decode steps would see them, in one call.
absl::Status FeedTokenByToken(TransfoXlModel& model, SessionState* state,
                              const std::vector<int32_t>& tokens, LogitsMode mode, Tensor* logits) {
  SequenceInput in{tokens.data(), static_cast<int64_t>(tokens.size()), state};
  in.token_by_token = true;
  return model.Forward({in}, mode, logits);
}

}  // namespace

absl::StatusOr<SpeculativeDecoder> SpeculativeDecoder::Create(
    TransfoXlModel& target, SessionState* target_state, TransfoXlModel& draft,
    SessionState* draft_state, const SamplingParams& params, int draft_tokens,
    std::vector<int32_t> history) {
  RETURN_IF_ERROR(ValidateSamplingParams(params));
  if (draft_tokens < 1 || draft_tokens > kMaxDraftTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("draft_tokens must be in [1, ", kMaxDraftTokens, "], got ", draft_tokens));
  }
  if (target.config().vocab_size != draft.config().vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the draft model's vocabulary (", draft.config().vocab_size,
                     ") differs from the target's (", target.config().vocab_size, ")"));
  }
  if (target_state == nullptr || draft_state == nullptr || target_state == draft_state) {
    return absl::InvalidArgumentError("speculative decoding needs two distinct session states");
  }
  if (history.empty()) return absl::InvalidArgumentError("speculative decoding needs a token");
  for (int32_t id : history) {
    if (id < 0 || id >= target.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
  }
  return SpeculativeDecoder(target, target_state, draft, draft_state, params, draft_tokens,
                            std::move(history));
}

SpeculativeDecoder::SpeculativeDecoder(TransfoXlModel& target, SessionState* target_state,
                                       TransfoXlModel& draft, SessionState* draft_state,
                                       const SamplingParams& params, int draft_tokens,
                                       std::vector<int32_t> history)
    : target_(&target),
      target_state_(target_state),
      draft_(&draft),
      draft_state_(draft_state),
      sampler_(params),
      draft_tokens_(draft_tokens),
      history_(std::move(history)),
      target_unfed_{history_.back()},
      draft_unfed_{history_.back()} {}

absl::StatusOr<std::vector<SampledToken>> SpeculativeDecoder::Next() {
  const int k = draft_tokens_;
  const int64_t vocab = target_->config().vocab_size;

  // 1. The draft proposes k tokens from its own distributions q_1 … q_k.
  std::vector<int32_t> drafts;
  std::vector<std::vector<double>> q(static_cast<size_t>(k));
  std::vector<int32_t> seen = history_;  // history as each proposal sees it (repetition penalty)
  SessionState draft_kept;               // the draft's state holding exactly the kept document
  for (int j = 0; j < k; ++j) {
    Tensor logits;
    if (j == 0) {
      RETURN_IF_ERROR(
          FeedTokenByToken(*draft_, draft_state_, draft_unfed_, LogitsMode::kLast, &logits));
      ASSIGN_OR_RETURN(draft_kept, draft_->CloneState(*draft_state_));
    } else {
      RETURN_IF_ERROR(
          FeedTokenByToken(*draft_, draft_state_, {drafts.back()}, LogitsMode::kLast, &logits));
    }
    sampler_.Distribution(logits.data<float>(), vocab, seen, q[j]);
    drafts.push_back(sampler_.Draw(q[j]));
    seen.push_back(drafts.back());
  }

  // 2. The target scores the tokens it has not been fed (the pending one last) and every
  //    proposal in one pass: row i of the last k + 1 is its distribution for the token after
  //    drafts[0 … i−1].
  ASSIGN_OR_RETURN(SessionState target_kept, target_->CloneState(*target_state_));
  std::vector<int32_t> verify = target_unfed_;
  verify.insert(verify.end(), drafts.begin(), drafts.end());
  Tensor all_logits;
  RETURN_IF_ERROR(FeedTokenByToken(*target_, target_state_, verify, LogitsMode::kAll, &all_logits));
  const float* rows =
      all_logits.data<float>() + static_cast<int64_t>(target_unfed_.size() - 1) * vocab;

  // 3. Accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from
  //    norm(max(0, p_i − q_i)); when all are kept, draw one more from p_{k+1}.
  std::vector<SampledToken> out;
  std::vector<double> p;
  int accepted = 0;
  bool rejected = false;
  for (int i = 0; i <= k && !rejected; ++i) {
    const float* row = rows + static_cast<int64_t>(i) * vocab;
    sampler_.Distribution(row, vocab, history_, p);
    if (i == k) {
      out.push_back(sampler_.Report(row, vocab, sampler_.Draw(p)));
      break;
    }
    const int32_t d = drafts[i];
    const double ratio = q[i][d] > 0.0 ? p[d] / q[i][d] : 0.0;
    if (sampler_.Uniform() < ratio) {
      out.push_back(sampler_.Report(row, vocab, d));
      history_.push_back(d);
      ++accepted;
      continue;
    }
    std::vector<double> residual(p.size());
    double mass = 0.0;
    for (size_t t = 0; t < p.size(); ++t) {
      residual[t] = std::max(0.0, p[t] - q[i][t]);
      mass += residual[t];
    }
    // p ≤ q everywhere only when p = q (then d was accepted): rounding alone gets here.
    out.push_back(sampler_.Report(row, vocab, sampler_.Draw(mass > 0.0 ? residual : p)));
    rejected = true;
  }
  history_.push_back(out.back().id);

  // 4. Memories: each model holds the kept document but for its unfed tokens, which end with
  //    the new last token. After a rejection the target goes back to its snapshot and keeps the
  //    accepted tokens unfed: its next verification pass runs them along (one pass, not two),
  //    unless they have piled up past a bound, when they run now.
  const std::vector<int32_t> kept(drafts.begin(), drafts.begin() + accepted);
  if (accepted == k) {
    // The target was fed everything; the draft all but the last proposal.
    target_unfed_ = {out.back().id};
    draft_unfed_ = {drafts.back(), out.back().id};
  } else {
    *target_state_ = std::move(target_kept);
    target_unfed_.insert(target_unfed_.end(), kept.begin(), kept.end());
    target_unfed_.push_back(out.back().id);
    *draft_state_ = std::move(draft_kept);
    draft_unfed_ = kept;
    draft_unfed_.push_back(out.back().id);
    if (static_cast<int>(target_unfed_.size()) > 2 * (k + 1)) RETURN_IF_ERROR(Settle());
  }
  ++stats_.cycles;
  stats_.drafted += k;
  stats_.accepted += accepted;
  stats_.emitted += static_cast<int64_t>(out.size());
  return out;
}

absl::Status SpeculativeDecoder::Settle() {
  for (auto [model, state, unfed] : {std::tuple{target_, target_state_, &target_unfed_},
                                     std::tuple{draft_, draft_state_, &draft_unfed_}}) {
    if (unfed->size() < 2) continue;
    const std::vector<int32_t> head(unfed->begin(), unfed->end() - 1);
    RETURN_IF_ERROR(FeedTokenByToken(*model, state, head, LogitsMode::kNone, nullptr));
    unfed->erase(unfed->begin(), unfed->end() - 1);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
