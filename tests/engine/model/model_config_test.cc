// engine/model/model_config: a valid config.json parses to the right values; every field missing,
// mistyped or out of range gives INVALID_ARGUMENT naming that field.
#include "engine/model/model_config.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

Fields ValidFields() {
  ModelConfig c = test::SmallConfig();
  c.eos_token_id = 3;
  return test::ConfigFields(c);
}

Fields Without(Fields f, const std::string& field) {
  for (auto it = f.begin(); it != f.end(); ++it) {
    if (it->first == field) {
      f.erase(it);
      return f;
    }
  }
  ADD_FAILURE() << "no field " << field;
  return f;
}

Fields With(Fields f, const std::string& field, const std::string& raw_value) {
  for (auto& [k, v] : f) {
    if (k == field) {
      v = raw_value;
      return f;
    }
  }
  f.emplace_back(field, raw_value);
  return f;
}

// Parsing fails with INVALID_ARGUMENT and a message that names `field`.
void ExpectFieldError(const Fields& fields, const std::string& field, const std::string& context) {
  const std::string json = test::RenderJsonObject(fields);
  auto parsed = ParseModelConfig(json);
  ASSERT_FALSE(parsed.ok()) << context << " accepted:\n" << json;
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << context;
  EXPECT_NE(std::string(parsed.status().message()).find("\"" + field + "\""), std::string::npos)
      << context << ": message does not name field \"" << field
      << "\": " << parsed.status().message();
}

const char* const kAllFields[] = {"architecture", "vocab_size",
                                  "d_model",      "n_layer",
                                  "n_head",       "d_head",
                                  "d_inner",      "mem_len",
                                  "clamp_len",    "same_length",
                                  "pre_lnorm",    "untie_r",
                                  "activation",   "layer_norm_epsilon",
                                  "memory_init",  "tie_word_embeddings",
                                  "torch_dtype"};

TEST(ModelConfigTest, ValidConfigParses) {
  ModelConfig want = test::SmallConfig();
  want.eos_token_id = 3;
  want.clamp_len = 7;
  want.same_length = true;
  want.pre_lnorm = true;
  want.untie_r = false;
  want.activation = Activation::kGelu;
  want.layer_norm_epsilon = 1e-6;
  want.memory_init = MemoryInit::kZeros;
  want.tie_word_embeddings = true;
  want.dtype = DType::kBF16;
  auto got = ParseModelConfig(test::ConfigJson(want));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->architecture, "transfo_xl");
  EXPECT_EQ(got->vocab_size, want.vocab_size);
  EXPECT_EQ(got->d_model, want.d_model);
  EXPECT_EQ(got->n_layer, want.n_layer);
  EXPECT_EQ(got->n_head, want.n_head);
  EXPECT_EQ(got->d_head, want.d_head);
  EXPECT_EQ(got->d_inner, want.d_inner);
  EXPECT_EQ(got->mem_len, want.mem_len);
  EXPECT_EQ(got->clamp_len, 7);
  EXPECT_TRUE(got->same_length);
  EXPECT_TRUE(got->pre_lnorm);
  EXPECT_FALSE(got->untie_r);
  EXPECT_EQ(got->activation, Activation::kGelu);
  EXPECT_DOUBLE_EQ(got->layer_norm_epsilon, 1e-6);
  EXPECT_EQ(got->memory_init, MemoryInit::kZeros);
  EXPECT_TRUE(got->tie_word_embeddings);
  EXPECT_EQ(got->dtype, DType::kBF16);
  ASSERT_TRUE(got->eos_token_id.has_value());
  EXPECT_EQ(*got->eos_token_id, 3);
  EXPECT_EQ(got->attn_width(), want.n_head * want.d_head);
}

TEST(ModelConfigTest, OppositeFlagsAndEnumsParse) {
  ModelConfig want = test::SmallConfig();  // relu, empty, float32, untied, post-LN
  auto got = ParseModelConfig(test::ConfigJson(want));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->activation, Activation::kRelu);
  EXPECT_EQ(got->memory_init, MemoryInit::kEmpty);
  EXPECT_EQ(got->dtype, DType::kF32);
  EXPECT_TRUE(got->untie_r);
  EXPECT_FALSE(got->pre_lnorm);
  EXPECT_FALSE(got->eos_token_id.has_value());
  want.dtype = DType::kF16;
  got = ParseModelConfig(test::ConfigJson(want));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->dtype, DType::kF16);
}

