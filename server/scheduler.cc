#include "server/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/metrics.h"

namespace mnemo::server {

using engine::api::LogitsMode;

namespace {

// The loop waits for the other active streams' next steps up to 1/kStragglerWaitShare of the last
// pass's time (when that is longer than batch_wait): at most 25% more latency, for passes that
// carry every stream. On the 2-vCPU VM, 32 sessions of the 12-layer benchmark model: mean batch
// 15.3 → 25.2, 3.3× → 3.5× one session's tokens/s, p99 inter-token latency 136 → 98 ms (1/8:
// mean batch 22.3, p99 155 ms).
constexpr int kStragglerWaitShare = 4;

}  // namespace

// Counted from the end of the last pass too: a pass answers its streams all at once and, on a busy
// CPU, the last of them submits its next step milliseconds after the first. Counted from the first
// queued step alone, a step queued during the last pass would start the next one at once without
// them, and two halves of the streams would then take turns, each pass half full.
absl::Time PassDeadline(absl::Time first_submitted, absl::Time last_pass_end,
                        absl::Duration last_pass_time, absl::Duration batch_wait) {
  return std::max(first_submitted, last_pass_end) +
         std::max(batch_wait, last_pass_time / kStragglerWaitShare);
}

struct Scheduler::Step {
  engine::api::SessionState* state = nullptr;
  // An encode step (encoder models) runs this window instead, writing *encoded.
  const engine::api::EncoderSequence* window = nullptr;
  engine::api::EncodedWindow* encoded = nullptr;
  std::vector<int32_t> tokens;
  LogitsMode mode = LogitsMode::kNone;
  bool token_by_token = false;
  absl::Time submitted;
  // Guarded by the scheduler's mu_ (not annotatable here: the mutex belongs to another object).
  bool taken = false;  // the loop owns it now: it will complete
  bool done = false;
  // Written by the loop during the pass, read by the submitter after it saw `done`.
  std::vector<float>* logits = nullptr;  // the submitter's buffer
  absl::Status status;
  StepOutput output;
  bool is_decode() const {
    return window == nullptr && tokens.size() == 1 && mode == LogitsMode::kLast;
  }
};

Scheduler::Scheduler(const engine::api::Model& model, SchedulerOptions options, Metrics* metrics)
    : model_(&model), options_(options), metrics_(metrics), loop_([this] { Loop(); }) {}

Scheduler::Scheduler(const engine::api::Encoder& encoder, SchedulerOptions options,
                     Metrics* metrics)
    : encoder_(&encoder), options_(options), metrics_(metrics), loop_([this] { Loop(); }) {}

Scheduler::~Scheduler() {
  Shutdown();
  loop_.join();
}

void Scheduler::Shutdown() {
  MutexLock lock(&mu_);
  stopping_ = true;
  work_cv_.SignalAll();
}

int64_t Scheduler::queued() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

Scheduler::ActiveStream::ActiveStream(Scheduler& s) : scheduler_(s) {
  MutexLock lock(&s.mu_);
  ++s.active_streams_;
}

Scheduler::ActiveStream::~ActiveStream() {
  MutexLock lock(&scheduler_.mu_);
  --scheduler_.active_streams_;
  scheduler_.work_cv_.SignalAll();  // the loop may be waiting for this stream's next step
}

absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> Scheduler::Submit(
    engine::api::SessionState* state, std::span<const int32_t> tokens, LogitsMode mode,
    std::vector<float>* logits, bool token_by_token) {
  auto step = std::make_shared<Step>();
  step->token_by_token = token_by_token;
  step->state = state;
  step->logits = logits;
  step->tokens.assign(tokens.begin(), tokens.end());
  step->mode = mode;
  if (model_ == nullptr) return absl::FailedPreconditionError("this model is an encoder");
  return Enqueue(std::move(step));
}

absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> Scheduler::SubmitEncode(
    const engine::api::EncoderSequence* window, engine::api::EncodedWindow* out) {
  auto step = std::make_shared<Step>();
  step->window = window;
  step->encoded = out;
  if (encoder_ == nullptr) return absl::FailedPreconditionError("this model is not an encoder");
  return Enqueue(std::move(step));
}

absl::StatusOr<std::unique_ptr<Scheduler::Ticket>> Scheduler::Enqueue(std::shared_ptr<Step> step) {
  step->submitted = absl::Now();
  MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue) {
    if (metrics_ != nullptr) metrics_->Rejected("queue_full");
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model's step queue is full (", options_.max_queue, " steps waiting); retry later"));
  }
  queue_.push_back(step);
  if (metrics_ != nullptr) metrics_->SetWaiting(static_cast<int64_t>(queue_.size()));
  work_cv_.SignalAll();
  return std::make_unique<Ticket>(*this, std::move(step));
}

