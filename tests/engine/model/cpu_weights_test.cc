// ModelOptions::cpu_weights on the CPU backend: a bf16 or f16 checkpoint's weight matrices and
// embeddings stay 16-bit (kAsStored, the default) or are widened to float32 (kFloat32, the
// oracle); both give the same logits within the float32 tolerance (each weight widens exactly,
// only the order of the sums differs), decode steps and prefill segments alike, on dense,
// compressive, sparse, linear and LSH layers; a float32 checkpoint is used as it is.
// kBf16Products (bf16 activations in decode products) stays within its stated bound of the
// oracle and keeps batches equal to sessions alone.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model_options.h"
#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/half_linear.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

constexpr double kTol = 1e-5;
// kBf16Products against the float32 oracle: every product's activations rounded to bf16 (2⁻⁹
// relative), through every layer of the small test models: measured 1.0–2.5e-3 of max |logit|.
constexpr double kBf16ProductsTol = 1e-2;

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> Cases() {
  std::vector<Case> v;
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    const std::string type = dtype == DType::kBF16 ? "BFloat16" : "Float16";
    ModelConfig dense = test::SmallConfig();
    dense.dtype = dtype;
    dense.mem_len = 24;
    v.push_back({type + "Dense", dense});
    ModelConfig tied = dense;
    tied.pre_lnorm = true;
    tied.tie_word_embeddings = true;
    v.push_back({type + "PreLnTied", tied});
    ModelConfig mixed = test::MixedKindsConfig();
    mixed.dtype = dtype;
    v.push_back({type + "MixedKinds", mixed});
  }
  return v;
}

class CpuWeightsTest : public ::testing::TestWithParam<Case> {};

TEST_P(CpuWeightsTest, StoredMatchesFloat32) {
  const ModelConfig& config = GetParam().config;
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 11);
  auto stored = test::LoadCpuModel(dir.path(), CpuWeights::kAsStored);
  auto widened = test::LoadCpuModel(dir.path(), CpuWeights::kFloat32);
  ASSERT_NE(stored, nullptr);
  ASSERT_NE(widened, nullptr);

  // Matrices and embeddings stay 16-bit; biases and LayerNorms are float32 either way.
  const TransfoXlLayerWeights& l0 = stored->weights().layers[0];
  EXPECT_EQ(l0.qkv.dtype(), config.dtype);
  EXPECT_EQ(l0.fc1.dtype(), config.dtype);
  EXPECT_EQ(stored->weights().word_emb.dtype(), config.dtype);
  EXPECT_EQ(stored->weights().lm_head.dtype(), config.dtype);
  EXPECT_EQ(l0.fc1_bias.dtype(), DType::kF32);
  EXPECT_EQ(widened->weights().layers[0].qkv.dtype(), DType::kF32);
  EXPECT_EQ(l0.qkv.bytes() * 2, widened->weights().layers[0].qkv.bytes());
  if (config.tie_word_embeddings) {  // one buffer serves the embedding and the output layer
    EXPECT_EQ(stored->weights().word_emb.raw(), stored->weights().lm_head.raw());
  }

  const std::vector<int32_t> doc = test::RandomTokens(40, config.vocab_size, 5);
  for (const std::vector<int64_t>& cut :
       std::vector<std::vector<int64_t>>{{40}, {1, 1, 1, 1, 9, 1, 26}, {3, 8, 12, 17}}) {
    const std::vector<float> a = test::FeedNewSession(*stored, doc, cut);
    const std::vector<float> b = test::FeedNewSession(*widened, doc, cut);
    EXPECT_TRUE(test::NearRelative(a, b, kTol)) << "segments starting with " << cut[0];
  }
}

