// WordTokenizer: the word-level vocabulary of Transformer-XL's published models (wt103), read from
// a checkpoint's `vocab.words` (docs/checkpoint-format.md "Word vocabulary"): one symbol per line,
// the line number its id. Text is split at ASCII whitespace, each word looked up whole (unknown
// words are `<unk>`), and every line break is `<eos>`, as the original corpus encoding
// (`add_eos`) gives. This is Hugging Face's TransfoXLTokenizer on text that is already
// whitespace-tokenized; on raw text the two differ, because that one first applies Moses
// pre-tokenization rules (punctuation splits, `@-@` / `@,@` number joins) that this does not.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine {

// The file name a checkpoint directory holds a word vocabulary under.
inline constexpr char kWordVocabularyFile[] = "vocab.words";

// Loads a word vocabulary. INVALID_ARGUMENT naming the path and line for a file that is not one
// (invalid UTF-8, an empty line, a symbol with whitespace, a repeated symbol, over 2^24 symbols
// or 256 MiB); NOT_FOUND when it cannot be opened.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWordTokenizer(const std::string& path);

}  // namespace mnemo::engine
