#include "server/session_runner.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"

namespace mnemo::server {
namespace {

using engine::api::LogitsMode;

// Queues one scheduler step over `ids`; the request's cancellation and deadline are checked
// first, so a long ingest or generation stops at its next step.
absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> SubmitTo(
    Scheduler& scheduler, engine::api::SessionState* state, std::span<const int32_t> ids,
    LogitsMode mode, std::vector<float>* logits, const RequestControl& control,
    bool token_by_token = false) {
  RETURN_IF_ERROR(CheckControl(control));
  return scheduler.Submit(state, ids, mode, logits, token_by_token);
}

absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> SubmitStep(
    LoadedModel& model, SessionMemory& memory, std::span<const int32_t> ids, LogitsMode mode,
    std::vector<float>* logits, const RequestControl& control) {
  return SubmitTo(*model.scheduler, &memory.state, ids, mode, logits, control);
}

// Waits for a step submitted at `submitted`; records when the request's first step started.
absl::StatusOr<StepOutput> WaitStep(Scheduler::Ticket& ticket, absl::Time submitted,
                                    const RequestControl& control) {
  auto out = ticket.Wait(control.deadline, control.cancelled);
  if (out.ok() && control.first_step_start != nullptr &&
      *control.first_step_start == absl::InfinitePast()) {
    *control.first_step_start = submitted + out->queued;
  }
  return out;
}

// Runs `ids` through the model and, when it has a draft, through the draft as well (in parallel,
// on the draft's own engine loop), so that both states keep holding the same document.
absl::StatusOr<StepOutput> RunStep(LoadedModel& model, SessionMemory& memory,
                                   std::span<const int32_t> ids, LogitsMode mode,
                                   std::vector<float>* logits, const RequestControl& control) {
  const absl::Time submitted = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<Scheduler::Ticket> ticket,
                   SubmitStep(model, memory, ids, mode, logits, control));
  std::unique_ptr<Scheduler::Ticket> draft_ticket;
  if (model.draft != nullptr) {
    ASSIGN_OR_RETURN(draft_ticket, SubmitTo(*model.draft->scheduler, &memory.draft_state, ids,
                                            LogitsMode::kNone, nullptr, control));
  }
  auto out = WaitStep(*ticket, submitted, control);
  if (draft_ticket != nullptr) {
    RETURN_IF_ERROR(draft_ticket->Wait(control.deadline, control.cancelled).status());
  }
  return out;
}

// A speculative decoder's step for `model`: token_by_token calls through its engine loop.
engine::api::TokenByTokenStep SchedulerStep(LoadedModel& model, const RequestControl& control) {
  return [&model, &control](engine::api::SessionState* state, std::span<const int32_t> tokens,
                            LogitsMode mode, std::vector<float>* logits) -> absl::Status {
    const absl::Time submitted = absl::Now();
    ASSIGN_OR_RETURN(std::unique_ptr<Scheduler::Ticket> ticket,
                     SubmitTo(*model.scheduler, state, tokens, mode, logits, control,
                              /*token_by_token=*/true));
    return WaitStep(*ticket, submitted, control).status();
  };
}

// Runs `count` tokens from the front of the pending tail in segments, then drops them.
absl::Status RunPendingFront(LoadedModel& model, SessionMemory& memory, size_t count,
                             const RequestControl& control, int64_t* segments) {
  const auto segment = static_cast<size_t>(model.segment_tokens);
  size_t done = 0;
  absl::Status status;
  while (done < count) {
    const size_t t = std::min(segment, count - done);
    auto out = RunStep(model, memory, std::span(memory.pending).subspan(done, t), LogitsMode::kNone,
                       nullptr, control);
    if (!out.ok()) {
      status = out.status();
      break;
    }
    done += t;
    if (segments != nullptr) ++*segments;
  }
  memory.pending.erase(memory.pending.begin(),
                       memory.pending.begin() + static_cast<ptrdiff_t>(done));
  return status;
}

}  // namespace

absl::Status CheckControl(const RequestControl& control) {
  if (control.cancelled && control.cancelled()) {
    return absl::CancelledError("the request was cancelled");
  }
  if (absl::Now() >= control.deadline) {
    return absl::DeadlineExceededError("the request's deadline passed");
  }
  return absl::OkStatus();
}

