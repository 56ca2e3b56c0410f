// Architecture "mistral" through the whole model (docs/checkpoint-format.md "Sliding-window
// decoders"): a document's logits do not depend on how it arrives (segments, one call, token by
// token; the ring wraps), grouped-query attention equals multi-head attention whose key/value
// heads are repeated, a session's state holds only the key/value heads of the window and stays
// that size, and the position limit refuses without touching the state. On every backend (the
// CUDA backend runs the CPU's assertions); Hugging Face parity is in tests/modern.
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"

#include "engine/checkpoint/safetensors.h"
#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

using test::FeedInPieces;
using test::MistralConfig;
using test::RandomTokens;

class MistralBackendTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MistralBackendTest, LogitsDoNotDependOnHowTheDocumentArrives) {
  const double tol = test::ExactnessTolerance(GetParam());
  for (const int64_t kv_heads : {4, 2, 1}) {
    SCOPED_TRACE(absl::StrCat(kv_heads, " key/value heads"));
    const ModelConfig c = MistralConfig(kv_heads, /*window=*/6);
    std::string unavailable;
    auto model = test::LoadModelOn(GetParam(), c, 7, &unavailable);
    if (!unavailable.empty()) GTEST_SKIP() << unavailable;
    ASSERT_NE(model, nullptr);
    const std::vector<int32_t> doc = RandomTokens(70, c.vocab_size, 3);
    SessionState whole = *model->NewState();
    const std::vector<float> once = FeedInPieces(*model, whole, doc, {70});
    SessionState pieces = *model->NewState();
    EXPECT_TRUE(
        test::NearRelative(FeedInPieces(*model, pieces, doc, {5, 6, 7, 1, 30, 21}), once, tol));
    SessionState tokens = *model->NewState();
    EXPECT_TRUE(test::NearRelative(FeedInPieces(*model, tokens, doc, std::vector<int64_t>(70, 1)),
                                   once, tol));
    EXPECT_EQ(whole.position(), 70);
  }
}

// Gemma-2: a sliding layer and a global one, soft-capped scores and logits, sandwich norms.
TEST_P(MistralBackendTest, Gemma2LogitsDoNotDependOnHowTheDocumentArrivesAndStayCapped) {
  const double tol = test::ExactnessTolerance(GetParam());
  const ModelConfig c = test::Gemma2Config(/*n_kv_head=*/2, /*window=*/5, /*context=*/80);
  std::string unavailable;
  auto model = test::LoadModelOn(GetParam(), c, 9, &unavailable);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> doc = RandomTokens(70, c.vocab_size, 8);
  SessionState whole = *model->NewState();
  const std::vector<float> once = FeedInPieces(*model, whole, doc, {70});
  SessionState tokens = *model->NewState();
  EXPECT_TRUE(test::NearRelative(FeedInPieces(*model, tokens, doc, std::vector<int64_t>(70, 1)),
                                 once, tol));
  SessionState pieces = *model->NewState();
  EXPECT_TRUE(test::NearRelative(FeedInPieces(*model, pieces, doc, {4, 5, 6, 40, 15}), once, tol));
  for (const float v : once) ASSERT_LT(std::fabs(v), 3.0f);  // cap · tanh(x / cap)
  // The state: the sliding layer's 4 positions and the global layer's 79, 2 heads of 8 floats.
  EXPECT_EQ(model->StateBytes(), size_t{2 * (4 + 79) * 2 * 8 * 4});
}

TEST_P(MistralBackendTest, StateHoldsTheWindowsKeyValueHeadsOnly) {
  const ModelConfig c = MistralConfig(/*n_kv_head=*/2, /*window=*/6);
  std::string unavailable;
  auto model = test::LoadModelOn(GetParam(), c, 7, &unavailable);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  ASSERT_NE(model, nullptr);
  // Per layer: W − 1 = 5 positions of keys and values, 2 heads of 8 floats.
  EXPECT_EQ(model->StateBytes(), size_t{2 * 2 * 5 * 2 * 8 * 4});
  SessionState state = *model->NewState();
  FeedInPieces(*model, state, RandomTokens(300, c.vocab_size, 4), {100, 100, 100});
  EXPECT_EQ(state.bytes(), model->StateBytes());
}

