// engine/tokenizer/byte_tokenizer: UTF-8 bytes ↔ ids b + 2 (Reformer enwik8's vocabulary),
// ill-formed output rendered as U+FFFD by maximal subparts, streaming through the incremental
// decoder, and the checkpoint field that selects it.
#include "engine/tokenizer/byte_tokenizer.h"

#include <string>
#include <vector>

#include "engine/api/model.h"
#include "engine/tokenizer/incremental_decoder.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

std::unique_ptr<Tokenizer> Bytes(int64_t vocab = 258, int32_t eos = 2) {
  auto t = MakeByteTokenizer(vocab, eos);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(ByteTokenizerTest, EncodesEachUtf8ByteAsItsValuePlusTwo) {
  auto t = Bytes();
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 258);
  EXPECT_EQ(t->eos_id(), 2);
  auto ids = t->Encode("a\xC3\xA9\n");  // "aé\n"
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{0x61 + 2, 0xC3 + 2, 0xA9 + 2, 0x0A + 2}));
  auto empty = t->Encode("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto bad = t->Encode("a\xC3");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ByteTokenizerTest, DecodeSkipsReservedIdsAndRoundTrips) {
  auto t = Bytes(300, -1);
  ASSERT_NE(t, nullptr);
  const std::string text = "Raskolnikov \xE2\x82\xAC 42 \xF0\x9F\x99\x82\t\x01";
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> noisy = {0, 1};
  for (int32_t id : *ids) {
    noisy.push_back(id);
    noisy.push_back(258);  // ids past 257 (a model larger than 258) are no text
  }
  noisy.push_back(299);
  auto decoded = t->Decode(noisy);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, text);
  EXPECT_EQ(t->Decode({300}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ByteTokenizerTest, IllFormedBytesDecodeAsMaximalSubparts) {
  // Unicode's example for "U+FFFD substitution of maximal subparts" (Table 3-8).
  const std::string bytes = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  const std::string r = kReplacement;
  EXPECT_EQ(ReplaceInvalidUtf8(bytes), "a" + r + r + r + "b" + r + "c" + r + r + "d");
  // Overlongs, surrogates and code points past U+10FFFF are ill-formed from their second byte.
  EXPECT_EQ(ReplaceInvalidUtf8("\xE0\x80\x80"), r + r + r);
  EXPECT_EQ(ReplaceInvalidUtf8("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(ReplaceInvalidUtf8("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(ReplaceInvalidUtf8("\xC0\xAF"), r + r);
  // An unfinished sequence at the end is one U+FFFD.
  EXPECT_EQ(ReplaceInvalidUtf8("ok\xF0\x9F\x99"), "ok" + r);
  const std::string good = "\xE2\x82\xAC\xF0\x9F\x99\x82\xC3\xA9";
  EXPECT_EQ(ReplaceInvalidUtf8(good), good);
  auto t = Bytes();
  ASSERT_NE(t, nullptr);
  auto decoded = t->Decode({0xFF + 2, 'x' + 2});
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, r + "x");
}

TEST(ByteTokenizerTest, StreamsWholeCharactersThroughTheIncrementalDecoder) {
  auto t = Bytes();
  ASSERT_NE(t, nullptr);
  const std::string text = "na\xC3\xAFve \xE2\x82\xAC\xF0\x9F\x99\x82!";
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  IncrementalDecoder decoder(*t);
  std::string out;
  for (int32_t id : *ids) {
    auto piece = decoder.Push(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    EXPECT_TRUE(IsValidUtf8(*piece)) << "a piece split a character";
    out += *piece;
  }
  auto rest = decoder.Flush();
  ASSERT_TRUE(rest.ok());
  out += *rest;
  EXPECT_EQ(out, text);
  // A stream that ends inside a character flushes U+FFFD.
  IncrementalDecoder cut(*t);
  std::string partial;
  for (int32_t id : {'a' + 2, 0xE2 + 2, 0x82 + 2}) partial += *cut.Push(id);
  partial += *cut.Flush();
  EXPECT_EQ(partial, std::string("a") + kReplacement);
}

TEST(ByteTokenizerTest, NeedsRoomForEveryByte) {
  auto small = MakeByteTokenizer(257, -1);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("258"), std::string::npos) << small.status();
}

TEST(ByteTokenizerTest, ACheckpointSelectsItInConfigJson) {
  ModelConfig config = test::SmallConfig();
  config.vocab_size = 258;
  config.byte_tokenizer = true;
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 3);
  auto model = api::Model::Load(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_NE((*model)->tokenizer(), nullptr);
  auto ids = (*model)->tokenizer()->Encode("Hi");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{'H' + 2, 'i' + 2}));
  // A tokenizer file beside it is ambiguous: refused.
  test::WriteFile(dir.path() + "/tokenizer.model", "x");
  auto both = api::Model::Load(dir.path());
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(both.status().message().find("tokenizer.model"), std::string::npos) << both.status();
  // The config field names the only tokenizer it knows, and needs 258 ids.
  auto unknown = ParseModelConfig(test::RenderJsonObject([&] {
    auto f = test::ConfigFields(config);
    for (auto& [k, v] : f) {
      if (k == "tokenizer") v = "\"words\"";
    }
    return f;
  }()));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("tokenizer"), std::string::npos);
  config.vocab_size = 100;
  auto too_small = ParseModelConfig(test::ConfigJson(config));
  ASSERT_FALSE(too_small.ok());
  EXPECT_NE(too_small.status().message().find("258"), std::string::npos) << too_small.status();
}

}  // namespace
}  // namespace mnemo::engine
