// TextChunker: cuts a document that arrives in pieces into runs that can be tokenized on their
// own with the same result as the whole document. Sentencepiece never makes a piece across a
// space (spaces start words, and runs of them collapse), so each run ends right before the last
// space seen; the rest waits for the next piece. A stretch without any space longer than
// `max_carry` bytes is cut at a character boundary instead (tokens there may differ).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mnemo::server {

class TextChunker {
 public:
  explicit TextChunker(size_t max_carry = size_t{1} << 20) : max_carry_(max_carry) {}
  // Adds a piece (valid UTF-8); returns the text ready to tokenize (possibly empty).
  std::string Push(std::string_view piece);
  // The rest, at the end of the document.
  std::string Finish();
  size_t carried() const { return carry_.size(); }

 private:
  size_t max_carry_;
  std::string carry_;
};

}  // namespace mnemo::server
