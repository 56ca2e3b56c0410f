// Hugging Face's LSH attention (LSHSelfAttention, MODEL-SPEC §4.3; docs/checkpoint-format.md
// `"sort": "call"`), for checkpoints converted from it: every round's buckets are offset and the
// rounds flattened into one sorted sequence of R·N slots, cut into chunks that attend to
// themselves and the chunk before (cyclically), causally, with the query's own key at logit
// −1e5; rounds are combined by the softmax of their log-sum-exps. A call's keys are the stored
// positions and its own, so outputs depend on the whole call, as in Hugging Face.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/lsh_attention.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

// Same arguments as LshAttention (lsh_attention.h); `history` is not used.
void LshCallAttention(const LshShape& shape, const float* x, int64_t ldx,
                      const std::vector<KvSpan>& keys, const std::vector<BucketSpan>& buckets,
                      float* out, int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
