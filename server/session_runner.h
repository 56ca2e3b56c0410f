// What a request does to a session's memory, step by step through the model's scheduler:
// appending document tokens (whole segments, the tail kept pending), generating a continuation
// with streaming text, and scoring a text. No transport types: the gRPC services translate.
//
// Every function leaves `memory` in an arbitrary but valid state when it fails; callers that
// must not change the session on failure run on a copy or restore a snapshot.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "engine/api/generation.h"
#include "server/model_registry.h"
#include "server/session_manager.h"

namespace mnemo::server {

// How long a request may run and whether its caller went away.
struct RequestControl {
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;  // may be empty
  // When set, receives the time the request's first model step started (queue-time reporting).
  absl::Time* first_step_start = nullptr;
};

// Whether the request may start another step: CANCELLED or DEADLINE_EXCEEDED when not.
absl::Status CheckControl(const RequestControl& control);

// Appends tokens to the document: whole segments run as soon as more than one segment is pending
// (so the tail, 1 … segment tokens, waits for what comes next). Adds the segments run to *segments.
absl::Status AppendTokens(LoadedModel& model, SessionMemory& memory,
                          std::span<const int32_t> tokens, const RequestControl& control,
                          int64_t* segments);

// Runs every pending token but the last (the next step's input), in segments.
absl::Status FlushPending(LoadedModel& model, SessionMemory& memory, const RequestControl& control,
                          int64_t* segments);

using GenerationParams = engine::api::GenerationParams;
using GeneratedToken = engine::api::GeneratedToken;
using GenerationResult = engine::api::GenerationResult;

// Generates from the memory with the engine's generation loop (engine/api/generation.h), every
// model step going through the model's scheduler: its pending tokens are flushed, the last one is
// fed, and each sampled token becomes the next input; the last sampled token stays pending (not
// yet run), like the tail of an ingest. `history` seeds the repetition penalty. `on_token`
// returning false stops the generation with CANCELLED (the client went away). A model with a draft
// generates speculatively (the same tokens under greedy sampling, the same distribution otherwise;
// both memories end holding exactly the emitted tokens).
absl::StatusOr<GenerationResult> Generate(
    LoadedModel& model, SessionMemory& memory, const GenerationParams& params,
    std::vector<int32_t> history, const RequestControl& control,
    const std::function<bool(const GeneratedToken&)>& on_token);

struct ScoredToken {
  int32_t id = 0;
  float logprob = 0;
};

// Log-probabilities of `tokens` following the memory (pending tokens included). Without any
// context (empty memory) the first token is not scored. Afterwards the memory holds the tokens,
// the last one pending.
absl::StatusOr<std::vector<ScoredToken>> Score(LoadedModel& model, SessionMemory& memory,
                                               std::span<const int32_t> tokens,
                                               const RequestControl& control);

}  // namespace mnemo::server