TEST(ModelConfigTest, RandomConfigsRoundTrip) {
  for (uint32_t seed = 0; seed < 50; ++seed) {
    const ModelConfig want = test::RandomConfig(seed);
    auto got = ParseModelConfig(test::ConfigJson(want));
    ASSERT_TRUE(got.ok()) << "seed " << seed << ": " << got.status();
    EXPECT_EQ(test::ConfigJson(*got), test::ConfigJson(want)) << "seed " << seed;
  }
}

TEST(ModelConfigTest, OptionalEosMayBeAbsentOrNull) {
  auto absent = ParseModelConfig(test::RenderJsonObject(Without(ValidFields(), "eos_token_id")));
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_FALSE(absent->eos_token_id.has_value());
  auto null = ParseModelConfig(test::RenderJsonObject(With(ValidFields(), "eos_token_id", "null")));
  ASSERT_TRUE(null.ok()) << null.status();
  EXPECT_FALSE(null->eos_token_id.has_value());
}

TEST(ModelConfigTest, EveryMissingFieldIsNamed) {
  for (const char* field : kAllFields) {
    ExpectFieldError(Without(ValidFields(), field), field, std::string("missing ") + field);
  }
}

TEST(ModelConfigTest, EveryWrongTypeIsNamed) {
  const std::vector<std::string> ints = {"vocab_size", "d_model",   "n_layer",
                                         "n_head",     "d_head",    "d_inner",
                                         "mem_len",    "clamp_len", "eos_token_id"};
  for (const std::string& f : ints) {
    ExpectFieldError(With(ValidFields(), f, "\"8\""), f, f + " as string");
    ExpectFieldError(With(ValidFields(), f, "8.5"), f, f + " as fraction");
    ExpectFieldError(With(ValidFields(), f, "true"), f, f + " as bool");
    ExpectFieldError(With(ValidFields(), f, "[8]"), f, f + " as array");
  }
  for (const std::string f : {"same_length", "pre_lnorm", "untie_r", "tie_word_embeddings"}) {
    ExpectFieldError(With(ValidFields(), f, "1"), f, f + " as int");
    ExpectFieldError(With(ValidFields(), f, "\"true\""), f, f + " as string");
    ExpectFieldError(With(ValidFields(), f, "null"), f, f + " as null");
  }
  for (const std::string f : {"architecture", "activation", "memory_init", "torch_dtype"}) {
    ExpectFieldError(With(ValidFields(), f, "1"), f, f + " as int");
    ExpectFieldError(With(ValidFields(), f, "{}"), f, f + " as object");
  }
  ExpectFieldError(With(ValidFields(), "layer_norm_epsilon", "\"1e-5\""), "layer_norm_epsilon",
                   "epsilon as string");
}

TEST(ModelConfigTest, OutOfRangeValuesAreNamed) {
  const std::vector<std::pair<std::string, std::string>> bad = {{"vocab_size", "0"},
                                                                {"vocab_size", "-1"},
                                                                {"d_model", "0"},
                                                                {"d_model", "-16"},
                                                                {"d_model", "15"},
                                                                {"n_layer", "0"},
                                                                {"n_layer", "-2"},
                                                                {"n_head", "0"},
                                                                {"d_head", "0"},
                                                                {"d_head", "-4"},
                                                                {"d_inner", "0"},
                                                                {"mem_len", "-1"},
                                                                {"clamp_len", "-1"},
                                                                {"vocab_size", "99999999999"},
                                                                {"mem_len", "18446744073709551615"},
                                                                {"layer_norm_epsilon", "0"},
                                                                {"layer_norm_epsilon", "-1e-5"}};
  for (const auto& [field, value] : bad) {
    ExpectFieldError(With(ValidFields(), field, value), field, field + " = " + value);
  }
}

TEST(ModelConfigTest, ZeroIsAllowedWhereDocumented) {
  auto got = ParseModelConfig(
      test::RenderJsonObject(With(With(ValidFields(), "mem_len", "0"), "clamp_len", "0")));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->mem_len, 0);
  EXPECT_EQ(got->clamp_len, 0);
}

