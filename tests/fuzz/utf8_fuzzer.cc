// The tokenizer's UTF-8 handling on arbitrary bytes: IsValidUtf8 against an independent strict
// decoder, CompleteUtf8Prefix's contract, sentencepiece encoding (the shipped student model's
// tokenizer.model, through the dlopen'ed module) and decoding, the streaming IncrementalDecoder
// (its deltas are whole UTF-8 and concatenate to the full decode) and the server's TextChunker
// (its runs concatenate to the document, and each is whole UTF-8).
//
// Input: byte 0 picks how the rest is read: even, as text; odd, as little-endian u16 token ids.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/incremental_decoder.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/text_chunker.h"

namespace {

using mnemo::engine::CompleteUtf8Prefix;
using mnemo::engine::IsValidUtf8;

// RFC 3629, written from the table rather than from tokenizer.cc: code point by code point.
bool ReferenceValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int len = 0;
    uint32_t cp = 0;
    if (b0 < 0x80) {
      len = 1, cp = b0;
    } else if ((b0 & 0xe0) == 0xc0) {
      len = 2, cp = b0 & 0x1f;
    } else if ((b0 & 0xf0) == 0xe0) {
      len = 3, cp = b0 & 0x0f;
    } else if ((b0 & 0xf8) == 0xf0) {
      len = 4, cp = b0 & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(len) > text.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

void Fail(const char* what) {
  std::fprintf(stderr, "utf8_fuzzer: %s\n", what);
  std::abort();
}

const mnemo::engine::Tokenizer& GetTokenizer() {
  static const mnemo::engine::Tokenizer* tokenizer = [] {
    auto t = mnemo::engine::LoadSentencePieceTokenizer(std::string(MNEMO_SOURCE_DIR) +
                                                       "/models/student/tokenizer.model");
    if (!t.ok()) {
      std::fprintf(stderr, "utf8_fuzzer: %s\n", t.status().ToString().c_str());
      std::abort();
    }
    return t->release();
  }();
  return *tokenizer;
}

void CheckText(std::string_view text) {
  const bool valid = IsValidUtf8(text);
  if (valid != ReferenceValidUtf8(text)) Fail("IsValidUtf8 disagrees with the reference decoder");

  const size_t complete = CompleteUtf8Prefix(text);
  if (complete > text.size() || text.size() - complete > 3) Fail("CompleteUtf8Prefix out of range");
  if (valid) {
    if (complete != text.size()) Fail("CompleteUtf8Prefix cut a valid text");
    // Cut anywhere: the prefix up to the cut's character start is what may be emitted.
    for (size_t cut = text.size() >= 4 ? text.size() - 4 : 0; cut < text.size(); ++cut) {
      size_t start = cut;
      while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80) --start;
      if (CompleteUtf8Prefix(text.substr(0, cut)) != start) {
        Fail("CompleteUtf8Prefix does not stop at the cut character's start");
      }
    }
  }

  const mnemo::engine::Tokenizer& tokenizer = GetTokenizer();
  auto ids = tokenizer.Encode(text);
  if (!valid) {
    if (ids.ok() || ids.status().code() != absl::StatusCode::kInvalidArgument) {
      Fail("Encode of invalid UTF-8 is not INVALID_ARGUMENT");
    }
  } else {
    if (!ids.ok()) Fail("Encode of valid UTF-8 failed");
    for (int32_t id : *ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) Fail("Encode made an id outside the vocabulary");
    }
    auto back = tokenizer.Decode(*ids);
    if (!back.ok() || !IsValidUtf8(*back)) Fail("Decode of encoded text is not valid UTF-8");
  }

  // The server's ingest chunker, fed the text in pieces cut at character boundaries.
  if (valid) {
    mnemo::server::TextChunker chunker(/*max_carry=*/8);
    std::string joined;
    size_t pos = 0, step = 1;
    while (pos < text.size()) {
      size_t end = std::min(text.size(), pos + step);
      while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xc0) == 0x80) ++end;
      const std::string run = chunker.Push(text.substr(pos, end - pos));
      if (!IsValidUtf8(run)) Fail("TextChunker cut inside a character");
      joined += run;
      pos = end;
      step = step % 7 + 1;
    }
    joined += chunker.Finish();
    if (joined != text) Fail("TextChunker runs do not concatenate to the document");
  }
}

void CheckIds(const uint8_t* data, size_t size) {
  const mnemo::engine::Tokenizer& tokenizer = GetTokenizer();
  const int64_t vocab = tokenizer.vocab_size();
  std::vector<int32_t> ids;
  bool control = false;  // unk/bos/eos and out-of-vocabulary ids do not stream as text
  for (size_t i = 0; i + 1 < size && ids.size() < 256; i += 2) {
    const int32_t id = static_cast<int32_t>(data[i] | (data[i + 1] << 8));
    control = control || id < 3 || id >= vocab;
    ids.push_back(id);
  }
  mnemo::engine::IncrementalDecoder decoder(tokenizer);
  std::string streamed;
  bool failed = false;
  for (int32_t id : ids) {
    auto delta = decoder.Push(id);
    if (!delta.ok()) {
      if (id >= 0 && id < vocab) Fail("IncrementalDecoder refused an id inside the vocabulary");
      failed = true;
      break;
    }
    if (!IsValidUtf8(*delta)) Fail("IncrementalDecoder emitted a delta that is not whole UTF-8");
    streamed += *delta;
  }
  if (failed) return;
  auto rest = decoder.Flush();
  if (!rest.ok()) Fail("IncrementalDecoder::Flush failed");
  streamed += *rest;
  auto full = tokenizer.Decode(ids);
  if (!full.ok()) Fail("Decode failed on ids inside the vocabulary");
  if (!control && streamed != *full) Fail("streamed deltas differ from the full decode");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  GetTokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    CheckIds(data + 1, size - 1);
  } else {
    CheckText(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  }
  return 0;
}