TEST_P(MistralBackendTest, PositionLimitRefusesAndKeepsTheState) {
  const ModelConfig c = MistralConfig(/*n_kv_head=*/2, /*window=*/24, /*max_positions=*/24);
  std::string unavailable;
  auto model = test::LoadModelOn(GetParam(), c, 7, &unavailable);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> doc = RandomTokens(24, c.vocab_size, 5);
  SessionState state = *model->NewState();
  FeedInPieces(*model, state, std::vector<int32_t>(doc.begin(), doc.begin() + 20), {20});
  SessionState before = *model->CloneState(state);
  Tensor logits;
  const std::vector<int32_t> five(doc.begin(), doc.begin() + 5);
  const absl::Status status =
      model->Forward({SequenceInput{five.data(), 5, &state}}, LogitsMode::kAll, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  EXPECT_NE(status.message().find("position limit of 24"), std::string_view::npos) << status;
  EXPECT_EQ(state.position(), 20);
  // The refused call changed nothing: the last 4 tokens give what they give on the copy.
  const std::vector<int32_t> tail(doc.begin() + 20, doc.end());
  EXPECT_EQ(FeedInPieces(*model, state, tail, {4}), FeedInPieces(*model, before, tail, {4}));
}

INSTANTIATE_TEST_SUITE_P(Backends, MistralBackendTest, ::testing::ValuesIn(test::TestBackends()),
                         [](const auto& info) { return info.param; });

// Grouped-query attention is multi-head attention whose key/value heads are repeated: the same
// weights with each key/value head's rows of qkv copied to the query heads of its group give the
// same logits (CPU).
TEST(MistralModelTest, GroupedQueriesEqualRepeatedKeyValueHeads) {
  const ModelConfig grouped = MistralConfig(/*n_kv_head=*/2, /*window=*/5);
  const ModelConfig full = MistralConfig(/*n_kv_head=*/4, /*window=*/5);
  test::ScopedTempDir dir = test::WriteCheckpoint(grouped, 11);
  auto file = SafetensorsFile::Open(dir.path() + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<test::RawTensor> tensors;
  const int64_t d = full.d_model, dh = full.d_head, hd = full.attn_width();
  for (const SafetensorsTensor& t : (*file)->tensors()) {
    std::string bytes(reinterpret_cast<const char*>(t.data), t.size_bytes);
    std::vector<int64_t> shape = t.shape;
    if (t.name.ends_with("attn.qkv.weight")) {  // [q | k (2 heads) | v (2 heads)] rows
      const size_t row = static_cast<size_t>(d) * sizeof(float);
      std::string out = bytes.substr(0, static_cast<size_t>(hd) * row);  // the queries
      for (const int64_t block : {hd, hd + 2 * dh}) {                    // keys, then values
        for (int64_t h = 0; h < 4; ++h) {  // query head h reads key head h / 2
          out += bytes.substr(static_cast<size_t>(block + (h / 2) * dh) * row,
                              static_cast<size_t>(dh) * row);
        }
      }
      bytes = out;
      shape = {3 * hd, d};
    }
    tensors.push_back(test::RawTensor{t.name, "F32", shape, bytes});
  }
  test::ScopedTempDir full_dir = test::WriteCheckpointFiles(test::ConfigJson(full), tensors);
  auto a = TransfoXlModel::Load(dir.path());
  auto b = TransfoXlModel::Load(full_dir.path());
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  const std::vector<int32_t> doc = RandomTokens(40, grouped.vocab_size, 6);
  SessionState sa = *(*a)->NewState(), sb = *(*b)->NewState();
  EXPECT_TRUE(test::NearRelative(FeedInPieces(**a, sa, doc, {13, 27}),
                                 FeedInPieces(**b, sb, doc, {13, 27}), 1e-5));
  EXPECT_LT((*a)->StateBytes(), (*b)->StateBytes());
}

// The rotary frequencies are float32 and positive whatever the checkpoint's dtype.
TEST(MistralModelTest, RotaryFrequenciesAreCheckedAtLoad) {
  const ModelConfig c = MistralConfig(2, 5);
  for (const auto& [values, dtype, fragment] :
       std::vector<std::tuple<std::vector<float>, std::string, std::string>>{
           {{1.0f, 0.5f, 0.0f, 0.25f}, "F32", "must be positive"},
           {{1.0f, 0.5f, 0.1f, 0.25f}, "BF16", "must be float32"},
       }) {
    std::vector<test::RawTensor> tensors = test::RandomWeights(c, 3);
    for (test::RawTensor& t : tensors) {
      if (t.name != "rotary.inv_freq") continue;
      t.dtype = dtype;
      t.bytes = test::FloatBytes(values, dtype == "F32" ? DType::kF32 : DType::kBF16);
    }
    test::ScopedTempDir dir = test::WriteCheckpointFiles(test::ConfigJson(c), tensors);
    auto model = TransfoXlModel::Load(dir.path());
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(fragment), std::string_view::npos) << model.status();
    EXPECT_NE(model.status().message().find("rotary.inv_freq"), std::string_view::npos);
  }
}

}  // namespace
}  // namespace mnemo::engine