TEST(ModelConfigTest, SameLengthNeedsAMemory) {
  ExpectFieldError(With(With(ValidFields(), "mem_len", "0"), "same_length", "true"), "same_length",
                   "same_length without memory");
  auto got = ParseModelConfig(
      test::RenderJsonObject(With(With(ValidFields(), "mem_len", "1"), "same_length", "true")));
  EXPECT_TRUE(got.ok()) << got.status();
}

TEST(ModelConfigTest, OddDModelIsRejected) {
  ExpectFieldError(With(ValidFields(), "d_model", "17"), "d_model", "odd d_model");
}

TEST(ModelConfigTest, UnknownArchitectureNamesTheField) {
  ExpectFieldError(With(ValidFields(), "architecture", "\"gpt2\""), "architecture", "gpt2");
  auto parsed =
      ParseModelConfig(test::RenderJsonObject(With(ValidFields(), "architecture", "\"gpt2\"")));
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(std::string(parsed.status().message()).find("gpt2"), std::string::npos);
}

TEST(ModelConfigTest, UnknownExtraFieldIsRejected) {
  ExpectFieldError(With(ValidFields(), "mem_lenn", "16"), "mem_lenn", "typo field");
}

TEST(ModelConfigTest, BadEnumValuesAreNamed) {
  ExpectFieldError(With(ValidFields(), "memory_init", "\"zero\""), "memory_init", "zero");
  ExpectFieldError(With(ValidFields(), "memory_init", "\"\""), "memory_init", "empty string");
  ExpectFieldError(With(ValidFields(), "activation", "\"silu\""), "activation", "silu");
  ExpectFieldError(With(ValidFields(), "activation", "\"RELU\""), "activation", "RELU");
  ExpectFieldError(With(ValidFields(), "torch_dtype", "\"float64\""), "torch_dtype", "float64");
  ExpectFieldError(With(ValidFields(), "torch_dtype", "\"int32\""), "torch_dtype", "int32");
  ExpectFieldError(With(ValidFields(), "torch_dtype", "\"F32\""), "torch_dtype", "F32");
}

TEST(ModelConfigTest, EosTokenIdMustBeInsideVocabulary) {
  ModelConfig c = test::SmallConfig();
  ExpectFieldError(With(ValidFields(), "eos_token_id", std::to_string(c.vocab_size)),
                   "eos_token_id", "eos == vocab");
  ExpectFieldError(With(ValidFields(), "eos_token_id", "-1"), "eos_token_id", "eos -1");
  auto last = ParseModelConfig(test::RenderJsonObject(
      With(ValidFields(), "eos_token_id", std::to_string(c.vocab_size - 1))));
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(*last->eos_token_id, c.vocab_size - 1);
}

