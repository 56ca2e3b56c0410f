#include "engine/tokenizer/tokenizer.h"

#include <fstream>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/tokenizer/sentencepiece_processor_wrapper.h"

namespace mnemo::engine {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  int64_t vocab_size() const override { return processor_.vocab_size(); }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
    std::vector<int> ids;
    const std::string error = processor_.Encode(std::string(text), &ids);
    if (!error.empty()) return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", error));
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    RETURN_IF_ERROR(CheckTokenIds(ids, vocab_size()));
    std::string text;
    const std::string error = processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!error.empty()) return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", error));
    return text;
  }

  int32_t eos_id() const override { return processor_.eos_id(); }

  spm::Processor processor_;
};

// Expected length of a UTF-8 sequence from its lead byte; 0 for an invalid lead.
int SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

// The UTF-8 sequence starting at s[i] (i < n): its well-formed prefix, at least one byte, and
// whether that is a whole character. Well-formed follows Unicode's Table 3-7: continuation bytes
// 80–BF, except the second byte after E0 (A0–BF: no overlongs), ED (80–9F: no surrogates), F0
// (90–BF: no overlongs) and F4 (80–8F: nothing past U+10FFFF).
struct Utf8Sequence {
  size_t bytes;
  bool whole;
};
Utf8Sequence SequenceAt(const unsigned char* s, size_t n, size_t i) {
  const int len = SequenceLength(s[i]);
  size_t k = 1;
  for (; len > 1 && k < static_cast<size_t>(len) && i + k < n; ++k) {
    unsigned char lo = 0x80, hi = 0xbf;
    if (k == 1 && s[i] == 0xe0) lo = 0xa0;
    if (k == 1 && s[i] == 0xed) hi = 0x9f;
    if (k == 1 && s[i] == 0xf0) lo = 0x90;
    if (k == 1 && s[i] == 0xf4) hi = 0x8f;
    if (s[i + k] < lo || s[i + k] > hi) break;
  }
  return {k, len != 0 && k == static_cast<size_t>(len)};
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  if (!std::ifstream(path).good()) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  auto tokenizer = std::make_unique<SentencePieceTokenizer>();
  const std::string error = tokenizer->processor_.Load(path);
  if (!error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a sentencepiece model: ", error));
  }
  return tokenizer;
}

bool IsValidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    const Utf8Sequence seq = SequenceAt(s, text.size(), i);
    if (!seq.whole) return false;
    i += seq.bytes;
  }
  return true;
}

std::string ReplaceInvalidUtf8(std::string_view bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const Utf8Sequence seq = SequenceAt(s, bytes.size(), i);
    out.append(seq.whole ? bytes.substr(i, seq.bytes) : std::string_view("\xEF\xBF\xBD"));
    i += seq.bytes;
  }
  return out;
}

absl::Status CheckTokenIds(const std::vector<int32_t>& ids, int64_t vocab_size) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " outside vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

size_t CompleteUtf8Prefix(std::string_view text) {
  const size_t n = text.size();
  // A sequence is at most 4 bytes: look back at most 3 bytes for an unfinished lead byte.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const int len = SequenceLength(c);
    return (len > static_cast<int>(back)) ? n - back : n;
  }
  return n;
}

}  // namespace mnemo::engine
