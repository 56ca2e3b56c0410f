#include "engine/sampling/generation_loop.h"

#include <algorithm>
#include <utility>

#include "base/status_macros.h"
#include "engine/tokenizer/incremental_decoder.h"

namespace mnemo::engine {
namespace {

class DoneStep : public PendingStep {
 public:
  explicit DoneStep(absl::Status status) : status_(std::move(status)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

absl::Status Check(const GenerationSteps& steps) {
  return steps.check ? steps.check() : absl::OkStatus();
}

// Runs every pending token but the last in segments and drops those that ran (also when a
// segment fails: the ones before it did run).
absl::Status FlushPending(const GenerationModel& model, std::vector<int32_t>& pending,
                          const GenerationSteps& steps) {
  if (pending.size() <= 1) return absl::OkStatus();
  const size_t count = pending.size() - 1;
  const auto segment = static_cast<size_t>(std::max<int64_t>(model.segment_tokens, 1));
  size_t done = 0;
  absl::Status status;
  while (done < count) {
    const size_t t = std::min(segment, count - done);
    status = Check(steps);
    if (status.ok()) status = steps.prefill(std::span(pending).subspan(done, t));
    if (!status.ok()) break;
    done += t;
  }
  pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(done));
  return status;
}

// The text side of a generation: decodes tokens incrementally, checks the stop conditions and
// decides what text each token releases.
class TextStream {
 public:
  TextStream(const GenerationModel& model, const GenerationParams& params)
      : stop_(params.stop, params.stop_ids,
              params.ignore_eos || model.tokenizer == nullptr ? -1 : model.tokenizer->eos_id()) {
    if (model.tokenizer != nullptr) decoder_.emplace(*model.tokenizer);
  }

  // Takes one sampled token: fills in the text it releases and says whether it ends the
  // generation (a stop condition; the length limit is the caller's).
  absl::StatusOr<std::optional<FinishReason>> Take(GeneratedToken& token) {
    const int32_t id = token.sample.id;
    if (!decoder_) {
      size_t keep = 0;
      return stop_.Check(id, "", &keep, 0);
    }
    ASSIGN_OR_RETURN(std::string piece, decoder_->Push(id));
    text_ += piece;
    size_t keep = text_.size();
    std::optional<FinishReason> finish = stop_.Check(id, text_, &keep, piece.size());
    if (finish) text_.resize(std::max(keep, released_));
    // Whole UTF-8 characters that cannot begin a stop string are final.
    const size_t ready = finish ? text_.size()
                                : CompleteUtf8Prefix(std::string_view(text_).substr(
                                      0, text_.size() - stop_.PendingBytes(text_)));
    if (ready > released_) {
      token.text = text_.substr(released_, ready - released_);
      released_ = ready;
    }
    return finish;
  }

  // Ends the result: stopped by `finish`, or by the length limit when it is empty (then what the
  // decoder still holds ends the text, and may still complete a stop string).
  absl::Status End(std::optional<FinishReason> finish, GenerationResult& result) {
    if (finish) {
      result.reason = *finish;
      result.text = text_.substr(0, released_);
      return absl::OkStatus();
    }
    if (decoder_) {
      ASSIGN_OR_RETURN(std::string rest, decoder_->Flush());
      text_ += rest;
      size_t keep = text_.size();
      if (stop_.Check(-1, text_, &keep, rest.size()).has_value()) {
        result.reason = FinishReason::kStopString;
        text_.resize(std::max(keep, released_));
      }
      result.tail = text_.substr(released_);
    }
    result.text = text_;
    return absl::OkStatus();
  }

