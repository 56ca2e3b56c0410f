#include "engine/sampling/speculative_decoder.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/draft_spec.h"

namespace mnemo::engine {
TokenByTokenStep DirectStep(TransfoXlModel& model) {
  return [&model](SessionState* state, std::span<const int32_t> tokens, LogitsMode mode,
                  std::vector<float>* logits) -> absl::Status {
    SequenceInput in{tokens.data(), static_cast<int64_t>(tokens.size()), state};
    in.token_by_token = true;
    Tensor out;
    RETURN_IF_ERROR(model.Forward({in}, mode, &out));
    if (mode != LogitsMode::kNone) {
      logits->assign(out.data<float>(), out.data<float>() + out.numel());
    }
    return absl::OkStatus();
  };
}

absl::StatusOr<SpeculativeDecoder> SpeculativeDecoder::Create(
    TransfoXlModel& target, SessionState* target_state, TransfoXlModel& draft,
    SessionState* draft_state, const SamplingParams& params, int draft_tokens,
    std::vector<int32_t> history) {
  if (history.empty()) return absl::InvalidArgumentError("speculative decoding needs a token");
  const int32_t last = history.back();
  return Create({&target, target_state, {}}, {&draft, draft_state, {}}, params, draft_tokens,
                std::move(history), last);
}

absl::StatusOr<SpeculativeDecoder> SpeculativeDecoder::Create(
    SpeculativeModel target, SpeculativeModel draft, const SamplingParams& params, int draft_tokens,
    std::vector<int32_t> history, int32_t last) {
  RETURN_IF_ERROR(ValidateSamplingParams(params));
  if (target.model == nullptr || draft.model == nullptr) {
    return absl::InvalidArgumentError("speculative decoding needs a target and a draft model");
  }
  if (draft_tokens < 1 || draft_tokens > kMaxDraftTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("draft_tokens must be in [1, ", kMaxDraftTokens, "], got ", draft_tokens));
  }
  const int64_t vocab = target.model->config().vocab_size;
  if (vocab != draft.model->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the draft model's vocabulary (",
                                                   draft.model->config().vocab_size,
                                                   ") differs from the target's (", vocab, ")"));
  }
  if (target.state == nullptr || draft.state == nullptr || target.state == draft.state) {
    return absl::InvalidArgumentError("speculative decoding needs two distinct session states");
  }
  history.push_back(last);  // checked with the rest, then taken off again
  for (int32_t id : history) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
  }
  history.pop_back();
  if (!target.step) target.step = DirectStep(*target.model);
  if (!draft.step) draft.step = DirectStep(*draft.model);
  return SpeculativeDecoder(std::move(target), std::move(draft), params, draft_tokens,
                            std::move(history), last);
}

SpeculativeDecoder::SpeculativeDecoder(SpeculativeModel target, SpeculativeModel draft,
                                       const SamplingParams& params, int draft_tokens,
                                       std::vector<int32_t> history, int32_t last)
    : target_(std::move(target)),
      draft_(std::move(draft)),
      sampler_(params),
      draft_tokens_(draft_tokens),
      history_(std::move(history)),
      last_(last),
      target_unfed_{last},
      draft_unfed_{last} {}