TEST(ModelConfigTest, AdaptiveBandsParse) {
  const int64_t vocab = test::SmallConfig().vocab_size;  // d_model (= d_embed) 16
  auto parsed = ParseModelConfig(
      test::RenderJsonObject(With(With(ValidFields(), "cutoffs", "[10, 20]"), "div_val", "2")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->adaptive);
  const std::vector<VocabularyBand> bands = parsed->bands();
  ASSERT_EQ(bands.size(), 3u);
  EXPECT_EQ(bands[0].begin, 0);
  EXPECT_EQ(bands[0].end, 10);
  EXPECT_EQ(bands[0].width, 16);
  EXPECT_EQ(bands[1].end, 20);
  EXPECT_EQ(bands[1].width, 8);
  EXPECT_EQ(bands[2].begin, 20);
  EXPECT_EQ(bands[2].end, vocab);
  EXPECT_EQ(bands[2].width, 4);
  // An empty list is one band (an adaptive head with a projection, no clusters).
  auto single = ParseModelConfig(test::RenderJsonObject(With(ValidFields(), "cutoffs", "[]")));
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(single->bands().size(), 1u);
  // Without the field nothing is adaptive.
  EXPECT_TRUE(ParseModelConfig(test::RenderJsonObject(ValidFields()))->bands().empty());
  // The adaptive head projects, so an embedding narrower than d_model may be tied.
  EXPECT_TRUE(ParseModelConfig(test::RenderJsonObject(With(
                                   With(With(ValidFields(), "cutoffs", "[10]"), "d_embed", "8"),
                                   "tie_word_embeddings", "true")))
                  .ok());
}

TEST(ModelConfigTest, BadAdaptiveBandsAreNamed) {
  const std::string vocab = std::to_string(test::SmallConfig().vocab_size);
  for (const char* bad : {"[20, 10]", "[10, 10]", "[0]", "[-3]", "[1.5]", "\"10\"", "{}"}) {
    ExpectFieldError(With(ValidFields(), "cutoffs", bad), "cutoffs", bad);
  }
  ExpectFieldError(With(ValidFields(), "cutoffs", "[" + vocab + "]"), "cutoffs", "cutoff == vocab");
  ExpectFieldError(With(ValidFields(), "div_val", "2"), "div_val", "div_val without cutoffs");
  ExpectFieldError(With(With(ValidFields(), "cutoffs", "[10]"), "div_val", "0"), "div_val",
                   "div_val 0");
  // d_embed 16 / 32 leaves the second band no columns.
  ExpectFieldError(With(With(ValidFields(), "cutoffs", "[10]"), "div_val", "32"), "div_val",
                   "band of width 0");
  ExpectFieldError(With(With(ValidFields(), "cutoffs", "[10]"), "layer_groups", "1"), "cutoffs",
                   "adaptive with layer sharing");
}

TEST(ModelConfigTest, InvalidJsonIsRejected) {
  for (const std::string text :
       {"", "{", "not json", "{\"vocab_size\": 5,}", "[1, 2]", "42", "\"transfo_xl\"", "null"}) {
    auto parsed = ParseModelConfig(text);
    ASSERT_FALSE(parsed.ok()) << "accepted: " << text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(std::string(parsed.status().message()).find("config.json"), std::string::npos)
        << parsed.status().message();
  }
  // A valid object followed by garbage.
  auto trailing = ParseModelConfig(test::RenderJsonObject(ValidFields()) + "}");
  EXPECT_FALSE(trailing.ok());
}

TEST(ModelConfigTest, LoadModelConfigReadsTheDirectory) {
  test::ScopedTempDir dir("config");
  auto missing = LoadModelConfig(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  test::WriteFile(dir.File("config.json"), test::ConfigJson(test::SmallConfig()));
  auto loaded = LoadModelConfig(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->vocab_size, test::SmallConfig().vocab_size);
  test::WriteFile(dir.File("config.json"),
                  test::RenderJsonObject(Without(ValidFields(), "n_head")));
  auto bad = LoadModelConfig(dir.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("config.json"), std::string::npos);
  EXPECT_NE(std::string(bad.status().message()).find("\"n_head\""), std::string::npos);
}

}  // namespace
}  // namespace mnemo::engine

namespace mnemo::engine {
namespace {

// config.json "layers": per-layer attention kinds (docs/checkpoint-format.md).
Fields WithLayers(const std::string& raw_layers) {
  Fields f = test::ConfigFields(test::SmallConfig());
  f.emplace_back("layers", raw_layers);
  return f;
}

TEST(ModelConfigLayersTest, AbsentMeansEveryLayerDense) {
  auto c = ParseModelConfig(test::RenderJsonObject(test::ConfigFields(test::SmallConfig())));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(static_cast<int64_t>(c->layers.size()), c->n_layer);
  for (int64_t l = 0; l < c->n_layer; ++l) EXPECT_TRUE(c->is_dense(l));
  EXPECT_TRUE(c->has_dense_layer());
}

TEST(ModelConfigLayersTest, EveryKindParses) {
  ASSERT_EQ(test::SmallConfig().n_layer, 2);
  auto c = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "linear", "feature_map": "rfa", "num_features": 5, "gated": true,
           "eps": 0.001}, {"attention": "dense"}])")));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->is_dense(0));
  EXPECT_TRUE(c->is_dense(1));
  EXPECT_EQ(c->layer(0).linear.feature_map, FeatureMap::kRfa);
  EXPECT_EQ(c->layer(0).linear.num_features, 5);
  EXPECT_TRUE(c->layer(0).linear.gated);
  EXPECT_DOUBLE_EQ(c->layer(0).linear.eps, 0.001);
  EXPECT_EQ(c->linear_features(0), 10);  // sin | cos
  auto elu = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "linear", "feature_map": "elu"},
          {"attention": "linear", "feature_map": "favor", "num_features": 7}])")));
  ASSERT_TRUE(elu.ok()) << elu.status();
  EXPECT_EQ(elu->linear_features(0), elu->d_head);
  EXPECT_EQ(elu->linear_features(1), 7);
  EXPECT_DOUBLE_EQ(elu->layer(0).linear.eps, 1e-6);
  EXPECT_FALSE(elu->has_dense_layer());
}

