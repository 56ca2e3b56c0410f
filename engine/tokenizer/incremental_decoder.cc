#include "engine/tokenizer/incremental_decoder.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// Sentencepiece renders a byte-fallback sequence that is not yet a whole character as U+FFFD.
bool EndsWithReplacementCharacter(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

absl::StatusOr<std::string> IncrementalDecoder::DecodeWindow(size_t count) {
  std::vector<int32_t> ids(window_.begin(), window_.begin() + static_cast<ptrdiff_t>(count));
  if (!emitted_) return tokenizer_.Decode(ids);
  // Sentencepiece drops whitespace at the start of a text ("▁", "▁sword" decode to "sword"), so
  // once text has been emitted the window is decoded behind a one-character anchor, as it reads
  // in the middle of the document, and the anchor's text is cut off again.
  if (!anchor_checked_) {
    anchor_checked_ = true;
    auto anchor = tokenizer_.Encode("a");
    auto text = anchor.ok() ? tokenizer_.Decode(*anchor) : absl::StatusOr<std::string>("");
    if (anchor.ok() && text.ok() && *text == "a") anchor_ = *std::move(anchor);
  }
  if (anchor_.empty()) return tokenizer_.Decode(ids);
  std::vector<int32_t> anchored = anchor_;
  anchored.insert(anchored.end(), ids.begin(), ids.end());
  ASSIGN_OR_RETURN(std::string text, tokenizer_.Decode(anchored));
  if (text.empty() || text[0] != 'a') return tokenizer_.Decode(ids);
  return text.substr(1);
}

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  window_.push_back(id);
  ASSIGN_OR_RETURN(std::string before, DecodeWindow(read_));
  ASSIGN_OR_RETURN(std::string after, DecodeWindow(window_.size()));
  if (after.size() <= before.size() || EndsWithReplacementCharacter(after) ||
      CompleteUtf8Prefix(after) != after.size()) {
    return std::string();  // wait for the tokens that complete the text
  }
  // Emitted: keep only the tokens since the previous emission as the next window's prefix.
  window_.erase(window_.begin(), window_.begin() + static_cast<ptrdiff_t>(read_));
  read_ = window_.size();
  emitted_ = true;
  return after.substr(before.size());
}

absl::StatusOr<std::string> IncrementalDecoder::Flush() {
  if (read_ == window_.size()) return std::string();
  ASSIGN_OR_RETURN(std::string before, DecodeWindow(read_));
  ASSIGN_OR_RETURN(std::string after, DecodeWindow(window_.size()));
  window_.erase(window_.begin(), window_.begin() + static_cast<ptrdiff_t>(read_));
  read_ = window_.size();
  return after.size() > before.size() ? after.substr(before.size()) : std::string();
}

}  // namespace mnemo::engine
