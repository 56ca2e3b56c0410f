// The long-context layer kinds through the whole model (docs/checkpoint-format.md): sparse
// patterns with global positions and tokens, LSH, compressive memory, ALBERT sharing and
// factorised embeddings. Properties that need no reference implementation: a document's logits
// do not depend on how sparse and LSH layers receive it, a compressive memory at rate 1 is a
// longer XL memory, the state's bytes are exact and constant, clones and host round trips are
// exact, shared layers hold their tensors once. (The float64 PyTorch parity is in
// tests/reference.)
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "engine/model/transfo_xl_model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

constexpr double kTol = 1e-5;

using test::ConfigWith;
using test::FeedInPieces;
using test::LoadModel;
using test::RandomTokens;

std::vector<int64_t> RandomPieces(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> out;
  for (int64_t left = n; left > 0;) {
    const int64_t len = std::min<int64_t>(left, std::uniform_int_distribution<int64_t>(1, 23)(rng));
    out.push_back(len);
    left -= len;
  }
  return out;
}

// Layer kinds whose output at a position depends only on the positions before it, so the
// document may arrive in any pieces.
const std::vector<std::pair<std::string, std::vector<std::string>>>& SplitFreeModels() {
  static const auto* models = new std::vector<std::pair<std::string, std::vector<std::string>>>{
      {"strided",
       {R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20})",
        R"({"attention": "sparse", "pattern": "strided", "stride": 4, "span": 9,
                       "components": ["strided"]})"}},
      {"fixed+globals",
       {R"({"attention": "sparse", "pattern": "fixed", "block": 5, "summary": 2, "span": 12,
            "split": "union", "global_positions": [0, 3, 40]})",
        R"({"attention": "sparse", "pattern": "window", "window": 3, "global_tokens": [1, 2, 3],
            "max_global": 4})"}},
      {"bigbird",
       {R"({"attention": "sparse", "pattern": "bigbird", "block": 4, "window_blocks": 2,
            "random_blocks": 2, "span": 40, "seed": 9, "global_tokens": [5], "max_global": 2})",
        R"({"attention": "sparse", "pattern": "bigbird", "block": 3, "span": 1000})"}},
      {"lsh",
       {R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4, "history": 30})",
        R"({"attention": "lsh", "n_hashes": 3, "n_buckets": 8, "chunk_len": 5, "history": 4096})"}},
      {"realformer window chain",
       {R"({"attention": "sparse", "window": 5})",
        R"({"attention": "sparse", "window": 5, "residual_attention": true})",
        R"({"attention": "sparse", "window": 5, "residual_attention": true})"}},
      {"realformer strided chain",
       {R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20})",
        R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 20,
            "residual_attention": true})"}},
      {"mixed",
       {R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 2, "chunk_len": 8, "history": 17})",
        R"({"attention": "linear", "feature_map": "elu"})",
        R"({"attention": "sparse", "pattern": "strided", "stride": 5, "span": 25,
            "global_positions": [1]})"}},
  };
  return *models;
}

