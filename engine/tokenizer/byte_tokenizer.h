// ByteTokenizer: the byte-level vocabulary of Reformer's published enwik8 model, which ships no
// tokenizer file (docs/checkpoint-format.md "Byte vocabulary"): the UTF-8 bytes of the text are
// the tokens, byte b is id b + 2, and ids 0 and 1 (padding and a reserved id) and any id past
// 257 stand for no text. Decoding joins the bytes and renders each ill-formed sequence as
// U+FFFD, so that text is always valid UTF-8 (Hugging Face's example decoder instead maps each
// byte to the code point of the same value, which garbles non-ASCII text).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine {

// The id of byte 0.
inline constexpr int32_t kByteTokenOffset = 2;

// A byte tokenizer over a model of `vocab_size` ids (INVALID_ARGUMENT below 258); `eos_id` is
// the model's end-of-sequence id, or -1.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteTokenizer(int64_t vocab_size, int32_t eos_id);

}  // namespace mnemo::engine
