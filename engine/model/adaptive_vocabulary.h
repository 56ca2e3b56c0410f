// The adaptive embedding and projected adaptive log-softmax of Transformer-XL as published
// (Hugging Face's AdaptiveEmbedding and ProjectedAdaptiveLogSoftmax; docs/checkpoint-format.md
// "Adaptive embedding and softmax"): frequent ids embedded wide, rare ones narrow, and a head
// that scores the shortlist and one logit per tail cluster, then each cluster's ids.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/model/model_config.h"
#include "engine/model/transfo_xl_weights.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// x[N, D] = scale · embedding of `ids` (each id's band table, then the band's projection).
absl::Status AdaptiveEmbed(Backend& be, const ModelConfig& c, const AdaptiveWeights& w,
                           const std::vector<int32_t>& ids, float scale, Tensor& x);

// Log-probabilities over the vocabulary, a host float32 [M, V], of the hidden rows [M, D]:
// log p(id) = log softmax(head)[id] in the shortlist, and for id in tail band i ≥ 1
// log softmax(head)[cutoffs[0] + i − 1] + log softmax(band i's logits)[id − begin_i]
// (the cluster order of Hugging Face's forward). Each band's logits are computed once, from
// its own narrow projection; only the [M, V] result is vocabulary-sized.
absl::StatusOr<Tensor> AdaptiveLogProbs(Backend& be, const ModelConfig& c, const AdaptiveWeights& w,
                                        const Tensor& hidden);

}  // namespace mnemo::engine