// One test body per backend (test::TestBackends): the CUDA backend runs the CPU's assertions.
class LongContextBackendTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LongContextBackendTest, SparseAndLshLogitsDoNotDependOnHowTheDocumentArrives) {
  const double tol = test::ExactnessTolerance(GetParam());
  for (const auto& [name, layers] : SplitFreeModels()) {
    SCOPED_TRACE(name);
    const ModelConfig c = ConfigWith(layers);
    std::string unavailable;
    auto model = test::LoadModelOn(GetParam(), c, 7, &unavailable);
    if (!unavailable.empty()) GTEST_SKIP() << unavailable;
    ASSERT_NE(model, nullptr);
    const std::vector<int32_t> doc = RandomTokens(90, c.vocab_size, 3);
    SessionState whole = *model->NewState();
    const std::vector<float> once = FeedInPieces(*model, whole, doc, {90});
    SessionState pieces = *model->NewState();
    EXPECT_TRUE(
        test::NearRelative(FeedInPieces(*model, pieces, doc, RandomPieces(90, 4)), once, tol));
    SessionState tokens = *model->NewState();
    EXPECT_TRUE(test::NearRelative(FeedInPieces(*model, tokens, doc, std::vector<int64_t>(90, 1)),
                                   once, tol));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, LongContextBackendTest,
                         ::testing::ValuesIn(test::TestBackends()),
                         [](const auto& info) { return info.param; });

TEST(LongContextModelTest, LaterTokensNeverChangeEarlierLogits) {
  for (const auto& [name, layers] : SplitFreeModels()) {
    SCOPED_TRACE(name);
    const ModelConfig c = ConfigWith(layers);
    auto model = LoadModel(c, 2);
    ASSERT_NE(model, nullptr);
    std::vector<int32_t> doc = RandomTokens(60, c.vocab_size, 5);
    SessionState a = *model->NewState();
    const std::vector<float> first = FeedInPieces(*model, a, doc, {60});
    for (size_t i = 35; i < doc.size(); ++i) doc[i] = (doc[i] + 11) % c.vocab_size;
    SessionState b = *model->NewState();
    const std::vector<float> second = FeedInPieces(*model, b, doc, {60});
    const size_t keep = 35 * static_cast<size_t>(c.vocab_size);
    EXPECT_EQ(std::vector<float>(first.begin(), first.begin() + keep),
              std::vector<float>(second.begin(), second.begin() + keep));
    EXPECT_NE(first, second);
  }
}

// A compressive memory at rate 1 under mean or max pooling keeps every evicted row exactly:
// [cmem | mem] is an XL memory of mem_len + cmem_len with the same relative positions.
TEST(LongContextModelTest, CompressiveMemoryAtRateOneIsALongerXlMemory) {
  for (const char* fn : {"mean_pool", "max_pool", "most_used"}) {
    SCOPED_TRACE(fn);
    const std::string entry =
        absl::StrCat(R"({"attention": "dense", "memory": "compressive", "compression": ")", fn,
                     R"(", "compression_rate": 1, "cmem_len": 7})");
    // mem_len is global: compare one-layer models, XL memory 5 + 7 compressed vs XL 12.
    const ModelConfig one_c = ConfigWith({entry}, {}, 5);
    const ModelConfig one_xl = ConfigWith({R"({"attention": "dense"})"}, {}, 12);
    auto mc = LoadModel(one_c, 4);
    auto mx = LoadModel(one_xl, 4);
    ASSERT_NE(mc, nullptr);
    ASSERT_NE(mx, nullptr);
    const std::vector<int32_t> doc = RandomTokens(70, one_c.vocab_size, 8);
    for (const std::vector<int64_t>& pieces :
         {std::vector<int64_t>{6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 4}, RandomPieces(70, 9)}) {
      SessionState sc = *mc->NewState(), sx = *mx->NewState();
      EXPECT_TRUE(test::NearRelative(FeedInPieces(*mc, sc, doc, pieces),
                                     FeedInPieces(*mx, sx, doc, pieces), kTol));
    }
  }
}

const std::vector<std::string>& CompressiveEntries() {
  static const auto* entries = new std::vector<std::string>{
      R"({"attention": "dense", "memory": "compressive", "compression": "max_pool",
          "compression_rate": 3, "cmem_len": 4})",
      R"({"attention": "dense", "memory": "compressive", "compression": "mean_pool",
          "compression_rate": 2, "cmem_len": 5})",
      R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
          "compression_rate": 3, "cmem_len": 3})",
      R"({"attention": "dense", "memory": "compressive", "compression": "dilated_conv",
          "compression_rate": 4, "compression_kernel": 2, "cmem_len": 3})",
      R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
          "compression_rate": 2, "cmem_len": 6})",
  };
  return *entries;
}