TEST(ModelConfigLayersTest, BadEntriesNameTheLayerAndField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"([{"attention": "dense"}])", "layers"},  // wrong length
      {R"({"attention": "dense"})", "layers"},
      {R"([{"attention": "dense"}, 3])", "layers[1] must be an object"},
      {R"([{"attention": "dense"}, {"attention": "sparse"}])", "layers[1]"},
      {R"([{"attention": "dense", "gated": true}, {"attention": "dense"}])", "layers[0]"},
      {R"([{"attention": "linear"}, {"attention": "dense"}])", "feature_map"},
      {R"([{"attention": "linear", "feature_map": "relu"}, {"attention": "dense"}])",
       "feature_map"},
      {R"([{"attention": "linear", "feature_map": "favor"}, {"attention": "dense"}])",
       "num_features"},
      {R"([{"attention": "linear", "feature_map": "elu", "num_features": 4},
           {"attention": "dense"}])",
       "num_features"},
      {R"([{"attention": "linear", "feature_map": "favor", "num_features": 0},
           {"attention": "dense"}])",
       "num_features"},
      {R"([{"attention": "linear", "feature_map": "elu", "gated": true},
           {"attention": "dense"}])",
       "gated"},
      {R"([{"attention": "linear", "feature_map": "elu", "eps": 0}, {"attention": "dense"}])",
       "eps"},
      {R"([{"attention": "linear", "feature_map": "elu", "window": 4},
           {"attention": "dense"}])",
       "window"},
  };
  for (const auto& [layers, fragment] : cases) {
    auto c = ParseModelConfig(test::RenderJsonObject(WithLayers(layers)));
    ASSERT_FALSE(c.ok()) << layers;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(fragment), std::string::npos)
        << c.status() << " should mention " << fragment;
  }
}

TEST(ModelConfigLayersTest, SparseWindowsParse) {
  // SmallConfig has 2 heads.
  auto c =
      ParseModelConfig(test::RenderJsonObject(WithLayers(R"([{"attention": "sparse", "window": 4},
                    {"attention": "sparse", "window": 3, "dilation": [1, 5]}])")));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layer(0).attention, AttentionKind::kSparse);
  EXPECT_EQ(c->layer(0).sparse.dilations, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(c->layer(0).sparse.sparse_span(), 3);
  EXPECT_EQ(c->layer(1).sparse.dilations, (std::vector<int64_t>{1, 5}));
  EXPECT_EQ(c->layer(1).sparse.sparse_span(), 10);  // (3 − 1) · 5
  for (const auto& [layers, fragment] : std::vector<std::pair<std::string, std::string>>{
           {R"([{"attention": "sparse"}, {"attention": "dense"}])", "window"},
           {R"([{"attention": "sparse", "window": 0}, {"attention": "dense"}])", "window"},
           {R"([{"attention": "sparse", "window": 2, "dilation": [1]}, {"attention": "dense"}])",
            "dilation"},
           {R"([{"attention": "sparse", "window": 2, "dilation": 0}, {"attention": "dense"}])",
            "dilation"},
           {R"([{"attention": "sparse", "window": 2, "eps": 1}, {"attention": "dense"}])", "eps"},
           {R"([{"attention": "linear", "feature_map": "elu", "window": 2},
                {"attention": "dense"}])",
            "window"},
           {R"([{"attention": "sparse", "window": 1048576, "dilation": 2},
                {"attention": "dense"}])",
            "window"},
       }) {
    auto bad = ParseModelConfig(test::RenderJsonObject(WithLayers(layers)));
    ASSERT_FALSE(bad.ok()) << layers;
    EXPECT_NE(bad.status().message().find(fragment), std::string::npos) << bad.status();
  }
}

