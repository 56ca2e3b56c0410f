// Scheduler: continuous batching for one model. Request handlers submit model steps (a segment
// of prompt or document for one session, or one decode token) and wait; one engine loop forms
// each forward pass from everything pending: all decode steps first (one token each, up to
// max_batch_sequences), then prefill segments in arrival order under a token budget, so a long
// ingest advances one segment per step and cannot starve interactive generation. A handler has at
// most one step pending at a time, which makes the queue round-robin across sessions. An encoder
// model's loop takes encode steps (one window of a document each, SubmitEncode) the same way,
// under the same token budget: windows of concurrent Encode requests share a pass.
//
// Threading: Submit, Ticket, ActiveStream, Shutdown and queued may be called from any number of
// threads; the states they pass must each be used by one caller at a time (the session manager's
// lease guarantees it). `mu_` guards the queue, the stream count and the stopping flag, and each
// queued step's `taken`/`done` flags (Step lives in the .cc, so those two are documented there,
// not annotated); the loop thread runs a pass without it, touching only the steps it has taken.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "base/mutex.h"
#include "engine/api/encoder.h"
#include "engine/api/model.h"

namespace mnemo::server {

class Metrics;

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // prefill tokens per forward pass (decode tokens always fit)
  int max_batch_sequences = 256;   // sequences per forward pass
  int64_t max_queue = 4096;        // steps waiting; more are refused with RESOURCE_EXHAUSTED
  // How long the loop waits for the other active streams' next steps before it starts a pass
  // without them, counted from the end of the last pass (or the first queued step's submission
  // if later); a quarter of the last pass's time when that is longer (the streams a pass
  // answered submit again one after the other, the last milliseconds after the first when the
  // CPU is busy).
  absl::Duration batch_wait = absl::Microseconds(500);
};

// When the loop starts a pass, at the latest, while some active stream has no step queued: the
// later of the first queued step's submission and the end of the last pass (which took
// `last_pass_time`), plus batch_wait or a quarter of the last pass's time if that is longer.
absl::Time PassDeadline(absl::Time first_submitted, absl::Time last_pass_end,
                        absl::Duration last_pass_time, absl::Duration batch_wait);

// What one step reports besides its logits.
struct StepOutput {
  absl::Duration queued;  // from submission to the start of its forward pass
};

class Scheduler {
 public:
  Scheduler(const engine::api::Model& model, SchedulerOptions options, Metrics* metrics);
  // An encoder model's loop: it takes encode steps only (Submit is FAILED_PRECONDITION there, as
  // SubmitEncode is on a decoder's).
  Scheduler(const engine::api::Encoder& encoder, SchedulerOptions options, Metrics* metrics);
  ~Scheduler();  // finishes the steps already taken, fails the rest with UNAVAILABLE
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  struct Step;

  // A submitted step. Destroying it withdraws the step if it is still queued, else waits until
  // its pass is over, so the caller may touch the state again afterwards.
  class Ticket {
   public:
    Ticket(Scheduler& scheduler, std::shared_ptr<Step> step);
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    // Waits for the step's result. Until its pass starts, the step is withdrawn (state untouched)
    // when `deadline` passes (DEADLINE_EXCEEDED) or `cancelled()` turns true (CANCELLED); a step
    // that started always completes.
    absl::StatusOr<StepOutput> Wait(absl::Time deadline, const std::function<bool()>& cancelled)
        ABSL_LOCKS_EXCLUDED(scheduler_.mu_);

   private:
    Scheduler& scheduler_;
    std::shared_ptr<Step> step_;
  };

  // Queues `tokens` for `state` in the next forward pass that has room and returns at once (a
  // generation submits its next token before it writes the last one to the client). The pass
  // writes the logits the mode asks for into *logits (kLast: [vocab]; kAll: [tokens, vocab];
  // untouched for kNone), reusing its capacity, so a decode loop allocates nothing per token; it
  // must outlive the ticket. `token_by_token` runs the tokens as that many decode steps would
  // (SequenceInput::token_by_token; speculative verification). RESOURCE_EXHAUSTED when the queue
  // is full, UNAVAILABLE after Shutdown.
  absl::StatusOr<std::unique_ptr<Ticket>> Submit(engine::api::SessionState* state,
                                                 std::span<const int32_t> tokens,
                                                 engine::api::LogitsMode mode,
                                                 std::vector<float>* logits,
                                                 bool token_by_token = false)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Queues one window of a document for an encoder model's next pass that has room; the pass
  // writes the window's hidden states (and masked-LM log-probabilities) into *out. `window` and
  // `out` must outlive the ticket. Errors as Submit.
  absl::StatusOr<std::unique_ptr<Ticket>> SubmitEncode(const engine::api::EncoderSequence* window,
                                                       engine::api::EncodedWindow* out)
      ABSL_LOCKS_EXCLUDED(mu_);

  // A request that will submit steps back to back (a generation or ingest in progress): while
  // one is registered, the loop waits up to batch_wait for its next step so decode steps of
  // concurrent streams share a pass.
  class ActiveStream {
   public:
    explicit ActiveStream(Scheduler& s);
    ~ActiveStream();
    ActiveStream(const ActiveStream&) = delete;
    ActiveStream& operator=(const ActiveStream&) = delete;

   private:
    Scheduler& scheduler_;
  };

  // Stops taking steps; the loop exits after the current pass.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  int64_t queued() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Takes the next pass's steps off the queue.
  std::vector<std::shared_ptr<Step>> TakeBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs a pass over steps the loop has taken, without the lock.
  void Execute(std::vector<std::shared_ptr<Step>>& steps) ABSL_LOCKS_EXCLUDED(mu_);
  // One forward pass over steps of one mode; on INVALID_ARGUMENT retries them one by one so one
  // bad step cannot fail the others.
  void Forward(std::vector<Step*>& steps, engine::api::LogitsMode mode, const char* phase)
      ABSL_LOCKS_EXCLUDED(mu_);
  // One encoder pass over encode steps, retried one by one as Forward does when it fails for a
  // step's input.
  void Encode(std::vector<Step*>& steps) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues a prepared step (Submit, SubmitEncode).
  absl::StatusOr<std::unique_ptr<Ticket>> Enqueue(std::shared_ptr<Step> step)
      ABSL_LOCKS_EXCLUDED(mu_);

  const engine::api::Model* model_ = nullptr;      // a decoder's loop
  const engine::api::Encoder* encoder_ = nullptr;  // an encoder's loop
  const SchedulerOptions options_;
  Metrics* metrics_;

  mutable Mutex mu_;
  CondVar work_cv_;  // the loop waits here
  CondVar done_cv_;  // callers wait here
  std::deque<std::shared_ptr<Step>> queue_ ABSL_GUARDED_BY(mu_);
  int active_streams_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_pass_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Duration last_pass_time_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread loop_;  // last: starts once everything above exists
};

}  // namespace mnemo::server