Scheduler::Ticket::Ticket(Scheduler& scheduler, std::shared_ptr<Step> step)
    : scheduler_(scheduler), step_(std::move(step)) {}

Scheduler::Ticket::~Ticket() {
  if (step_ == nullptr) return;
  MutexLock lock(&scheduler_.mu_);
  if (!step_->taken) {
    auto& q = scheduler_.queue_;
    q.erase(std::find(q.begin(), q.end(), step_));
    if (scheduler_.metrics_ != nullptr) {
      scheduler_.metrics_->SetWaiting(static_cast<int64_t>(q.size()));
    }
    return;
  }
  while (!step_->done) scheduler_.done_cv_.Wait(&scheduler_.mu_);
}

absl::StatusOr<StepOutput> Scheduler::Ticket::Wait(absl::Time deadline,
                                                   const std::function<bool()>& cancelled) {
  Scheduler& s = scheduler_;
  MutexLock lock(&s.mu_);
  // Poll for cancellation: the transport's flag is not something a condition variable sees.
  constexpr absl::Duration kPoll = absl::Milliseconds(20);
  while (!step_->done) {
    if (!step_->taken) {
      absl::Status withdrawn;
      if (cancelled && cancelled()) {
        withdrawn = absl::CancelledError("the request was cancelled while queued");
      } else if (absl::Now() >= deadline) {
        withdrawn = absl::DeadlineExceededError("the deadline passed while the request was queued");
      } else if (s.stopping_) {
        withdrawn = absl::UnavailableError("the server is shutting down");
      }
      if (!withdrawn.ok()) {
        s.queue_.erase(std::find(s.queue_.begin(), s.queue_.end(), step_));
        if (s.metrics_ != nullptr) s.metrics_->SetWaiting(static_cast<int64_t>(s.queue_.size()));
        step_ = nullptr;
        return withdrawn;
      }
    }
    const absl::Time wake = std::min(deadline, absl::Now() + kPoll);
    s.done_cv_.WaitUntil(&s.mu_, absl::ToChronoTime(wake));
  }
  std::shared_ptr<Step> step = std::move(step_);
  if (!step->status.ok()) return step->status;
  return step->output;
}

std::vector<std::shared_ptr<Scheduler::Step>> Scheduler::TakeBatch() {
  std::vector<std::shared_ptr<Step>> batch;
  int64_t prefill_tokens = 0;
  // Decode steps first: one token each, latency-sensitive.
  for (auto& s : queue_) {
    if (static_cast<int>(batch.size()) >= options_.max_batch_sequences) break;
    if (s->is_decode()) batch.push_back(s);
  }
  // Then prefill segments in arrival order while the token budget lasts (the first always fits,
  // so an oversized segment still makes progress).
  for (auto& s : queue_) {
    if (static_cast<int>(batch.size()) >= options_.max_batch_sequences) break;
    if (s->is_decode()) continue;
    // (encode steps are only ever queued on an encoder's loop)
    const int64_t t =
        s->window != nullptr
            ? encoder_->config().pass_rows(static_cast<int64_t>(s->window->ids.size()))
            : static_cast<int64_t>(s->tokens.size());
    if (prefill_tokens > 0 && prefill_tokens + t > options_.max_batch_tokens) break;
    prefill_tokens += t;
    batch.push_back(s);
  }
  for (auto& s : batch) {
    s->taken = true;
    queue_.erase(std::find(queue_.begin(), queue_.end(), s));
  }
  return batch;
}

void Scheduler::Loop() {
  mu_.Lock();  // released around each pass's Execute
  while (true) {
    while (!stopping_ && queue_.empty()) work_cv_.Wait(&mu_);
    if (stopping_) break;
    // Give the other active streams a moment to submit their next steps.
    const absl::Time until = PassDeadline(queue_.front()->submitted, last_pass_end_,
                                          last_pass_time_, options_.batch_wait);
    while (!stopping_ && static_cast<int>(queue_.size()) < active_streams_) {
      if (work_cv_.WaitUntil(&mu_, absl::ToChronoTime(until))) break;  // timed out
    }
    if (stopping_) break;
    std::vector<std::shared_ptr<Step>> batch = TakeBatch();
    if (metrics_ != nullptr) metrics_->SetWaiting(static_cast<int64_t>(queue_.size()));
    mu_.Unlock();
    const absl::Time start = absl::Now();
    Execute(batch);
    const absl::Time end = absl::Now();
    mu_.Lock();
    last_pass_end_ = end;
    last_pass_time_ = end - start;
    for (auto& s : batch) s->done = true;
    done_cv_.SignalAll();
  }
  // Shutting down: whatever is still queued fails; callers see it at their next poll.
  for (auto& s : queue_) {
    s->taken = true;
    s->done = true;
    s->status = absl::UnavailableError("the server is shutting down");
  }
  queue_.clear();
  done_cv_.SignalAll();
  mu_.Unlock();
}

