#include "engine/tokenizer/byte_tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer(int64_t vocab_size, int32_t eos_id) : vocab_size_(vocab_size), eos_(eos_id) {}

  int64_t vocab_size() const override { return vocab_size_; }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (char c : text) ids.push_back(static_cast<unsigned char>(c) + kByteTokenOffset);
    return ids;
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    RETURN_IF_ERROR(CheckTokenIds(ids, vocab_size_));
    std::string bytes;
    bytes.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= kByteTokenOffset && id < kByteTokenOffset + 256) {
        bytes.push_back(static_cast<char>(id - kByteTokenOffset));
      }
    }
    return ReplaceInvalidUtf8(bytes);
  }

  int32_t eos_id() const override { return eos_; }

 private:
  int64_t vocab_size_;
  int32_t eos_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteTokenizer(int64_t vocab_size, int32_t eos_id) {
  if (vocab_size < kByteTokenOffset + 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("a byte vocabulary needs at least ", kByteTokenOffset + 256,
                     " ids (byte b is id b + ", kByteTokenOffset, "), the model has ", vocab_size));
  }
  return std::make_unique<ByteTokenizer>(vocab_size, eos_id);
}

}  // namespace mnemo::engine
