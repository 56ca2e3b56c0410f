#include "engine/tokenizer/word_tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

#include "base/read_file.h"
#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

constexpr int64_t kMaxSymbols = int64_t{1} << 24;
constexpr uintmax_t kMaxFileBytes = uintmax_t{256} << 20;

// Heterogeneous lookup: words are looked up as views into the text.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};
template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

bool IsSpace(char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); }

class WordTokenizer final : public Tokenizer {
 public:
  // `ids` maps each of `symbols` to its index.
  WordTokenizer(std::vector<std::string> symbols, StringMap<int32_t> ids)
      : symbols_(std::move(symbols)), ids_(std::move(ids)) {
    unk_ = Find("<unk>");
    eos_ = Find("<eos>");
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(symbols_.size()); }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
    std::vector<int32_t> out;
    size_t i = 0;
    while (i < text.size()) {
      if (text[i] == '\n') {
        if (eos_ < 0) {
          return absl::InvalidArgumentError(
              "text has a line break but the vocabulary has no <eos> to encode it");
        }
        out.push_back(eos_);
        ++i;
        continue;
      }
      if (IsSpace(text[i])) {
        ++i;
        continue;
      }
      size_t end = i;
      while (end < text.size() && !IsSpace(text[end])) ++end;
      const std::string_view word = text.substr(i, end - i);
      int32_t id = Find(word);
      if (id < 0) id = unk_;
      if (id < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("word \"", std::string(word.substr(0, 64)),
                         "\" is not in the vocabulary, which has no <unk>"));
      }
      out.push_back(id);
      i = end;
    }
    return out;
  }

  // Words joined by single spaces; <eos> is a line break (no space around it).
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    RETURN_IF_ERROR(CheckTokenIds(ids, vocab_size()));
    std::string text;
    bool line_start = true;
    for (int32_t id : ids) {
      if (id == eos_) {
        text.push_back('\n');
        line_start = true;
        continue;
      }
      if (!line_start) text.push_back(' ');
      text += symbols_[static_cast<size_t>(id)];
      line_start = false;
    }
    return text;
  }

  int32_t eos_id() const override { return eos_; }

 private:
  int32_t Find(std::string_view word) const {
    auto it = ids_.find(word);
    return it == ids_.end() ? -1 : it->second;
  }

  std::vector<std::string> symbols_;
  StringMap<int32_t> ids_;
  int32_t unk_ = -1;
  int32_t eos_ = -1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWordTokenizer(const std::string& path) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  if (size > kMaxFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": over ", kMaxFileBytes, " bytes"));
  }
  ASSIGN_OR_RETURN(const std::string data, ReadFile(path));
  if (!IsValidUtf8(data)) return absl::InvalidArgumentError(path + ": not valid UTF-8");
  std::vector<std::string> symbols;
  StringMap<int32_t> ids;
  std::string_view rest = data;
  while (!rest.empty()) {
    const int64_t line = static_cast<int64_t>(symbols.size()) + 1;
    const size_t eol = rest.find('\n');
    if (eol == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": line ", line, " does not end with a line break"));
    }
    const std::string_view symbol = rest.substr(0, eol);
    rest.remove_prefix(eol + 1);
    if (symbol.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": line ", line, " is empty"));
    }
    for (char c : symbol) {
      if (IsSpace(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": line ", line, " holds whitespace inside its symbol"));
      }
    }
    if (line > kMaxSymbols) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": over ", kMaxSymbols, " symbols"));
    }
    if (auto [it, fresh] = ids.emplace(symbol, static_cast<int32_t>(line - 1)); !fresh) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": line ", line, " repeats line ", it->second + 1, "'s symbol"));
    }
    symbols.emplace_back(symbol);
  }
  if (symbols.empty()) return absl::InvalidArgumentError(path + ": no symbols");
  return std::make_unique<WordTokenizer>(std::move(symbols), std::move(ids));
}

}  // namespace mnemo::engine