TEST(LongContextModelTest, StateBytesAreExactAndConstantForEveryKind) {
  std::vector<std::vector<std::string>> models;
  for (const auto& [name, layers] : SplitFreeModels()) models.push_back(layers);
  for (const std::string& e : CompressiveEntries()) models.push_back({e, e});
  for (const auto& layers : models) {
    for (const char* init : {"\"empty\"", "\"zeros\""}) {
      SCOPED_TRACE(layers[0] + init);
      const ModelConfig c = ConfigWith(layers, {{"memory_init", init}}, 6);
      auto model = LoadModel(c, 3);
      ASSERT_NE(model, nullptr);
      SessionState s = *model->NewState();
      const size_t bytes = model->StateBytes();
      EXPECT_EQ(s.bytes(), bytes);
      const std::vector<int32_t> doc = RandomTokens(200, c.vocab_size, 1);
      FeedInPieces(*model, s, doc, RandomPieces(200, 2));
      EXPECT_EQ(s.bytes(), bytes);
      // Clone and a host round trip continue exactly like the original.
      SessionState clone = *model->CloneState(s);
      SessionState restored = *model->StateFromHost(*model->StateToHost(s));
      const std::vector<int32_t> more = RandomTokens(25, c.vocab_size, 6);
      const std::vector<float> want = FeedInPieces(*model, s, more, {13, 12});
      EXPECT_EQ(FeedInPieces(*model, clone, more, {13, 12}), want);
      EXPECT_EQ(FeedInPieces(*model, restored, more, {13, 12}), want);
    }
  }
}

TEST(LongContextModelTest, CompressiveMemoryChangesWhatTheModelSeesOnlyAfterEviction) {
  for (const std::string& e : CompressiveEntries()) {
    SCOPED_TRACE(e);
    const ModelConfig c = ConfigWith({e}, {}, 6);
    const ModelConfig xl = ConfigWith({R"({"attention": "dense"})"}, {}, 6);
    auto mc = LoadModel(c, 5);
    auto mx = LoadModel(xl, 5);
    ASSERT_NE(mc, nullptr);
    ASSERT_NE(mx, nullptr);
    const std::vector<int32_t> doc = RandomTokens(24, c.vocab_size, 2);
    SessionState sc = *mc->NewState(), sx = *mx->NewState();
    // Segments of 6 with an empty memory: nothing is evicted before the third segment starts,
    // so the first two segments agree with plain XL; later ones see compressed rows.
    const std::vector<float> a = FeedInPieces(*mc, sc, doc, {6, 6, 6, 6});
    const std::vector<float> b = FeedInPieces(*mx, sx, doc, {6, 6, 6, 6});
    const size_t two = 12 * static_cast<size_t>(c.vocab_size);
    EXPECT_TRUE(test::NearRelative(std::vector<float>(a.begin(), a.begin() + two),
                                   std::vector<float>(b.begin(), b.begin() + two), kTol));
    EXPECT_FALSE(test::NearRelative(std::vector<float>(a.begin() + two, a.end()),
                                    std::vector<float>(b.begin() + two, b.end()), kTol));
  }
}

TEST(LongContextModelTest, ResidualAttentionChangesTheOutputAndKeepsTheState) {
  const std::string dense = R"({"attention": "dense"})";
  const std::string residual = R"({"attention": "dense", "residual_attention": true})";
  for (const auto& [plain_layers, chain_layers] :
       std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
           {{dense, dense, dense}, {dense, residual, residual}},
           {{R"({"attention": "sparse", "window": 4})", R"({"attention": "sparse", "window": 4})"},
            {R"({"attention": "sparse", "window": 4})",
             R"({"attention": "sparse", "window": 4, "residual_attention": true})"}}}) {
    const ModelConfig plain = ConfigWith(plain_layers), chain = ConfigWith(chain_layers);
    auto a = LoadModel(plain, 6), b = LoadModel(chain, 6);  // same weights
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(a->StateBytes(), b->StateBytes());
    const std::vector<int32_t> doc = RandomTokens(40, plain.vocab_size, 2);
    SessionState sa = *a->NewState(), sb = *b->NewState();
    const std::vector<float> la = FeedInPieces(*a, sa, doc, {16, 16, 1, 1, 6});
    const std::vector<float> lb = FeedInPieces(*b, sb, doc, {16, 16, 1, 1, 6});
    ASSERT_EQ(la.size(), lb.size());
    // (random ±0.1 weights give small scores, so the change is small but far above rounding)
    EXPECT_FALSE(test::NearRelative(la, lb, 1e-6));
    // The first position sees only itself in every layer: one key, softmax 1 either way.
    const size_t v = static_cast<size_t>(plain.vocab_size);
    EXPECT_TRUE(test::NearRelative(std::vector<float>(la.begin(), la.begin() + v),
                                   std::vector<float>(lb.begin(), lb.begin() + v), kTol));
  }
}

