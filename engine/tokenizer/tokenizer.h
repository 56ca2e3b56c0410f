// Tokenizer: text ↔ token ids for a model. The sentencepiece implementation reads
// `tokenizer.model` from the checkpoint directory.
//
// Threading: Encode/Decode are const and safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mnemo::engine {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int64_t vocab_size() const = 0;
  // INVALID_ARGUMENT for text that is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // INVALID_ARGUMENT for ids outside the vocabulary.
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const = 0;
  // End-of-sequence id, or -1 when the model defines none.
  virtual int32_t eos_id() const = 0;
};

// Loads a sentencepiece model file. NOT_FOUND / INVALID_ARGUMENT with the path on failure.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view text);
// INVALID_ARGUMENT naming the first id outside [0, vocab_size): every Decode's check.
absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int64_t vocab_size);
// `bytes` with every maximal ill-formed subsequence replaced by U+FFFD (Unicode's "substitution
// of maximal subparts"): an unfinished sequence at the end becomes one U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view bytes);
// Length of the longest prefix of `text` that does not end inside a UTF-8 sequence: what can be
// emitted now when more bytes may still complete the tail.
size_t CompleteUtf8Prefix(std::string_view text);

}  // namespace mnemo::engine