absl::Status AppendTokens(LoadedModel& model, SessionMemory& memory,
                          std::span<const int32_t> tokens, const RequestControl& control,
                          int64_t* segments) {
  // A model with a position limit refuses a document that would pass it when the tokens arrive,
  // not later when a segment of them runs (the pending tail would otherwise hold them).
  const engine::api::ModelConfig& c = model.model->config();
  const auto after = memory.state.position() + static_cast<int64_t>(memory.pending.size()) +
                     static_cast<int64_t>(tokens.size());
  if (c.max_positions() > 0 && after > c.max_positions()) {
    return absl::OutOfRangeError(absl::StrCat(
        "the document would reach ", after, " positions, past the model's position limit of ",
        c.max_positions(), " (", c.max_positions_source(), ")"));
  }
  memory.pending.insert(memory.pending.end(), tokens.begin(), tokens.end());
  const auto segment = static_cast<size_t>(model.segment_tokens);
  if (memory.pending.size() <= segment) return absl::OkStatus();
  // Whole segments, keeping 1 … segment tokens pending.
  const size_t run = (memory.pending.size() - 1) / segment * segment;
  return RunPendingFront(model, memory, run, control, segments);
}

absl::Status FlushPending(LoadedModel& model, SessionMemory& memory, const RequestControl& control,
                          int64_t* segments) {
  if (memory.pending.size() <= 1) return absl::OkStatus();
  return RunPendingFront(model, memory, memory.pending.size() - 1, control, segments);
}

// A decode step in the scheduler's queue; dropping it withdraws the step or waits for it.
class ScheduledStep : public engine::api::PendingStep {
 public:
  ScheduledStep(std::unique_ptr<Scheduler::Ticket> ticket, absl::Time submitted,
                const RequestControl& control)
      : ticket_(std::move(ticket)), submitted_(submitted), control_(control) {}
  absl::Status Wait() override { return WaitStep(*ticket_, submitted_, control_).status(); }

 private:
  std::unique_ptr<Scheduler::Ticket> ticket_;
  absl::Time submitted_;
  const RequestControl& control_;
};

absl::StatusOr<GenerationResult> Generate(
    LoadedModel& model, SessionMemory& memory, const GenerationParams& params,
    std::vector<int32_t> history, const RequestControl& control,
    const std::function<bool(const GeneratedToken&)>& on_token) {
  engine::api::GenerationSteps steps;
  steps.prefill = [&](std::span<const int32_t> tokens) {
    return RunStep(model, memory, tokens, LogitsMode::kNone, nullptr, control).status();
  };
  steps.decode =
      [&](int32_t token,
          std::vector<float>* logits) -> absl::StatusOr<std::unique_ptr<engine::api::PendingStep>> {
    const absl::Time submitted = absl::Now();
    ASSIGN_OR_RETURN(
        std::unique_ptr<Scheduler::Ticket> ticket,
        SubmitStep(model, memory, std::span(&token, 1), LogitsMode::kLast, logits, control));
    return std::make_unique<ScheduledStep>(std::move(ticket), submitted, control);
  };
  steps.check = [&control] { return CheckControl(control); };
  std::optional<Scheduler::ActiveStream> draft_active;
  if (model.draft != nullptr) {
    // Speculative: the draft's loop waits for this stream's next step like the model's does.
    draft_active.emplace(*model.draft->scheduler);
    steps.target_token_by_token = SchedulerStep(model, control);
    steps.draft_token_by_token = SchedulerStep(*model.draft, control);
  }
  return engine::api::Generate(*model.model, model.segment_tokens,
                               {&memory.state, &memory.draft_state, &memory.pending}, params,
                               std::move(history), steps, on_token);
}

absl::StatusOr<std::vector<ScoredToken>> Score(LoadedModel& model, SessionMemory& memory,
                                               std::span<const int32_t> tokens,
                                               const RequestControl& control) {
  const size_t context = memory.pending.size();
  memory.pending.insert(memory.pending.end(), tokens.begin(), tokens.end());
  const std::vector<int32_t> seq = memory.pending;  // the whole run, logits wanted throughout
  const int64_t vocab = model.model->config().vocab_size;
  const auto segment = static_cast<size_t>(model.segment_tokens);
  std::vector<ScoredToken> scored;
  std::vector<float> logits;
  const size_t inputs = seq.size() - 1;  // the last token predicts nothing here
  size_t done = 0;
  while (done < inputs) {
    const size_t t = std::min(segment, inputs - done);
    RETURN_IF_ERROR(
        RunStep(model, memory, std::span(seq).subspan(done, t), LogitsMode::kAll, &logits, control)
            .status());
    for (size_t j = 0; j < t; ++j) {
      const size_t target = done + j + 1;
      if (target < std::max<size_t>(context, 1)) continue;  // a memory token, not the text's
      const float* row = logits.data() + j * static_cast<size_t>(vocab);
      const float lse = engine::api::LogSumExp(row, vocab);
      scored.push_back({seq[target], row[seq[target]] - lse});
    }
    done += t;
  }
  memory.pending.assign(seq.end() - 1, seq.end());
  return scored;
}

}  // namespace mnemo::server