TEST(LongContextModelTest, SharedLayersHoldTheirTensorsOnceAndEqualCopiedLayers) {
  const std::string dense = R"({"attention": "dense"})";
  const ModelConfig shared =
      ConfigWith({dense, dense, dense, dense}, {{"layer_groups", "2"}, {"d_embed", "8"}});
  auto model = LoadModel(shared, 3);
  ASSERT_NE(model, nullptr);
  const TransfoXlWeights& w = model->weights();
  EXPECT_EQ(w.layers[0].qkv.raw(), w.layers[1].qkv.raw());
  EXPECT_EQ(w.layers[2].fc1.raw(), w.layers[3].fc1.raw());
  EXPECT_NE(w.layers[1].qkv.raw(), w.layers[2].qkv.raw());
  EXPECT_EQ(w.word_emb.shape(), (std::vector<int64_t>{shared.vocab_size, 8}));
  SessionState s = *model->NewState();
  EXPECT_EQ(s.bytes(), 4 * SessionStateBytes(1, shared.mem_len, shared.attn_width()));
  const std::vector<int32_t> doc = RandomTokens(30, shared.vocab_size, 1);
  const std::vector<float> logits = FeedInPieces(*model, s, doc, {10, 20});
  EXPECT_EQ(logits.size(), 30 * static_cast<size_t>(shared.vocab_size));
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

TEST(LongContextModelTest, SharedLayersMustAgreeAndDEmbedNeedsUntiedHead) {
  const std::string dense = R"({"attention": "dense"})";
  const std::string lsh = R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 2, "chunk_len": 4})";
  ModelConfig base = test::SmallConfig();
  base.n_layer = 2;
  auto fields = test::ConfigFields(base);
  fields.emplace_back("layers", absl::StrCat("[", dense, ", ", lsh, "]"));
  fields.emplace_back("layer_groups", "1");
  auto parsed = ParseModelConfig(test::RenderJsonObject(fields));
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("layer_groups"), std::string::npos);
  fields = test::ConfigFields(base);
  fields.emplace_back("d_embed", "8");
  for (auto& [k, v] : fields) {
    if (k == "tie_word_embeddings") v = "true";
  }
  parsed = ParseModelConfig(test::RenderJsonObject(fields));
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("d_embed"), std::string::npos);
}

// Feeds `tokens` in one call with token_by_token set, returning every position's logits.
std::vector<float> FeedTokenByToken(TransfoXlModel& model, SessionState& state,
                                    const std::vector<int32_t>& tokens) {
  SequenceInput in{tokens.data(), static_cast<int64_t>(tokens.size()), &state};
  in.token_by_token = true;
  Tensor logits;
  const absl::Status status = model.Forward({in}, LogitsMode::kAll, &logits);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return {};
  return std::vector<float>(logits.data<float>(), logits.data<float>() + logits.numel());
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], kTol * (1.0 + std::fabs(want[i]))) << "at " << i;
  }
}