absl::StatusOr<std::vector<SampledToken>> SpeculativeDecoder::Next(int64_t max_tokens) {
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be ≥ 1, got ", max_tokens));
  }
  // Kept tokens the target has not been fed ride along with its next verification (one pass, not
  // two); once they pile up past a bound they run on their own.
  if (static_cast<int>(target_unfed_.size()) > 2 * (draft_tokens_ + 1)) RETURN_IF_ERROR(Settle());
  const int k = static_cast<int>(std::clamp<int64_t>(max_tokens - 1, 1, draft_tokens_));
  const int64_t vocab = target_.model->config().vocab_size;
  pass_ = Pass{};
  pass_.history_size = history_.size();
  pass_.target_unfed = target_unfed_;

  // 1. The draft proposes k tokens from its own distributions q_1 … q_k. Each proposal sees the
  //    ones before it in the history (repetition penalty); they come off again below.
  std::vector<int32_t> drafts;
  if (q_.size() < static_cast<size_t>(k)) q_.resize(static_cast<size_t>(k));
  std::vector<float>& logits = logits_;
  for (int j = 0; j < k; ++j) {
    if (j == 0) {
      RETURN_IF_ERROR(draft_.step(draft_.state, draft_unfed_, LogitsMode::kLast, &logits));
      // The draft's state holding exactly the kept document.
      RETURN_IF_ERROR(draft_.model->CopyStateInto(*draft_.state, &draft_snapshot_));
    } else {
      RETURN_IF_ERROR(
          draft_.step(draft_.state, std::span(&drafts.back(), 1), LogitsMode::kLast, &logits));
    }
    sampler_.Distribution(logits.data(), vocab, history_, q_[j]);
    drafts.push_back(sampler_.Draw(q_[j]));
    history_.push_back(drafts.back());
  }
  history_.resize(pass_.history_size);

  // 2. The target scores the tokens it has not been fed (the last one last) and every proposal
  //    in one pass: row i of the last k + 1 is its distribution for the token after
  //    drafts[0 … i−1].
  RETURN_IF_ERROR(target_.model->CopyStateInto(*target_.state, &target_snapshot_));
  std::vector<int32_t> verify = target_unfed_;
  verify.insert(verify.end(), drafts.begin(), drafts.end());
  RETURN_IF_ERROR(target_.step(target_.state, verify, LogitsMode::kAll, &logits));
  const float* rows = logits.data() + static_cast<int64_t>(target_unfed_.size() - 1) * vocab;

  // 3. Accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from
  //    norm(max(0, p_i − q_i)); when all are kept, draw one more from p_{k+1}.
  std::vector<SampledToken> out;
  std::vector<double>& p = p_;
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
    const std::vector<double>& q = q_[static_cast<size_t>(i)];
    const double ratio = q[d] > 0.0 ? p[d] / q[d] : 0.0;
    if (sampler_.Uniform() < ratio) {
      out.push_back(sampler_.Report(row, vocab, d));
      history_.push_back(d);
      ++accepted;
      continue;
    }
    std::vector<double>& residual = residual_;
    residual.resize(p.size());
    double mass = 0.0;
    for (size_t t = 0; t < p.size(); ++t) {
      residual[t] = std::max(0.0, p[t] - q[t]);
      mass += residual[t];
    }
    // p ≤ q everywhere only when p = q (then d was accepted): rounding alone gets here.
    out.push_back(sampler_.Report(row, vocab, sampler_.Draw(mass > 0.0 ? residual : p)));
    rejected = true;
  }
  last_ = out.back().id;
  history_.push_back(last_);

  // 4. Memories: each model holds the kept document but for its unfed tokens, which end with
  //    the new last token. After a rejection both go back to their snapshots (swapped, so the
  //    buffers serve the next pass) and keep the accepted tokens unfed.
  const std::vector<int32_t> kept(drafts.begin(), drafts.begin() + accepted);
  if (accepted == k) {
    // The target was fed everything; the draft all but the last proposal.
    target_unfed_ = {last_};
    draft_unfed_ = {drafts.back(), last_};
  } else {
    std::swap(*target_.state, target_snapshot_);
    pass_.target_at_snapshot = true;
    target_unfed_.insert(target_unfed_.end(), kept.begin(), kept.end());
    target_unfed_.push_back(last_);
    std::swap(*draft_.state, draft_snapshot_);
    pass_.draft_at_snapshot = true;
    draft_unfed_ = kept;
    draft_unfed_.push_back(last_);
  }
  for (const SampledToken& t : out) pass_.emitted.push_back(t.id);
  pass_.valid = true;
  ++stats_.cycles;
  stats_.drafted += k;
  stats_.accepted += accepted;
  stats_.emitted += static_cast<int64_t>(out.size());
  return out;
}

absl::Status SpeculativeDecoder::Rewind(int64_t keep) {
  if (!pass_.valid) {
    return absl::FailedPreconditionError("Rewind must directly follow Next");
  }
  const auto emitted = static_cast<int64_t>(pass_.emitted.size());
  if (keep < 1 || keep > emitted) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep must be in [1, ", emitted, "], got ", keep));
  }
  pass_.valid = false;
  if (keep == emitted) return absl::OkStatus();
  // Both snapshots hold the document as the pass found it: the target's without its unfed
  // tokens, the draft's through the last token.
  if (!pass_.target_at_snapshot) std::swap(*target_.state, target_snapshot_);
  if (!pass_.draft_at_snapshot) std::swap(*draft_.state, draft_snapshot_);
  const std::vector<int32_t> kept(pass_.emitted.begin(), pass_.emitted.begin() + keep);
  history_.resize(pass_.history_size);
  history_.insert(history_.end(), kept.begin(), kept.end());
  last_ = kept.back();
  target_unfed_ = pass_.target_unfed;
  target_unfed_.insert(target_unfed_.end(), kept.begin(), kept.end());
  draft_unfed_ = kept;
  stats_.emitted -= emitted - keep;
  return absl::OkStatus();
}

absl::Status SpeculativeDecoder::Settle() {
  pass_.valid = false;
  for (auto [side, unfed] :
       {std::pair{&target_, &target_unfed_}, std::pair{&draft_, &draft_unfed_}}) {
    if (unfed->size() < 2) continue;
    RETURN_IF_ERROR(side->step(side->state, std::span(*unfed).first(unfed->size() - 1),
                               LogitsMode::kNone, nullptr));
    unfed->erase(unfed->begin(), unfed->end() - 1);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
