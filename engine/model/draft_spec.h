// DraftSpec: the draft model a model directory names for speculative decoding, in `draft.json`:
//
//   {"model": "../student", "draft_tokens": 4}
//
// `model` is a checkpoint directory, relative to the naming directory unless absolute;
// `draft_tokens` (1 … 64, default 4) is how many tokens the draft proposes per verification.
// The draft must tokenize as its target does: when the target directory has a tokenizer.model
// or a vocab.words, the draft's must be byte-identical.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace mnemo::engine {

struct DraftSpec {
  std::string dir;       // the draft checkpoint directory, resolved against the model directory
  int draft_tokens = 4;  // proposals per verification pass
};

inline constexpr int kMaxDraftTokens = 64;

// The draft named by `<model_dir>/draft.json`, nullopt when there is none. INVALID_ARGUMENT for a
// malformed file, unknown fields, values out of range, a missing draft directory or a draft whose
// tokenizer differs from the model's.
absl::StatusOr<std::optional<DraftSpec>> ReadDraftSpec(const std::string& model_dir);

// Checks that `draft_dir` can draft for `model_dir` (tokenizer files identical when the model has
// one); used for drafts given on a command line as well.
absl::Status CheckDraftTokenizer(const std::string& model_dir, const std::string& draft_dir);

}  // namespace mnemo::engine
