// One session's part of a batch: the tokens a Forward call runs for it and its state.
#pragma once

#include <cstdint>

#include "engine/memory/session_state.h"

namespace mnemo::engine {

struct SequenceInput {
  const int32_t* tokens = nullptr;  // [num_tokens] token ids
  int64_t num_tokens = 0;
  SessionState* state = nullptr;
  // Dense (and compressive) layers attend as if each token were decoded alone: token i sees
  // the memory as it stood after token i − 1, not [memory | tokens before i], so the logits equal
  // those of num_tokens single-token calls while the weight products still run once over all
  // rows (speculative verification). Other kinds are already split-invariant. Not with
  // residual_attention (RealFormer) models: INVALID_ARGUMENT.
  bool token_by_token = false;
};

}  // namespace mnemo::engine
