// engine/tokenizer: UTF-8 validation and the streaming prefix rule, sentencepiece loading errors,
// and an encode/decode round trip on a tiny BPE model trained by spm_train in the test's temp dir.
#include "engine/tokenizer/tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer/incremental_decoder.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

TEST(Utf8Test, ValidSequences) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii \x01\x7f"));
  EXPECT_TRUE(IsValidUtf8(std::string("nul\0inside", 10)));
  EXPECT_TRUE(IsValidUtf8("\xc2\x80"));          // U+0080, smallest 2-byte
  EXPECT_TRUE(IsValidUtf8("\xdf\xbf"));          // U+07FF
  EXPECT_TRUE(IsValidUtf8("\xe0\xa0\x80"));      // U+0800, smallest 3-byte
  EXPECT_TRUE(IsValidUtf8("\xe2\x82\xac"));      // €
  EXPECT_TRUE(IsValidUtf8("\xed\x9f\xbf"));      // U+D7FF, just below the surrogates
  EXPECT_TRUE(IsValidUtf8("\xee\x80\x80"));      // U+E000, just above
  EXPECT_TRUE(IsValidUtf8("\xef\xbf\xbf"));      // U+FFFF
  EXPECT_TRUE(IsValidUtf8("\xf0\x90\x80\x80"));  // U+10000, smallest 4-byte
  EXPECT_TRUE(IsValidUtf8("\xf0\x9f\x98\x80"));  // 😀
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF, the largest
  EXPECT_TRUE(IsValidUtf8("gr\xc3\xbc\xc3\x9f \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80!"));
}

TEST(Utf8Test, Overlongs) {
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));  // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xc1\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xe0\x9f\xbf"));  // U+07FF in three bytes
  EXPECT_FALSE(IsValidUtf8("\xf0\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xf0\x8f\xbf\xbf"));  // U+FFFF in four bytes
}

TEST(Utf8Test, Surrogates) {
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));              // U+D800
  EXPECT_FALSE(IsValidUtf8("\xed\xbf\xbf"));              // U+DFFF
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\xbd\xed\xb8\x80"));  // CESU-8 pair
}

TEST(Utf8Test, AboveU10FFFF) {
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(IsValidUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xf7\xbf\xbf\xbf"));
  EXPECT_FALSE(IsValidUtf8("\xf8\x88\x80\x80\x80"));  // old 5-byte form
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\xfe"));
}

TEST(Utf8Test, TruncatedAndBrokenSequences) {
  EXPECT_FALSE(IsValidUtf8("\xc3"));
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));
  EXPECT_FALSE(IsValidUtf8("\xf0\x9f\x98"));
  EXPECT_FALSE(IsValidUtf8("ok\xf0\x9f"));
  EXPECT_FALSE(IsValidUtf8("\x80"));  // lone continuation
  EXPECT_FALSE(
      IsValidUtf8("a\xbf"
                  "b"));
  EXPECT_FALSE(IsValidUtf8("\xe2\x28\xa1"));      // bad second byte
  EXPECT_FALSE(IsValidUtf8("\xe2\x82\x28"));      // bad third byte
  EXPECT_FALSE(IsValidUtf8("\xf0\x9f\x98\x28"));  // bad fourth byte
  EXPECT_FALSE(IsValidUtf8("\xc3\xbc\xbc"));      // extra continuation
}

TEST(Utf8Test, CompleteUtf8Prefix) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  const std::string euro = "\xe2\x82\xac", smile = "\xf0\x9f\x98\x80", u = "\xc3\xbc";
  EXPECT_EQ(CompleteUtf8Prefix("a" + euro), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("a" + smile), 5u);
  EXPECT_EQ(CompleteUtf8Prefix(smile), 4u);
  EXPECT_EQ(CompleteUtf8Prefix(u + u), 4u);
  // Every cut inside a multi-byte sequence holds back exactly the unfinished bytes.
  for (const std::string& ch : {u, euro, smile}) {
    for (size_t cut = 1; cut < ch.size(); ++cut) {
      EXPECT_EQ(CompleteUtf8Prefix("xy" + ch.substr(0, cut)), 2u) << ch.size() << "/" << cut;
      EXPECT_EQ(CompleteUtf8Prefix(smile + ch.substr(0, cut)), 4u) << ch.size() << "/" << cut;
      EXPECT_EQ(CompleteUtf8Prefix(ch.substr(0, cut)), 0u);
    }
  }
  // Streaming: emitting CompleteUtf8Prefix of what has arrived never splits a character.
  const std::string text = "a" + euro + u + smile + "z" + smile;
  size_t emitted = 0;
  std::string out;
  for (size_t arrived = 1; arrived <= text.size(); ++arrived) {
    const size_t ready = CompleteUtf8Prefix(std::string_view(text).substr(0, arrived));
    ASSERT_GE(ready, emitted);
    out += text.substr(emitted, ready - emitted);
    emitted = ready;
    ASSERT_TRUE(IsValidUtf8(out)) << arrived;
  }
  EXPECT_EQ(out, text);
}

