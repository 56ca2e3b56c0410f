#include "engine/tokenizer/incremental_decoder.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// Sentencepiece renders a byte-fallback sequence that is not yet a whole character as U+FFFD.
bool EndsWithReplacementCharacter(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  window_.push_back(id);
  ASSIGN_OR_RETURN(std::string before, tokenizer_.Decode(std::vector<int32_t>(
                                           window_.begin(), window_.begin() + read_)));
  ASSIGN_OR_RETURN(std::string after, tokenizer_.Decode(window_));
  if (after.size() <= before.size() || EndsWithReplacementCharacter(after) ||
      CompleteUtf8Prefix(after) != after.size()) {
    return std::string();  // wait for the tokens that complete the text
  }
  // Emitted: keep only the tokens since the previous emission as the next window's prefix.
  window_.erase(window_.begin(), window_.begin() + read_);
  read_ = window_.size();
  return after.substr(before.size());
}

absl::StatusOr<std::string> IncrementalDecoder::Flush() {
  if (read_ == window_.size()) return std::string();
  ASSIGN_OR_RETURN(std::string before, tokenizer_.Decode(std::vector<int32_t>(
                                           window_.begin(), window_.begin() + read_)));
  ASSIGN_OR_RETURN(std::string after, tokenizer_.Decode(window_));
  window_.erase(window_.begin(), window_.begin() + read_);
  read_ = window_.size();
  return after.size() > before.size() ? after.substr(before.size()) : std::string();
}

}  // namespace mnemo::engine