TEST(ModelConfigLayersTest, PatternsLshAndCompressiveParse) {
  auto c = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "sparse", "pattern": "fixed", "block": 8, "summary": 2, "span": 64,
           "global_positions": [7, 0, 3], "global_tokens": [5], "max_global": 9},
          {"attention": "lsh", "n_hashes": 2, "n_buckets": 6, "chunk_len": 4}])")));
  ASSERT_TRUE(c.ok()) << c.status();
  const LayerConfig& fixed = c->layer(0);
  EXPECT_EQ(fixed.sparse.pattern, SparsePattern::kFixed);
  EXPECT_EQ(fixed.sparse.sparse_span(), 64);
  EXPECT_EQ(fixed.sparse.head_components, (std::vector<uint8_t>{1, 2}));  // split over heads
  EXPECT_EQ(fixed.sparse.global_positions, (std::vector<int64_t>{0, 3, 7}));
  EXPECT_EQ(fixed.sparse.max_global, 9);
  EXPECT_EQ(c->layer(1).attention, AttentionKind::kLsh);
  EXPECT_EQ(c->layer(1).lsh.history, 4096);  // the default
  EXPECT_EQ(c->layer(1).lsh.bucket_factors.count, 0);
  auto mc = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 64},
          {"attention": "dense"}])")));
  ASSERT_TRUE(mc.ok()) << mc.status();
  EXPECT_EQ(mc->layer(0).attention, AttentionKind::kMemoryCompressed);
  EXPECT_EQ(mc->layer(0).memory_compressed.compression_rate, 3);
  EXPECT_EQ(mc->layer(0).memory_compressed.cmem_len, 64);
  auto routing = ParseModelConfig(test::RenderJsonObject(
      WithLayers(R"([{"attention": "routing", "n_clusters": 8}, {"attention": "dense"}])")));
  ASSERT_TRUE(routing.ok()) << routing.status();
  EXPECT_EQ(routing->layer(0).attention, AttentionKind::kRouting);
  EXPECT_EQ(routing->layer(0).routing.n_clusters, 8);
  EXPECT_EQ(routing->layer(0).routing.history, 4096);  // the default
  auto factorised = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "dense"},
          {"attention": "lsh", "n_hashes": 1, "n_buckets": [64, 128], "chunk_len": 64}])")));
  ASSERT_TRUE(factorised.ok()) << factorised.status();
  const LshConfig& lsh = factorised->layer(1).lsh;
  EXPECT_EQ(lsh.n_buckets, 8192);
  ASSERT_EQ(lsh.bucket_factors.count, 2);
  EXPECT_EQ(lsh.bucket_factors.sizes[0], 64);
  EXPECT_EQ(lsh.bucket_factors.sizes[1], 128);
  EXPECT_EQ(kernels::LshRotationColumns(lsh.bucket_factors, 8192), 96);
  auto union_split = ParseModelConfig(test::RenderJsonObject(WithLayers(
      R"([{"attention": "sparse", "pattern": "strided", "stride": 4, "span": 16, "split": "union",
           "global_positions": [1, 2]},
          {"attention": "dense", "memory": "compressive", "compression": "dilated_conv",
           "compression_rate": 4, "cmem_len": 8}])")));
  ASSERT_TRUE(union_split.ok()) << union_split.status();
  EXPECT_EQ(union_split->layer(0).sparse.head_components, (std::vector<uint8_t>{3, 3}));
  EXPECT_EQ(union_split->layer(0).sparse.max_global, 2);  // defaults to the positions listed
  EXPECT_TRUE(union_split->layer(1).dense.compressive());
  EXPECT_EQ(union_split->layer(1).dense.compress_taps(), 2);
  for (const auto& [layers, fragment] : std::vector<std::pair<std::string, std::string>>{
           {R"({"attention": "sparse", "pattern": "strided", "stride": 4})", "span"},
           {R"({"attention": "sparse", "pattern": "strided", "span": 4})", "stride"},
           {R"({"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 5, "span": 9})",
            "summary"},
           {R"({"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 1, "span": 9,
                "components": ["local"]})",
            "components"},
           {R"({"attention": "sparse", "pattern": "strided", "stride": 4, "span": 9,
                "split": "layers"})",
            "split"},
           {R"({"attention": "sparse", "pattern": "bigbird", "block": 4, "span": 9,
                "window": 3})",
            "window"},
           {R"({"attention": "sparse", "pattern": "diagonal", "span": 9})", "pattern"},
           {R"({"attention": "sparse", "window": 4, "global_tokens": [1], "max_global": 0})",
            "max_global"},
           {R"({"attention": "sparse", "window": 4, "global_tokens": [37]})", "global_tokens"},
           {R"({"attention": "sparse", "window": 4, "global_positions": [2, 2]})", "repeats"},
           {R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 5, "chunk_len": 4})", "n_buckets"},
           {R"({"attention": "lsh", "n_hashes": 0, "n_buckets": 4, "chunk_len": 4})", "n_hashes"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": [4, 3], "chunk_len": 4})", "even"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": [], "chunk_len": 4})", "factors"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": [256, 512], "chunk_len": 4})",
            "65536"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": [2, 2, 2, 2, 2, 2, 2, 2, 2],
                "chunk_len": 4})",
            "factors"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": ["4"], "chunk_len": 4})",
            "n_buckets"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 4,
                "history": 0})",
            "history"},
           {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 4,
                "window": 3})",
            "window"},
           {R"({"attention": "dense", "memory": "compressive", "compression": "zip",
                "compression_rate": 2, "cmem_len": 4})",
            "compression"},
           {R"({"attention": "dense", "memory": "compressive", "compression": "max_pool",
                "compression_rate": 17, "cmem_len": 4})",
            "compression_rate"},
           {R"({"attention": "dense", "memory": "compressive", "compression": "dilated_conv",
                "compression_rate": 6, "compression_kernel": 4, "cmem_len": 4})",
            "compression_kernel"},
           {R"({"attention": "dense", "memory": "compressive", "compression": "max_pool",
                "compression_rate": 2})",
            "cmem_len"},
           {R"({"attention": "dense", "compression": "max_pool"})", "compression"},
           {R"({"attention": "linear", "feature_map": "elu", "memory": "compressive"})", "memory"},
           {R"({"attention": "routing", "history": 4})", "n_clusters"},
           {R"({"attention": "routing", "n_clusters": 1})", "n_clusters"},
           {R"({"attention": "routing", "n_clusters": 4097})", "n_clusters"},
           {R"({"attention": "routing", "n_clusters": 4, "history": 0})", "history"},
           {R"({"attention": "routing", "n_clusters": 4, "chunk_len": 4})", "chunk_len"},
           {R"({"attention": "memory_compressed", "cmem_len": 4})", "compression_rate"},
           {R"({"attention": "memory_compressed", "compression_rate": 1, "cmem_len": 4})",
            "compression_rate"},
           {R"({"attention": "memory_compressed", "compression_rate": 4097, "cmem_len": 4})",
            "compression_rate"},
           {R"({"attention": "memory_compressed", "compression_rate": 3})", "cmem_len"},
           {R"({"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 0})",
            "cmem_len"},
           {R"({"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 2,
                "compression": "conv1d"})",
            "compression"},
           {R"({"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 2,
                "residual_attention": true})",
            "residual_attention"},
       }) {
    auto bad = ParseModelConfig(
        test::RenderJsonObject(WithLayers("[" + layers + R"(, {"attention": "dense"}])")));
    ASSERT_FALSE(bad.ok()) << layers;
    EXPECT_NE(bad.status().message().find(fragment), std::string::npos) << bad.status();
  }
  // A compressive memory needs a memory and cannot keep same_length's key count.
  Fields f = test::ConfigFields(test::SmallConfig());
  for (auto& [k, v] : f) {
    if (k == "same_length") v = "true";
  }
  f.emplace_back("layers", R"([{"attention": "dense", "memory": "compressive",
      "compression": "max_pool", "compression_rate": 2, "cmem_len": 4}, {"attention": "dense"}])");
  auto same = ParseModelConfig(test::RenderJsonObject(f));
  ASSERT_FALSE(same.ok());
  EXPECT_NE(same.status().message().find("same_length"), std::string::npos) << same.status();
}