void Scheduler::Execute(std::vector<std::shared_ptr<Step>>& steps) {
  const absl::Time start = absl::Now();
  std::vector<Step*> decode, by_mode[3], encode;
  for (auto& s : steps) {
    s->output.queued = start - s->submitted;
    if (s->window != nullptr) {
      encode.push_back(s.get());
    } else if (s->is_decode()) {
      decode.push_back(s.get());
    } else {
      by_mode[static_cast<int>(s->mode)].push_back(s.get());
    }
  }
  if (metrics_ != nullptr) metrics_->ObserveBatch(static_cast<int64_t>(steps.size()));
  // Decode steps alone form a uniform batch (on CUDA, a recorded graph).
  if (!decode.empty()) Forward(decode, LogitsMode::kLast, "decode");
  if (!by_mode[0].empty()) Forward(by_mode[0], LogitsMode::kNone, "ingest");
  if (!by_mode[1].empty()) Forward(by_mode[1], LogitsMode::kLast, "prefill");
  if (!by_mode[2].empty()) Forward(by_mode[2], LogitsMode::kAll, "score");
  if (!encode.empty()) Encode(encode);
}

void Scheduler::Encode(std::vector<Step*>& steps) {
  const absl::Time start = absl::Now();
  std::vector<engine::api::EncoderSequence> windows;
  windows.reserve(steps.size());
  for (Step* s : steps) windows.push_back(*s->window);
  absl::StatusOr<std::vector<engine::api::EncodedWindow>> encoded = encoder_->EncodeBatch(windows);
  const absl::StatusCode code = encoded.status().code();
  if ((code == absl::StatusCode::kInvalidArgument ||
       code == absl::StatusCode::kFailedPrecondition) &&
      steps.size() > 1) {
    for (Step* s : steps) {  // run each alone so only the bad one fails
      std::vector<Step*> one{s};
      Encode(one);
    }
    return;
  }
  if (metrics_ != nullptr)
    metrics_->ObserveStep("encode", absl::ToDoubleSeconds(absl::Now() - start));
  for (size_t k = 0; k < steps.size(); ++k) {
    if (encoded.ok()) {
      *steps[k]->encoded = std::move((*encoded)[k]);
    } else {
      steps[k]->status = encoded.status();
    }
  }
}

void Scheduler::Forward(std::vector<Step*>& steps, LogitsMode mode, const char* phase) {
  const absl::Time start = absl::Now();
  std::vector<engine::api::SequenceInput> inputs;
  inputs.reserve(steps.size());
  for (Step* s : steps) {
    inputs.push_back({s->tokens.data(), static_cast<int64_t>(s->tokens.size()), s->state});
    inputs.back().token_by_token = s->token_by_token;
  }
  int64_t compressions = 0;  // compressive memories: rows compressed by this pass
  for (Step* s : steps) compressions -= s->state->compressions();
  engine::api::Tensor logits;
  absl::Status status = model_->Forward(inputs, mode, &logits);
  if ((status.code() == absl::StatusCode::kInvalidArgument ||
       status.code() == absl::StatusCode::kOutOfRange) &&
      steps.size() > 1) {
    // No state was touched: run each alone so only the bad one fails.
    for (Step* s : steps) {
      std::vector<Step*> one{s};
      Forward(one, mode, phase);
    }
    return;
  }
  if (metrics_ != nullptr) metrics_->ObserveStep(phase, absl::ToDoubleSeconds(absl::Now() - start));
  if (!status.ok()) {
    for (Step* s : steps) s->status = status;
    return;
  }
  for (Step* s : steps) compressions += s->state->compressions();
  if (metrics_ != nullptr && compressions > 0) metrics_->Compressions(compressions);
  if (mode == LogitsMode::kNone) return;
  const int64_t vocab = model_->config().vocab_size;
  const float* data = logits.data<float>();
  int64_t row = 0;
  for (Step* s : steps) {
    const int64_t rows = mode == LogitsMode::kLast ? 1 : static_cast<int64_t>(s->tokens.size());
    s->logits->assign(data + row * vocab, data + (row + rows) * vocab);
    row += rows;
  }
}

}  // namespace mnemo::server
