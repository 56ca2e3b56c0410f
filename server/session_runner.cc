#include "server/session_runner.h"

#include <algorithm>
#include <cmath>

#include "base/status_macros.h"
#include "engine/sampling/speculative_decoder.h"
#include "engine/tokenizer/incremental_decoder.h"

namespace mnemo::server {
namespace {

using engine::LogitsMode;

// Queues one scheduler step over `ids`; the request's cancellation and deadline are checked
// first, so a long ingest or generation stops at its next step.
absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> SubmitTo(
    Scheduler& scheduler, engine::SessionState* state, std::span<const int32_t> ids,
    LogitsMode mode, std::vector<float>* logits, const RequestControl& control,
    bool token_by_token = false) {
  if (control.cancelled && control.cancelled()) {
    return absl::CancelledError("the request was cancelled");
  }
  if (absl::Now() >= control.deadline) {
    return absl::DeadlineExceededError("the request's deadline passed");
  }
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
engine::TokenByTokenStep SchedulerStep(LoadedModel& model, const RequestControl& control) {
  return [&model, &control](engine::SessionState* state, std::span<const int32_t> tokens,
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

absl::Status AppendTokens(LoadedModel& model, SessionMemory& memory,
                          std::span<const int32_t> tokens, const RequestControl& control,
                          int64_t* segments) {
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

absl::StatusOr<GenerationResult> Generate(
    LoadedModel& model, SessionMemory& memory, const GenerationParams& params,
    std::vector<int32_t> history, const RequestControl& control,
    const std::function<bool(const GeneratedToken&)>& on_token) {
  if (memory.pending.empty()) {
    return absl::InvalidArgumentError(
        "nothing to continue: the session is empty and the prompt is empty");
  }
  RETURN_IF_ERROR(FlushPending(model, memory, control, nullptr));
  const engine::Tokenizer* tokenizer = model.tokenizer.get();
  const int32_t eos = params.ignore_eos || tokenizer == nullptr ? -1 : tokenizer->eos_id();
  engine::StopCondition stop(params.stop, params.stop_ids, eos);
  std::optional<engine::IncrementalDecoder> decoder;
  if (tokenizer != nullptr) decoder.emplace(*tokenizer);

  GenerationResult result;
  std::string text;     // decoded so far
  size_t released = 0;  // bytes of `text` handed to on_token
  // Takes one sampled token: counts it, fills in the text it releases and says whether it ends
  // the generation (a stop condition; the length limit is the caller's).
  auto take = [&](GeneratedToken& token) -> absl::StatusOr<std::optional<engine::FinishReason>> {
    const int32_t id = token.sample.id;
    if (result.generated++ == 0) result.first_token_time = absl::Now();
    std::optional<engine::FinishReason> finish;
    if (decoder) {
      ASSIGN_OR_RETURN(std::string piece, decoder->Push(id));
      text += piece;
      size_t keep = text.size();
      finish = stop.Check(id, text, &keep, piece.size());
      if (finish) text.resize(std::max(keep, released));
      const size_t ready = finish ? text.size()
                                  : engine::CompleteUtf8Prefix(std::string_view(text).substr(
                                        0, text.size() - stop.PendingBytes(text)));
      if (ready > released) {
        token.text = text.substr(released, ready - released);
        released = ready;
      }
    } else {
      size_t keep = 0;
      finish = stop.Check(id, "", &keep, 0);
    }
    return finish;
  };
  // The end of a generation stopped by `finish`, or by the length limit when it is empty.
  auto end = [&](std::optional<engine::FinishReason> finish) -> absl::StatusOr<GenerationResult> {
    if (finish) {
      result.reason = *finish;
      result.text = text.substr(0, released);
      return result;
    }
    if (decoder) {  // the length limit: what the decoder still holds ends the text
      ASSIGN_OR_RETURN(std::string rest, decoder->Flush());
      text += rest;
      size_t keep = text.size();
      if (stop.Check(-1, text, &keep, rest.size()).has_value()) {
        result.reason = engine::FinishReason::kStopString;
        text.resize(std::max(keep, released));
      }
      result.tail = text.substr(released);
    }
    result.text = text;
    return result;
  };

  if (model.draft != nullptr) {
    // Speculative: the draft proposes, the model verifies draft_tokens + 1 positions per pass.
    // A stop or the length limit inside a pass rewinds both memories to the last token emitted.
    Scheduler::ActiveStream draft_active(*model.draft->scheduler);
    const int32_t last = memory.pending.back();
    ASSIGN_OR_RETURN(
        engine::SpeculativeDecoder speculative,
        engine::SpeculativeDecoder::Create(
            {model.model.get(), &memory.state, SchedulerStep(model, control)},
            {model.draft->model.get(), &memory.draft_state, SchedulerStep(*model.draft, control)},
            params.sampling, model.draft_tokens, std::move(history), last));
    memory.pending.clear();
    std::optional<engine::FinishReason> finish;
    bool done = false;
    while (!done && result.generated < params.max_tokens) {
      ASSIGN_OR_RETURN(std::vector<engine::SampledToken> tokens,
                       speculative.Next(params.max_tokens - result.generated));
      for (size_t i = 0; i < tokens.size() && !done; ++i) {
        GeneratedToken token{tokens[i], ""};
        ASSIGN_OR_RETURN(finish, take(token));
        done = finish.has_value() || result.generated == params.max_tokens;
        if (done) RETURN_IF_ERROR(speculative.Rewind(static_cast<int64_t>(i) + 1));
        if (!on_token(token)) return absl::CancelledError("the client went away");
      }
    }
    RETURN_IF_ERROR(speculative.Settle());
    memory.pending.assign(1, speculative.last());
    result.draft_proposed = speculative.stats().drafted;
    result.draft_accepted = speculative.stats().accepted;
    return end(finish);
  }

  engine::Sampler sampler(params.sampling);
  const int64_t vocab = model.model->config().vocab_size;
  // The next token's step is queued before the current one goes to the client, so the write
  // overlaps the forward pass and the step joins the next batch early. A ticket in flight is
  // withdrawn or waited for when it goes out of scope (also on every early return).
  std::vector<float> logits;  // before the ticket: it must outlive any step in flight
  int32_t input = memory.pending.back();
  absl::Time submitted = absl::Now();
  ASSIGN_OR_RETURN(
      std::unique_ptr<Scheduler::Ticket> ticket,
      SubmitStep(model, memory, std::span(&input, 1), LogitsMode::kLast, &logits, control));
  memory.pending.clear();
  for (int64_t step = 0; step < params.max_tokens; ++step) {
    RETURN_IF_ERROR(WaitStep(*ticket, submitted, control).status());
    ticket.reset();
    GeneratedToken token;
    token.sample = sampler.Sample(logits.data(), vocab, history);
    const int32_t id = token.sample.id;
    memory.pending.assign(1, id);  // sampled, not yet run
    history.push_back(id);
    ASSIGN_OR_RETURN(std::optional<engine::FinishReason> finish, take(token));
    if (!finish && step + 1 < params.max_tokens) {
      input = id;
      submitted = absl::Now();
      ASSIGN_OR_RETURN(ticket, SubmitStep(model, memory, std::span(&input, 1), LogitsMode::kLast,
                                          &logits, control));
      memory.pending.clear();
    }
    if (!on_token(token)) return absl::CancelledError("the client went away");
    if (finish) return end(finish);
  }
  return end(std::nullopt);
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
      const float lse = engine::LogSumExp(row, vocab);
      scored.push_back({seq[target], row[seq[target]] - lse});
    }
    done += t;
  }
  memory.pending.assign(seq.end() - 1, seq.end());
  return scored;
}

}  // namespace mnemo::server
