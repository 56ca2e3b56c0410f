// engine::api::Model (engine/api/model.h): what Describe reports (per-layer state bytes that add
// up to the state's size, kinds by their canonical names, a fingerprint that follows the
// weights), drafts loaded from draft.json or a directory and refused when they do not fit, and
// api::Generate over a loaded model with and without its draft.
#include <string>
#include <vector>

#include "engine/api/generation.h"
#include "engine/api/model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine::api {
namespace {

ModelConfig MixedConfig() {
  return test::ConfigWith(
      {R"({"attention": "dense"})", R"({"attention": "linear", "feature_map": "elu"})",
       R"({"attention": "sparse", "window": 3, "global_positions": [1]})"},
      {{"memory_init", "\"zeros\""}}, 6);
}

TEST(EngineApiTest, DescribeReportsLayersStateBytesAndFingerprint) {
  const ModelConfig config = MixedConfig();
  const test::ScopedTempDir dir = test::WriteCheckpoint(config, 3);
  auto model = Model::Load(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  auto d = (*model)->Describe();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->n_layer, 3);
  ASSERT_EQ(d->layers.size(), 3u);
  EXPECT_EQ(d->layers[0].attention_name, "dense");
  EXPECT_EQ(d->layers[1].attention_name, "linear");
  EXPECT_EQ(d->layers[2].attention_name, "sparse");
  EXPECT_EQ(d->attention_summary, "dense+linear+sparse");
  int64_t sum = 0;
  for (const LayerDescription& l : d->layers) {
    EXPECT_GT(l.state_bytes, 0);
    sum += l.state_bytes;
  }
  EXPECT_EQ(sum, d->state_bytes);
  auto state = (*model)->NewState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(static_cast<int64_t>(state->bytes()), d->state_bytes);
  EXPECT_EQ(d->fingerprint.size(), 16u);
  EXPECT_EQ((*model)->tokenizer(), nullptr);
  EXPECT_EQ((*model)->draft(), nullptr);

  // The same weights give the same fingerprint; other weights another one.
  const test::ScopedTempDir same = test::WriteCheckpoint(config, 3);
  const test::ScopedTempDir other = test::WriteCheckpoint(config, 4);
  EXPECT_EQ((*Model::Load(same.path()))->Describe()->fingerprint, d->fingerprint);
  EXPECT_NE((*Model::Load(other.path()))->Describe()->fingerprint, d->fingerprint);
}

TEST(EngineApiTest, DraftsLoadFromDraftJsonOrADirectoryAndMustFit) {
  const ModelConfig config = MixedConfig();
  const test::ScopedTempDir target = test::WriteCheckpoint(config, 3);
  const test::ScopedTempDir draft = test::WriteCheckpoint(config, 5);
  test::WriteFile(target.File("draft.json"),
                  R"({"model": ")" + draft.path() + R"(", "draft_tokens": 3})");
  // draft.json is read only when asked for.
  EXPECT_EQ((*Model::Load(target.path()))->draft(), nullptr);
  LoadOptions from_json;
  from_json.draft_from_json = true;
  auto with_json = Model::Load(target.path(), from_json);
  ASSERT_TRUE(with_json.ok()) << with_json.status();
  ASSERT_NE((*with_json)->draft(), nullptr);
  EXPECT_EQ((*with_json)->draft()->dir(), draft.path());
  EXPECT_EQ((*with_json)->draft_tokens(), 3);
  from_json.draft_tokens = 5;
  EXPECT_EQ((*Model::Load(target.path(), from_json))->draft_tokens(), 5);

  LoadOptions explicit_dir;
  explicit_dir.draft_dir = draft.path();
  auto with_dir = Model::Load(target.path(), explicit_dir);
  ASSERT_TRUE(with_dir.ok()) << with_dir.status();
  EXPECT_EQ((*with_dir)->draft_tokens(), 4);

  // Another vocabulary cannot draft.
  ModelConfig small = config;
  small.vocab_size = config.vocab_size - 1;
  const test::ScopedTempDir misfit = test::WriteCheckpoint(small, 5);
  explicit_dir.draft_dir = misfit.path();
  auto refused = Model::Load(target.path(), explicit_dir);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("vocabulary"), std::string::npos);
  explicit_dir.draft_dir = target.path() + "/nowhere";
  EXPECT_EQ(Model::Load(target.path(), explicit_dir).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Greedy generation over the API: the draft changes nothing in the tokens.
TEST(EngineApiTest, GenerateWithAndWithoutTheDraftAgreeUnderGreedy) {
  const ModelConfig config = MixedConfig();
  const test::ScopedTempDir target = test::WriteCheckpoint(config, 3);
  const test::ScopedTempDir draft = test::WriteCheckpoint(config, 5);
  auto plain = Model::Load(target.path());
  LoadOptions options;
  options.draft_dir = draft.path();
  options.draft_tokens = 2;
  auto spec = Model::Load(target.path(), options);
  ASSERT_TRUE(plain.ok() && spec.ok());
  const std::vector<int32_t> prompt = test::RandomTokens(9, config.vocab_size, 7);
  GenerationParams params;
  params.sampling.temperature = 0;
  params.max_tokens = 12;
  std::vector<std::vector<int32_t>> outputs;
  for (const Model* m : {plain->get(), spec->get()}) {
    SessionState state = *m->NewState();
    SessionState draft_state;
    if (m->draft() != nullptr) draft_state = *m->draft()->NewState();
    std::vector<int32_t> pending = prompt;
    const GenerationMemory memory{&state, &draft_state, &pending};
    std::vector<int32_t> ids;
    auto result = Generate(*m, 4, memory, params, prompt, DirectSteps(*m, memory),
                           [&](const GeneratedToken& t) {
                             ids.push_back(t.sample.id);
                             return true;
                           });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->generated, 12);
    EXPECT_EQ(pending.size(), 1u);
    EXPECT_EQ(state.position(), static_cast<int64_t>(prompt.size()) + 11);
    outputs.push_back(ids);
  }
  EXPECT_EQ(outputs[0], outputs[1]);
}

}  // namespace
}  // namespace mnemo::engine::api
