#include "engine/api/generation.h"

#include <utility>

#include "engine/api/model_access.h"

namespace mnemo::engine::api {

absl::StatusOr<GenerationResult> Generate(
    const Model& model, int64_t segment_tokens, const GenerationMemory& memory,
    const GenerationParams& params, std::vector<int32_t> history, const GenerationSteps& steps,
    const std::function<bool(const GeneratedToken&)>& on_token) {
  if (memory.state == nullptr || memory.pending == nullptr ||
      (model.draft() != nullptr && memory.draft_state == nullptr)) {
    return absl::InvalidArgumentError("generation needs the session's state(s) and pending tokens");
  }
  GenerationModel g;
  g.vocab_size = model.config().vocab_size;
  g.tokenizer = model.tokenizer();
  g.segment_tokens = segment_tokens;
  if (model.draft() != nullptr) {
    g.speculative = GenerationModel::Speculative{&ModelAccess::Impl(model), memory.state,
                                                 &ModelAccess::Impl(*model.draft()),
                                                 memory.draft_state, model.draft_tokens()};
  }
  return RunGeneration(g, *memory.pending, params, std::move(history), steps, on_token);
}

GenerationSteps DirectSteps(const Model& model, const GenerationMemory& memory) {
  const bool draft = model.draft() != nullptr;
  return DirectGenerationSteps(ModelAccess::Impl(model), memory.state,
                               draft ? &ModelAccess::Impl(*model.draft()) : nullptr,
                               draft ? memory.draft_state : nullptr);
}

}  // namespace mnemo::engine::api