 private:
  StopCondition stop_;
  std::optional<IncrementalDecoder> decoder_;
  std::string text_;     // decoded so far
  size_t released_ = 0;  // bytes of text_ handed out
};

// Speculative: the draft proposes, the model verifies draft_tokens + 1 positions per pass. A stop
// or the length limit inside a pass rewinds both memories to the last token emitted.
absl::StatusOr<GenerationResult> RunSpeculative(
    const GenerationModel& model, std::vector<int32_t>& pending, const GenerationParams& params,
    std::vector<int32_t> history, const GenerationSteps& steps,
    const std::function<bool(const GeneratedToken&)>& on_token) {
  const GenerationModel::Speculative& s = *model.speculative;
  TextStream stream(model, params);
  GenerationResult result;
  ASSIGN_OR_RETURN(SpeculativeDecoder speculative,
                   SpeculativeDecoder::Create(
                       {s.target, s.target_state, steps.target_token_by_token},
                       {s.draft, s.draft_state, steps.draft_token_by_token}, params.sampling,
                       s.draft_tokens, std::move(history), pending.back()));
  pending.clear();
  std::optional<FinishReason> finish;
  bool done = false;
  while (!done && result.generated < params.max_tokens) {
    RETURN_IF_ERROR(Check(steps));
    ASSIGN_OR_RETURN(std::vector<SampledToken> tokens,
                     speculative.Next(params.max_tokens - result.generated));
    for (size_t i = 0; i < tokens.size() && !done; ++i) {
      GeneratedToken token{tokens[i], ""};
      if (result.generated++ == 0) result.first_token_time = absl::Now();
      ASSIGN_OR_RETURN(finish, stream.Take(token));
      done = finish.has_value() || result.generated == params.max_tokens;
      if (done) RETURN_IF_ERROR(speculative.Rewind(static_cast<int64_t>(i) + 1));
      if (!on_token(token)) return absl::CancelledError("the client went away");
    }
  }
  RETURN_IF_ERROR(speculative.Settle());
  pending.assign(1, speculative.last());
  result.draft_passes = speculative.stats().cycles;
  result.draft_proposed = speculative.stats().drafted;
  result.draft_accepted = speculative.stats().accepted;
  RETURN_IF_ERROR(stream.End(finish, result));
  return result;
}

}  // namespace

std::unique_ptr<PendingStep> CompletedStep(absl::Status status) {
  return std::make_unique<DoneStep>(std::move(status));
}

absl::StatusOr<GenerationResult> RunGeneration(
    const GenerationModel& model, std::vector<int32_t>& pending, const GenerationParams& params,
    std::vector<int32_t> history, const GenerationSteps& steps,
    const std::function<bool(const GeneratedToken&)>& on_token) {
  if (pending.empty()) {
    return absl::InvalidArgumentError(
        "nothing to continue: the session is empty and the prompt is empty");
  }
  RETURN_IF_ERROR(FlushPending(model, pending, steps));
  if (model.speculative) {
    return RunSpeculative(model, pending, params, std::move(history), steps, on_token);
  }

  Sampler sampler(params.sampling);
  TextStream stream(model, params);
  GenerationResult result;
  // The next token's step is started before the current one goes to on_token, so the caller's
  // write overlaps the forward pass (and, in a server, the step joins the next batch early). A
  // step in flight is withdrawn or waited for when it goes out of scope (also on early returns).
  std::vector<float> logits;  // before the step: it must outlive any step in flight
  RETURN_IF_ERROR(Check(steps));
  ASSIGN_OR_RETURN(std::unique_ptr<PendingStep> step, steps.decode(pending.back(), &logits));
  pending.clear();
  for (int64_t i = 0; i < params.max_tokens; ++i) {
    RETURN_IF_ERROR(step->Wait());
    step.reset();
    GeneratedToken token;
    token.sample = sampler.Sample(logits.data(), model.vocab_size, history);
    const int32_t id = token.sample.id;
    pending.assign(1, id);  // sampled, not yet run
    history.push_back(id);
    if (result.generated++ == 0) result.first_token_time = absl::Now();
    ASSIGN_OR_RETURN(std::optional<FinishReason> finish, stream.Take(token));
    if (!finish && i + 1 < params.max_tokens) {
      RETURN_IF_ERROR(Check(steps));
      ASSIGN_OR_RETURN(step, steps.decode(id, &logits));
      pending.clear();
    }
    if (!on_token(token)) return absl::CancelledError("the client went away");
    if (finish) {
      RETURN_IF_ERROR(stream.End(finish, result));
      return result;
    }
  }
  RETURN_IF_ERROR(stream.End(std::nullopt, result));
  return result;
}

GenerationSteps DirectGenerationSteps(TransfoXlModel& model, SessionState* state,
                                      TransfoXlModel* draft, SessionState* draft_state) {
  GenerationSteps steps;
  steps.prefill = [&model, state, draft, draft_state](std::span<const int32_t> tokens) {
    const auto n = static_cast<int64_t>(tokens.size());
    Tensor unused;  // kNone writes no logits
    RETURN_IF_ERROR(
        model.Forward({SequenceInput{tokens.data(), n, state}}, LogitsMode::kNone, &unused));
    if (draft != nullptr) {
      RETURN_IF_ERROR(draft->Forward({SequenceInput{tokens.data(), n, draft_state}},
                                     LogitsMode::kNone, &unused));
    }
    return absl::OkStatus();
  };
  steps.decode = [&model, state](
                     int32_t token,
                     std::vector<float>* logits) -> absl::StatusOr<std::unique_ptr<PendingStep>> {
    Tensor out;
    absl::Status status = model.Forward({SequenceInput{&token, 1, state}}, LogitsMode::kLast, &out);
    if (status.ok()) logits->assign(out.data<float>(), out.data<float>() + out.numel());
    return CompletedStep(std::move(status));
  };
  return steps;
}

}  // namespace mnemo::engine
