// IncrementalDecoder: turns a stream of generated token ids into text deltas that are valid UTF-8
// at every boundary, decoding only a short window of recent tokens per step (O(1) per token,
// not the whole generation). Sentencepiece output for a token depends on its neighbours (leading
// "▁" spaces, byte-fallback pieces that complete a character only together), so each step decodes
// the window twice, with and without the new tokens, and emits the difference once it ends on a
// whole character.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine {

class IncrementalDecoder {
 public:
  // `tokenizer` must outlive the decoder.
  explicit IncrementalDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // Adds one token; returns the text it completes (possibly empty while a character is still
  // incomplete). INVALID_ARGUMENT for an id outside the vocabulary.
  absl::StatusOr<std::string> Push(int32_t id);
  // Text still held back at the end of the stream (an incomplete character decodes as U+FFFD).
  absl::StatusOr<std::string> Flush();

 private:
  // The text of window_[0, count) as it reads at its place in the document.
  absl::StatusOr<std::string> DecodeWindow(size_t count);

  const Tokenizer& tokenizer_;
  std::vector<int32_t> window_;  // tokens from the prefix offset on
  size_t read_ = 0;              // window_[0, read_) has been emitted
  bool emitted_ = false;         // text was emitted: the window is no longer at the text's start
  bool anchor_checked_ = false;
  std::vector<int32_t> anchor_;  // the ids of "a" (empty: this tokenizer has no such anchor)
};

}  // namespace mnemo::engine
