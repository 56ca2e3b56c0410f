// EncoderSequence: one window of an encoder pass (engine/encoder/encoder_model.h): its token ids,
// the positions in it that attend globally and those whose masked-LM log-probabilities to return;
// EncodedWindow: what the pass returns for it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

#include "engine/encoder/encoder_config.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

struct EncoderSequence {
  std::span<const int32_t> ids;
  std::vector<int64_t> global_positions;  // ascending, each < ids.size()
  std::vector<int64_t> mlm_positions;     // ascending, each < ids.size(); needs the MLM head
};

// OK when the global and the masked-LM positions each ascend within [0, n), global positions
// come with an architecture that has them (Longformer) and MLM positions with the checkpoint's
// head (`mlm_head`); else INVALID_ARGUMENT, or FAILED_PRECONDITION for what the checkpoint lacks,
// saying which.
absl::Status CheckEncodePositions(const EncoderConfig& config, const std::vector<int64_t>& global,
                                  const std::vector<int64_t>& mlm, int64_t n);

struct EncodedWindow {
  Tensor hidden;        // [ids.size(), D]: every token's final hidden state (not for a Funnel
                        // base model, which has none)
  Tensor mlm_logprobs;  // [mlm_positions.size(), V]: log-softmax of the masked-LM head's logits
  Tensor pooled;        // Funnel: the encoder's pooled sequence [rows, D] (first token first)
};

}  // namespace mnemo::engine
