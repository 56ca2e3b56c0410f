// The Funnel-Transformer half of EncoderModel::EncodeBatch (docs/checkpoint-format.md "Encoders",
// architecture "funnel"): word embeddings and a LayerNorm; blocks of post-LayerNorm layers with
// relative attention, every block after the first starting by pooling the sequence by 2; then,
// unless it is the base model, the last block's output up-sampled back to every token, added to
// the first block's, and the decoder layers. As Hugging Face's FunnelModel / FunnelBaseModel
// compute it, with every token of type 0 and no padding.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/encoder/encoder_config.h"
#include "engine/encoder/encoder_sequence.h"
#include "engine/encoder/encoder_weights.h"

namespace mnemo::engine {

// Every window's output (`hidden` per token unless the base model, and `pooled`); the windows
// are checked by the caller. Their rows share each product.
absl::StatusOr<std::vector<EncodedWindow>> FunnelForward(const EncoderConfig& c,
                                                         const EncoderWeights& w, Backend& be,
                                                         std::span<const EncoderSequence> batch);

}  // namespace mnemo::engine
