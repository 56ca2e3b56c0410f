// A Forward call's batch: each session's part (its tokens and its state), and which logits the
// call returns.
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

enum class LogitsMode : uint8_t {
  kNone,  // only update the states (ingest)
  kLast,  // logits of each sequence's last token: [batch, vocab]
  kAll,   // logits of every token, sequences concatenated in batch order: [Σ num_tokens, vocab]
};

}  // namespace mnemo::engine
