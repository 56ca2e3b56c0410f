// engine/tokenizer/word_tokenizer: a vocab.words file loads into ids by line; words split at
// whitespace, unknown words are <unk>, line breaks are <eos>; decoding joins words with spaces
// and streams through IncrementalDecoder; malformed files are refused naming path and line.
#include "engine/tokenizer/word_tokenizer.h"

#include <fstream>
#include <string>
#include <vector>

#include "engine/tokenizer/incremental_decoder.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

class WordTokenizerTest : public ::testing::Test {
 protected:
  // Writes `contents` as the directory's vocab.words and returns its path.
  std::string Write(const std::string& contents) {
    const std::string path = dir_.path() + "/" + kWordVocabularyFile;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& contents) {
    return LoadWordTokenizer(Write(contents));
  }

  test::ScopedTempDir dir_{"word_tokenizer"};
};

TEST_F(WordTokenizerTest, EncodesWordsUnknownsAndLineBreaks) {
  auto t = Load("<eos>\nthe\n<unk>\n,\ncat\n\xc3\xa9t\xc3\xa9\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 6);
  EXPECT_EQ((*t)->eos_id(), 0);
  auto ids = (*t)->Encode("the cat ,  dog\t\xc3\xa9t\xc3\xa9\nthe\r\n\ncat");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 4, 3, 2, 5, 0, 1, 0, 0, 4}));
  // Case and neighbouring punctuation are part of a word.
  EXPECT_EQ(*(*t)->Encode("The cat,"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(*(*t)->Encode(" \t "), std::vector<int32_t>{});
  EXPECT_EQ(*(*t)->Encode("<eos>"), std::vector<int32_t>{0});
  EXPECT_EQ((*t)->Encode("bad \xff").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WordTokenizerTest, DecodesWithSpacesAndLineBreaks) {
  auto t = Load("<eos>\nthe\n<unk>\ncat\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Decode({1, 3, 0, 3, 2, 0, 0, 1}), "the cat\ncat <unk>\n\nthe");
  EXPECT_EQ(*(*t)->Decode({}), "");
  EXPECT_EQ((*t)->Decode({4}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
  // Encode ∘ Decode is the identity on ids without <unk>.
  const std::vector<int32_t> ids = {1, 3, 0, 0, 3, 1, 0};
  EXPECT_EQ(*(*t)->Encode(*(*t)->Decode(ids)), ids);
}

TEST_F(WordTokenizerTest, StreamsThroughTheIncrementalDecoder) {
  auto t = Load("<eos>\nthe\na\ncat\n");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<int32_t> ids = {1, 3, 0, 2, 3, 0, 1};
  IncrementalDecoder decoder(**t);
  std::string streamed;
  for (int32_t id : ids) streamed += *decoder.Push(id);
  streamed += *decoder.Flush();
  EXPECT_EQ(streamed, *(*t)->Decode(ids));
}

TEST_F(WordTokenizerTest, WithoutUnkOrEosTheTextMustFit) {
  auto t = Load("the\ncat\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->eos_id(), -1);
  auto unknown = (*t)->Encode("the dog");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("dog"), std::string::npos) << unknown.status();
  EXPECT_EQ((*t)->Encode("the\ncat").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WordTokenizerTest, MalformedFilesNameThePathAndLine) {
  struct Case {
    std::string contents, message;
  };
  const std::vector<Case> cases = {
      {"", "no symbols"},
      {"the\ncat", "line 2 does not end"},
      {"the\n\ncat\n", "line 2 is empty"},
      {"the\nbig cat\n", "line 2 holds whitespace"},
      {"the\ncat\r\n", "line 2 holds whitespace"},
      {"the\ncat\nthe\n", "line 3 repeats line 1"},
      {"the\n\xc3(\n", "not valid UTF-8"},
  };
  for (const Case& c : cases) {
    auto t = Load(c.contents);
    ASSERT_FALSE(t.ok()) << c.message;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(t.status().message().find(c.message), std::string::npos) << t.status();
    EXPECT_NE(t.status().message().find(kWordVocabularyFile), std::string::npos) << t.status();
  }
  EXPECT_EQ(LoadWordTokenizer(dir_.path() + "/absent").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mnemo::engine