// CpuWeights::kBf16Products: with a bf16 checkpoint on a CPU with AVX-512 BF16, decode steps and
// short segments round their activations to bf16, so the logits move off the oracle's, within
// kBf16ProductsTol of them; a batch of sessions still computes what each does alone, bit for bit.
// Elsewhere (an f16 checkpoint, another CPU) it computes what kAsStored does, bit for bit.
TEST_P(CpuWeightsTest, Bf16ProductsNearFloat32AndBatchEqualsAlone) {
  const ModelConfig& config = GetParam().config;
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 11);
  auto products = test::LoadCpuModel(dir.path(), CpuWeights::kBf16Products);
  auto stored = test::LoadCpuModel(dir.path(), CpuWeights::kAsStored);
  auto widened = test::LoadCpuModel(dir.path(), CpuWeights::kFloat32);
  ASSERT_NE(products, nullptr);
  ASSERT_NE(stored, nullptr);
  ASSERT_NE(widened, nullptr);
  EXPECT_EQ(products->weights().layers[0].qkv.dtype(), config.dtype);
  const bool rounds = config.dtype == DType::kBF16 && kernels::Bf16ProductsAvailable();

  const std::vector<int32_t> doc = test::RandomTokens(40, config.vocab_size, 5);
  for (const std::vector<int64_t>& cut :
       std::vector<std::vector<int64_t>>{{40}, {1, 1, 1, 1, 9, 1, 26}, {3, 8, 12, 17}}) {
    const std::vector<float> a = test::FeedNewSession(*products, doc, cut);
    const std::vector<float> b = test::FeedNewSession(*stored, doc, cut);
    // Segments of more than kDecodeKernelMaxRows tokens run the prefill products, unrounded (each
    // cut here is all short segments or one long one).
    const bool short_segments =
        *std::max_element(cut.begin(), cut.end()) <= kernels::kDecodeKernelMaxRows;
    if (rounds && short_segments) {
      EXPECT_TRUE(test::NearRelative(a, test::FeedNewSession(*widened, doc, cut), kBf16ProductsTol))
          << "segments starting with " << cut[0];
      EXPECT_NE(a, b) << "segments starting with " << cut[0] << ": nothing was rounded";
    } else {
      EXPECT_EQ(a, b) << "segments starting with " << cut[0];
    }
  }

  // Three sessions at different points of the document, one decode step each: in one batch and
  // alone.
  std::vector<SessionState> batch_states, alone_states;
  for (int64_t fed : {3, 17, 40}) {
    auto state = products->NewState();
    ASSERT_TRUE(state.ok()) << state.status();
    test::FeedInPieces(*products, *state, std::vector<int32_t>(doc.begin(), doc.begin() + fed),
                       {fed});
    batch_states.push_back(*products->CloneState(*state));
    alone_states.push_back(std::move(*state));
  }
  const std::vector<int32_t> next = {7, 8, 9};
  std::vector<SequenceInput> batch;
  for (size_t b = 0; b < next.size(); ++b) batch.push_back({&next[b], 1, &batch_states[b]});
  Tensor logits;
  ASSERT_TRUE(products->Forward(batch, LogitsMode::kLast, &logits).ok());
  const int64_t vocab = config.vocab_size;
  for (size_t b = 0; b < next.size(); ++b) {
    const std::vector<float> alone =
        test::FeedInPieces(*products, alone_states[b], std::vector<int32_t>{next[b]}, {1});
    const std::vector<float> in_batch(logits.data<float>() + static_cast<int64_t>(b) * vocab,
                                      logits.data<float>() + static_cast<int64_t>(b + 1) * vocab);
    EXPECT_EQ(in_batch, alone) << "session " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, CpuWeightsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(CpuWeightsFloat32CheckpointTest, UsedAsItIs) {
  ModelConfig config = test::SmallConfig();
  test::ScopedTempDir dir = test::WriteCheckpoint(config, 3);
  auto model = test::LoadCpuModel(dir.path(), CpuWeights::kAsStored);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->weights().layers[0].qkv.dtype(), DType::kF32);
}

TEST(ParseCpuWeightsTest, NamesAndErrors) {
  EXPECT_EQ(*ParseCpuWeights("stored"), CpuWeights::kAsStored);
  EXPECT_EQ(*ParseCpuWeights("float32"), CpuWeights::kFloat32);
  EXPECT_EQ(*ParseCpuWeights("bf16-products"), CpuWeights::kBf16Products);
  const auto bad = ParseCpuWeights("bf16");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("stored, float32 or bf16-products"), std::string::npos);
}

}  // namespace
}  // namespace mnemo::engine
