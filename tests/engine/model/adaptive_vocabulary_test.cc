// engine/model/adaptive_vocabulary through TransfoXlModel: an adaptive model's output rows are
// log-probabilities (normalised, finite) over every band, decode steps and segments alike; a
// 16-bit adaptive checkpoint kept 16-bit gives the widened form's outputs; a missing adaptive
// tensor is named at load. (Parity with Hugging Face: tests/reference/test_hf_parity.py.)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model_options.h"
#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

// vocab 37 in bands [0, 10), [10, 20), [20, 37) of widths E, E/2, E/4.
ModelConfig AdaptiveConfig(int64_t div_val, int64_t d_embed, bool tied) {
  ModelConfig c = test::SmallConfig();
  c.mem_len = 12;
  c.adaptive = true;
  c.cutoffs = {10, 20};
  c.div_val = div_val;
  c.d_embed = d_embed;
  c.tie_word_embeddings = tied;
  return c;
}

TEST(AdaptiveVocabularyTest, RowsAreLogProbabilitiesOverEveryBand) {
  for (const ModelConfig& config :
       {AdaptiveConfig(2, 16, true), AdaptiveConfig(1, 8, false), AdaptiveConfig(4, 32, false)}) {
    test::ScopedTempDir dir = test::WriteCheckpoint(config, 7);
    auto model = test::LoadCpuModel(dir.path(), CpuWeights::kAsStored);
    ASSERT_NE(model, nullptr);
    // Ids from every band, both ends of each.
    std::vector<int32_t> doc = {0, 9, 10, 19, 20, 36};
    const std::vector<int32_t> more = test::RandomTokens(34, config.vocab_size, 3);
    doc.insert(doc.end(), more.begin(), more.end());
    for (const std::vector<int64_t>& cut :
         std::vector<std::vector<int64_t>>{{40}, {5, 1, 1, 1, 12, 1, 19}}) {
      const std::vector<float> out = test::FeedNewSession(*model, doc, cut);
      ASSERT_EQ(out.size(), doc.size() * static_cast<size_t>(config.vocab_size));
      for (size_t r = 0; r < doc.size(); ++r) {
        const float* row = out.data() + r * static_cast<size_t>(config.vocab_size);
        double sum = 0.0, lowest = row[0], highest = row[0];
        for (int64_t j = 0; j < config.vocab_size; ++j) {
          ASSERT_TRUE(std::isfinite(row[j])) << "row " << r << " id " << j;
          ASSERT_LE(row[j], 0.0f);
          sum += std::exp(static_cast<double>(row[j]));
          lowest = std::min(lowest, static_cast<double>(row[j]));
          highest = std::max(highest, static_cast<double>(row[j]));
        }
        EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r << " div_val " << config.div_val;
        EXPECT_GT(highest - lowest, 1e-3) << "row " << r;  // not a constant row
      }
    }
  }
}

TEST(AdaptiveVocabularyTest, SixteenBitStoredMatchesWidened) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (ModelConfig config : {AdaptiveConfig(2, 16, true), AdaptiveConfig(1, 8, false)}) {
      config.dtype = dtype;
      test::ScopedTempDir dir = test::WriteCheckpoint(config, 9);
      auto stored = test::LoadCpuModel(dir.path(), CpuWeights::kAsStored);
      auto widened = test::LoadCpuModel(dir.path(), CpuWeights::kFloat32);
      ASSERT_NE(stored, nullptr);
      ASSERT_NE(widened, nullptr);
      EXPECT_EQ(stored->weights().adaptive.emb[0].dtype(), dtype);
      EXPECT_EQ(stored->weights().adaptive.head_bias[0].dtype(), DType::kF32);
      EXPECT_EQ(widened->weights().adaptive.emb[0].dtype(), DType::kF32);
      if (config.tie_word_embeddings) {  // the head's weights are the embedding tables
        EXPECT_EQ(stored->weights().adaptive.head[1].raw(),
                  stored->weights().adaptive.emb[1].raw());
      }
      const std::vector<int32_t> doc = test::RandomTokens(30, config.vocab_size, 5);
      for (const std::vector<int64_t>& cut :
           std::vector<std::vector<int64_t>>{{30}, {1, 1, 1, 7, 1, 19}}) {
        EXPECT_TRUE(test::NearRelative(test::FeedNewSession(*stored, doc, cut),
                                       test::FeedNewSession(*widened, doc, cut), 1e-5))
            << DTypeName(dtype) << " div_val " << config.div_val;
      }
    }
  }
}

TEST(AdaptiveVocabularyTest, AMissingAdaptiveTensorIsNamed) {
  const ModelConfig config = AdaptiveConfig(2, 16, false);
  for (const char* missing : {"adaptive.emb.2.proj", "adaptive.head.1.weight",
                              "adaptive.head.cluster.bias", "adaptive.head.0.proj"}) {
    std::vector<test::RawTensor> tensors = test::RandomWeights(config, 1);
    const size_t before = tensors.size();
    std::erase_if(tensors, [&](const test::RawTensor& t) { return t.name == missing; });
    ASSERT_EQ(tensors.size() + 1, before) << missing;
    test::ScopedTempDir dir =
        test::WriteCheckpointFiles(test::ConfigJson(config), std::move(tensors));
    auto model = TransfoXlModel::Load(dir.path());
    ASSERT_FALSE(model.ok()) << missing;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(missing), std::string::npos) << model.status();
  }
}

}  // namespace
}  // namespace mnemo::engine