TEST(SentencePieceTest, MissingFileIsNotFound) {
  test::ScopedTempDir dir("spm");
  auto tok = LoadSentencePieceTokenizer(dir.File("absent.model"));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(tok.status().message()).find("absent.model"), std::string::npos);
}

TEST(SentencePieceTest, GarbageFileIsInvalidArgument) {
  test::ScopedTempDir dir("spm");
  const std::string path = dir.File("garbage.model");
  test::WriteFile(path, "this is not a serialized ModelProto \xff\xfe\x00\x01");
  auto tok = LoadSentencePieceTokenizer(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(tok.status().message()).find("garbage.model"), std::string::npos);
  const std::string empty = dir.File("empty.model");
  test::WriteFile(empty, "");
  auto empty_tok = LoadSentencePieceTokenizer(empty);
  ASSERT_FALSE(empty_tok.ok());
  EXPECT_EQ(empty_tok.status().code(), absl::StatusCode::kInvalidArgument);
}

constexpr char kSpmTrain[] = "/usr/bin/spm_train";

// Trains a tiny BPE model with byte fallback (vocabulary 300: the 256 byte pieces, 3 specials and
// some merges) on a few KB of generated text.
class TrainedTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::ScopedTempDir("spm_train");
    ASSERT_TRUE(std::filesystem::exists(kSpmTrain))
        << kSpmTrain << " is missing: install the Debian package `sentencepiece`";
    std::mt19937 rng(3);
    const std::vector<std::string> words = {"the",   "quick", "brown",     "fox",      "jumps",
                                            "over",  "lazy",  "dog",       "memory",   "segment",
                                            "token", "model", "attention", "relative", "zebra"};
    std::string text;
    for (int line = 0; line < 80; ++line) {
      for (int w = 0; w < 10; ++w) text += words[rng() % words.size()] + (w < 9 ? " " : "\n");
    }
    test::WriteFile(dir_->File("train.txt"), text);
    const std::string cmd = std::string(kSpmTrain) + " --input=" + dir_->File("train.txt") +
                            " --model_prefix=" + dir_->File("tiny") +
                            " --vocab_size=300 --model_type=bpe --character_coverage=1.0"
                            " --byte_fallback=true --minloglevel=2 > " +
                            dir_->File("train.log") + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "spm_train failed; see " << dir_->File("train.log");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  void SetUp() override {
    auto tok = LoadSentencePieceTokenizer(dir_->File("tiny.model"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
  }

  static test::ScopedTempDir* dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

test::ScopedTempDir* TrainedTokenizerTest::dir_ = nullptr;

TEST_F(TrainedTokenizerTest, VocabularyAndSpecialIds) {
  EXPECT_EQ(tokenizer_->vocab_size(), 300);
  EXPECT_EQ(tokenizer_->eos_id(), 2);  // sentencepiece default: unk 0, bos 1, eos 2
}

TEST_F(TrainedTokenizerTest, EncodeDecodeRoundTrip) {
  // Texts that sentencepiece's default nmt_nfkc normalisation leaves unchanged (it folds
  // newlines and repeated spaces into single spaces).
  for (const std::string text :
       {"the quick brown fox", "zebra memory attention", "Over THE lazy dog, again.",
        "unseen w\xc3\xb6rds: gr\xc3\xbc\xc3\x9f \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 #42"}) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_FALSE(ids->empty());
    for (int32_t id : *ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, tokenizer_->vocab_size());
      EXPECT_NE(id, 0) << "unknown piece in \"" << text << "\": byte fallback should cover it";
    }
    auto back = tokenizer_->Decode(*ids);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, text);
  }
  // Trained text compresses (fewer ids than bytes); unseen bytes fall back to one id per byte.
  const std::string trained = "the quick brown fox jumps over the lazy dog";
  auto ids = tokenizer_->Encode(trained);
  ASSERT_TRUE(ids.ok());
  EXPECT_LT(ids->size(), trained.size());
  auto bytes = tokenizer_->Encode("\xe4\xb8\xad");
  ASSERT_TRUE(bytes.ok());
  EXPECT_GE(bytes->size(), 3u);
}