TEST(ModelConfigLayersTest, FavorNeedsSmallHeads) {
  Fields f = test::ConfigFields(test::SmallConfig());
  for (auto& [k, v] : f) {
    if (k == "d_head") v = "129";
  }
  f.emplace_back("layers", R"([{"attention": "linear", "feature_map": "favor", "num_features": 8},
                              {"attention": "dense"}])");
  auto c = ParseModelConfig(test::RenderJsonObject(f));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("d_head"), std::string::npos) << c.status();
}

TEST(ModelConfigMistralTest, ParsesGroupedHeadsAndThePositionLimit) {
  const ModelConfig c = test::MistralConfig(/*n_kv_head=*/2, /*window=*/7, /*max_positions=*/64);
  EXPECT_TRUE(c.rotary_decoder);
  EXPECT_EQ(c.kv_heads(), 2);
  EXPECT_EQ(c.kv_width(), 16);
  EXPECT_EQ(c.qkv_width(), 32 + 2 * 16);
  EXPECT_EQ(c.max_positions(), 64);
  EXPECT_EQ(c.activation, Activation::kSilu);
  // Absent n_kv_head: every head has its own keys and values.
  EXPECT_EQ(test::SmallConfig().kv_heads(), test::SmallConfig().n_head);
}

TEST(ModelConfigMistralTest, Gemma2ParsesItsScaleAndCaps) {
  const ModelConfig c = test::Gemma2Config(2, 5, 64);
  EXPECT_TRUE(c.gemma2 && c.rotary_decoder);
  EXPECT_DOUBLE_EQ(c.attn_scale, 1.0 / std::sqrt(24.0));
  EXPECT_EQ(c.attn_softcap, 5.0);
  EXPECT_EQ(c.final_softcap, 3.0);
  EXPECT_EQ(c.activation, Activation::kGeluTanh);
  EXPECT_EQ(c.max_positions(), 64);
  Fields gemma = test::ConfigFields(c);
  for (const auto& [fields, field] : std::vector<std::pair<Fields, std::string>>{
           {Without(gemma, "query_pre_attn_scalar"), "query_pre_attn_scalar"},
           {With(gemma, "query_pre_attn_scalar", "0"), "query_pre_attn_scalar"},
           {With(gemma, "attn_logit_softcapping", "-1"), "attn_logit_softcapping"},
           {With(gemma, "final_logit_softcapping", "\"30\""), "final_logit_softcapping"},
           {With(test::ConfigFields(test::MistralConfig(2, 7)), "query_pre_attn_scalar", "16"),
            "query_pre_attn_scalar"},
           {With(ValidFields(), "activation", "\"gelu_tanh\""), "activation"},
       }) {
    ExpectFieldError(fields, field, test::RenderJsonObject(fields));
  }
  // A null cap is no cap.
  auto uncapped =
      ParseModelConfig(test::RenderJsonObject(With(gemma, "attn_logit_softcapping", "null")));
  ASSERT_TRUE(uncapped.ok()) << uncapped.status();
  EXPECT_EQ(uncapped->attn_softcap, 0.0);
}