// A token_by_token call of n tokens is n single-token calls: the same logits and the same state
// afterwards, for every layer kind (dense and compressive layers are the ones where a segment
// differs from single tokens), with either memory_init and same_length.
TEST(LongContextModelTest, TokenByTokenCallEqualsSingleTokenCalls) {
  std::vector<std::pair<std::string, std::vector<std::string>>> models = {
      {"dense", {R"({"attention": "dense"})", R"({"attention": "dense"})"}},
      {"dense + window + linear",
       {R"({"attention": "dense"})", R"({"attention": "sparse", "window": 4})",
        R"({"attention": "linear", "feature_map": "elu"})"}},
  };
  for (const std::string& e : CompressiveEntries()) models.push_back({e, {e, e}});
  for (const auto& [name, layers] : SplitFreeModels()) {
    if (name.find("realformer") == std::string::npos) models.push_back({name, layers});
  }
  for (const auto& [name, layers] : models) {
    for (const char* same_length : {"false", "true"}) {
      if (layers[0].find("compressive") != std::string::npos && same_length[0] == 't') continue;
      for (const char* init : {"\"empty\"", "\"zeros\""}) {
        SCOPED_TRACE(name + " same_length " + same_length + " " + init);
        const ModelConfig c =
            ConfigWith(layers, {{"memory_init", init}, {"same_length", same_length}}, 6);
        auto model = LoadModel(c, 5);
        ASSERT_NE(model, nullptr);
        SessionState single = *model->NewState();
        SessionState stepped = *model->NewState();
        const std::vector<int32_t> doc = RandomTokens(60, c.vocab_size, 8);
        // A prefix in segments, then 3..9 tokens at a time: one by one vs one call each.
        const std::vector<int32_t> prefix(doc.begin(), doc.begin() + 11);
        FeedInPieces(*model, single, prefix, {7, 4});
        FeedInPieces(*model, stepped, prefix, {7, 4});
        size_t pos = prefix.size();
        for (int64_t len : {3, 9, 1, 5, 8, 7, 5, 6, 5}) {
          const std::vector<int32_t> piece(doc.begin() + pos, doc.begin() + pos + len);
          const std::vector<float> want =
              FeedInPieces(*model, single, piece, std::vector<int64_t>(len, 1));
          ExpectClose(FeedTokenByToken(*model, stepped, piece), want);
          pos += len;
        }
        ASSERT_EQ(pos, doc.size());
        EXPECT_EQ(stepped.position(), single.position());
        // The states agree: a following segment gives the same logits.
        const std::vector<int32_t> more = RandomTokens(10, c.vocab_size, 9);
        ExpectClose(FeedInPieces(*model, stepped, more, {10}),
                    FeedInPieces(*model, single, more, {10}));
      }
    }
  }
}

// In one batch, a token_by_token sequence and a segment sequence each get what they get alone.
TEST(LongContextModelTest, TokenByTokenMixesWithSegmentsInOneBatch) {
  const ModelConfig c = ConfigWith({CompressiveEntries()[2], R"({"attention": "dense"})"}, {}, 5);
  auto model = LoadModel(c, 6);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> a = RandomTokens(9, c.vocab_size, 1);
  const std::vector<int32_t> b = RandomTokens(12, c.vocab_size, 2);
  SessionState sa = *model->NewState(), sb = *model->NewState();
  SessionState ra = *model->NewState(), rb = *model->NewState();
  const std::vector<int32_t> head_a(a.begin(), a.begin() + 4), next_a(a.begin() + 4, a.end());
  FeedInPieces(*model, sa, head_a, {4});
  FeedInPieces(*model, ra, head_a, {4});
  SequenceInput ia{next_a.data(), static_cast<int64_t>(next_a.size()), &sa};
  ia.token_by_token = true;
  SequenceInput ib{b.data(), static_cast<int64_t>(b.size()), &sb};
  Tensor logits;
  ASSERT_TRUE(model->Forward({ib, ia}, LogitsMode::kAll, &logits).ok());
  const std::vector<float> want_b = FeedInPieces(*model, rb, b, {12});
  const std::vector<float> want_a =
      FeedInPieces(*model, ra, next_a, std::vector<int64_t>(next_a.size(), 1));
  const float* got = logits.data<float>();
  ExpectClose(std::vector<float>(got, got + want_b.size()), want_b);
  ExpectClose(std::vector<float>(got + want_b.size(), got + logits.numel()), want_a);
}

TEST(LongContextModelTest, TokenByTokenIsRefusedForResidualAttention) {
  const ModelConfig c = ConfigWith(
      {R"({"attention": "dense"})", R"({"attention": "dense", "residual_attention": true})"});
  auto model = LoadModel(c, 2);
  ASSERT_NE(model, nullptr);
  SessionState s = *model->NewState();
  const std::vector<int32_t> t = RandomTokens(4, c.vocab_size, 3);
  SequenceInput in{t.data(), 4, &s};
  in.token_by_token = true;
  Tensor logits;
  const absl::Status status = model->Forward({in}, LogitsMode::kLast, &logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("residual_attention"), std::string::npos);
  EXPECT_EQ(s.position(), 0);
}

}  // namespace
}  // namespace mnemo::engine