// Streaming detokenisation: the deltas of IncrementalDecoder concatenate to the full decode, and
// every delta is whole UTF-8, for encoded multi-byte text (byte-fallback pieces that complete a
// character only together) and for random id sequences.
TEST_F(TrainedTokenizerTest, IncrementalDecoderDeltasConcatenateToTheFullDecode) {
  std::vector<std::vector<int32_t>> streams;
  for (const std::string text :
       {"the quick brown fox",
        "gr\xc3\xbc\xc3\x9f \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 end"}) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    streams.push_back(*ids);
  }
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> any_id(3, 299);  // no control ids
  for (int s = 0; s < 20; ++s) {
    std::vector<int32_t> ids(40);
    for (int32_t& id : ids) id = any_id(rng);
    streams.push_back(ids);
  }
  for (const std::vector<int32_t>& ids : streams) {
    IncrementalDecoder decoder(*tokenizer_);
    std::string streamed;
    size_t emitted_after_first_half = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      auto delta = decoder.Push(ids[i]);
      ASSERT_TRUE(delta.ok()) << delta.status();
      EXPECT_TRUE(IsValidUtf8(*delta));
      streamed += *delta;
      if (i + 1 == ids.size() / 2) emitted_after_first_half = streamed.size();
    }
    auto rest = decoder.Flush();
    ASSERT_TRUE(rest.ok());
    streamed += *rest;
    auto full = tokenizer_->Decode(ids);
    ASSERT_TRUE(full.ok());
    EXPECT_EQ(streamed, *full);
    EXPECT_GT(emitted_after_first_half, 0u) << "text must stream, not wait for the end";
  }
  IncrementalDecoder decoder(*tokenizer_);
  EXPECT_FALSE(decoder.Push(300).ok());
}

// Found by tests/fuzz/utf8_fuzzer: a lone "▁" piece after emitted text, then a word with its own
// "▁". Decoded alone the window ["▁", "▁sword"] is "sword" (sentencepiece drops whitespace at the
// start of a text), but in the document it is "  sword": the stream lost a space.
TEST(IncrementalDecoderTest, KeepsWhitespaceThatFollowsEmittedText) {
  auto tokenizer =
      LoadSentencePieceTokenizer(std::string(MNEMO_SOURCE_DIR) + "/models/student/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<int32_t> ids = {509, 285, 512};  // "▁speak", "▁", "▁sword"
  auto full = (*tokenizer)->Decode(ids);
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(*full, "speak  sword");
  IncrementalDecoder decoder(**tokenizer);
  std::string streamed;
  for (int32_t id : ids) {
    auto delta = decoder.Push(id);
    ASSERT_TRUE(delta.ok()) << delta.status();
    streamed += *delta;
  }
  auto rest = decoder.Flush();
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(streamed + *rest, *full);
}

TEST_F(TrainedTokenizerTest, RejectsInvalidUtf8AndOutOfRangeIds) {
  auto bad_text = tokenizer_->Encode("abc\xed\xa0\x80");
  ASSERT_FALSE(bad_text.ok());
  EXPECT_EQ(bad_text.status().code(), absl::StatusCode::kInvalidArgument);
  for (int32_t bad : {-1, 300, 1 << 30}) {
    auto decoded = tokenizer_->Decode({5, bad});
    ASSERT_FALSE(decoded.ok()) << bad;
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  }
  auto empty = tokenizer_->Decode({});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

}  // namespace
}  // namespace mnemo::engine