TEST(ModelConfigMistralTest, RefusalsNameTheField) {
  Fields mistral = test::ConfigFields(test::MistralConfig(2, 7));
  const std::string window = R"({"attention": "sparse", "window": 7})";
  for (const auto& [fields, field] : std::vector<std::pair<Fields, std::string>>{
           {With(mistral, "n_kv_head", "3"), "n_kv_head"},  // does not divide 4
           {With(mistral, "n_kv_head", "0"), "n_kv_head"},
           {With(mistral, "n_kv_head", "8"), "n_kv_head"},
           {With(mistral, "max_positions", "0"), "max_positions"},
           {With(mistral, "d_head", "7"), "d_head"},  // rotary pairs
           {With(mistral, "pre_lnorm", "false"), "architecture"},
           {With(mistral, "mem_len", "4"), "architecture"},
           {With(mistral, "layers", "[" + window + R"(, {"attention": "dense"}])"), "layers"},
           {With(mistral, "layers",
                 "[" + window + R"(, {"attention": "sparse", "window": 3, "dilation": 2}])"),
            "layers"},
           {With(mistral, "layers",
                 "[" + window + R"(, {"attention": "sparse", "window": 3, "global_tokens": [1],
                                  "max_global": 2}])"),
            "layers"},
           {With(ValidFields(), "activation", "\"silu\""), "activation"},
           {With(ValidFields(), "n_kv_head", "1"), "n_kv_head"},
       }) {
    ExpectFieldError(fields, field, test::RenderJsonObject(fields));
  }
}

}  // namespace
}  // namespace mnemo::engine
