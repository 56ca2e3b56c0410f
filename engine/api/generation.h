// The generation loop as the front ends run it (engine/sampling/generation_loop.h): sampling,
// stop conditions, UTF-8-safe text deltas and speculative decoding over an api::Model. The caller
// supplies how the model is stepped (GenerationSteps): the server through its scheduler, the
// command line with DirectSteps.
//
// Threading: Generate runs on the calling thread and calls the steps from it. Errors: see
// RunGeneration (INVALID_ARGUMENT with nothing to continue, a step's status, CANCELLED when
// on_token returns false).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/api/model.h"
#include "engine/api/types.h"
#include "engine/sampling/generation_loop.h"

namespace mnemo::engine::api {

using engine::CompletedStep;
using engine::GeneratedToken;
using engine::GenerationParams;
using engine::GenerationResult;
using engine::GenerationSteps;
using engine::PendingStep;
using engine::TokenByTokenStep;

// A session's memory as the loop advances it: the model's state, the draft's (when the model
// has a draft; else unused) and the tokens received but not run yet, the last being the next
// input. The loop leaves the last sampled token pending.
struct GenerationMemory {
  SessionState* state = nullptr;
  SessionState* draft_state = nullptr;
  std::vector<int32_t>* pending = nullptr;
};

// Generates with `model` (speculatively when it has a draft) from `memory`, prefilling in
// segments of `segment_tokens`; see RunGeneration for the contract.
absl::StatusOr<GenerationResult> Generate(
    const Model& model, int64_t segment_tokens, const GenerationMemory& memory,
    const GenerationParams& params, std::vector<int32_t> history, const GenerationSteps& steps,
    const std::function<bool(const GeneratedToken&)>& on_token);

// Steps calling model.Forward (and the draft's) directly on the calling thread for `memory`'s
// states (the command line).
GenerationSteps DirectSteps(const Model& model, const GenerationMemory& memory);

}  // namespace mnemo::engine::api
