// engine/api/encoder and engine/encoder/encoder_config: the window plan of long documents (one
// pass when it fits; windows every ⌊window/2⌋ tokens, the last ending at the end; every token
// kept once, from the window where it is farthest from an edge, the earlier on a tie), and the
// encoder config's validation (each bad field named; decoder parsing names an encoder as one),
// and on a small random Longformer checkpoint: windows of several documents sharing one pass
// (EncodeBatch) give what each window gives alone, and the Pooler folds windows as Encode does.
#include "engine/api/encoder.h"

#include <algorithm>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "engine/encoder/encoder_config.h"
#include "engine/model/model_config.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine::api {
namespace {

TEST(PlanEncodeWindowsTest, OnePassWhenTheDocumentFits) {
  const std::vector<EncodeWindow> plan = PlanEncodeWindows(10, 10);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].begin, 0);
  EXPECT_EQ(plan[0].length, 10);
  EXPECT_EQ(plan[0].keep_begin, 0);
  EXPECT_EQ(plan[0].keep_end, 10);
}

TEST(PlanEncodeWindowsTest, EveryTokenFromTheWindowWhereItIsFarthestFromAnEdge) {
  for (int64_t window : {2, 3, 7, 8, 16}) {
    for (int64_t n = 1; n <= 70; ++n) {
      SCOPED_TRACE(testing::Message() << "n " << n << " window " << window);
      const std::vector<EncodeWindow> plan = PlanEncodeWindows(n, window);
      int64_t next = 0;  // the kept ranges tile [0, n) in order
      for (size_t k = 0; k < plan.size(); ++k) {
        const EncodeWindow& w = plan[k];
        EXPECT_EQ(w.length, std::min(n, window));
        EXPECT_GE(w.begin, 0);
        EXPECT_LE(w.begin + w.length, n);
        EXPECT_EQ(w.keep_begin, next);
        EXPECT_LT(w.keep_begin, w.keep_end);
        EXPECT_GE(w.keep_begin, w.begin);
        EXPECT_LE(w.keep_end, w.begin + w.length);
        next = w.keep_end;
      }
      EXPECT_EQ(next, n);
      if (n <= window) continue;
      // The definition, token by token, over every start the rule names.
      std::vector<int64_t> starts;
      for (int64_t b = 0; b + window < n; b += std::max<int64_t>(1, window / 2)) {
        starts.push_back(b);
      }
      starts.push_back(n - window);
      for (int64_t t = 0; t < n; ++t) {
        int64_t best = -1, room = -1;
        for (int64_t b : starts) {
          if (b > t || t >= b + window) continue;
          const int64_t r = std::min(t - b, b + window - 1 - t);
          if (r > room) room = r, best = b;  // the earlier window keeps a tie
        }
        const auto owner = std::find_if(plan.begin(), plan.end(), [&](const EncodeWindow& w) {
          return w.keep_begin <= t && t < w.keep_end;
        });
        ASSERT_NE(owner, plan.end());
        EXPECT_EQ(owner->begin, best) << "token " << t;
      }
    }
  }
}

TEST(EncoderConfigTest, ParsesAndNamesEveryBadField) {
  const std::string good = R"({"architecture": "longformer", "vocab_size": 60, "d_model": 32,
      "n_layer": 2, "n_head": 4, "d_head": 8, "d_inner": 64, "activation": "gelu",
      "layer_norm_epsilon": 1e-5, "pad_token_id": 1, "position_rows": 80, "type_vocab_size": 1,
      "attention_window": [4, 8], "torch_dtype": "float32"})";
  auto c = ParseEncoderConfig(good);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->one_sided_window, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c->max_tokens(), 78);
  EXPECT_TRUE(IsEncoderArchitecture("longformer"));
  EXPECT_FALSE(IsEncoderArchitecture("transfo_xl"));
  const auto with = [&](const std::string& field, const std::string& value) {
    std::string text = good;
    const size_t at = text.find("\"" + field + "\": ");
    if (at == std::string::npos)
      return text.substr(0, text.size() - 1) + ", \"" + field + "\": " + value + "}";
    const size_t begin = at + field.size() + 4;
    size_t end = begin;
    int depth = 0;
    while (depth > 0 || (text[end] != ',' && text[end] != '}')) {
      depth += text[end] == '[' ? 1 : text[end] == ']' ? -1 : 0;
      ++end;
    }
    return text.substr(0, begin) + value + text.substr(end);
  };
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"d_head", "7"},                 // n_head · d_head ≠ d_model
           {"attention_window", "[4]"},     // one per layer
           {"attention_window", "[4, 5]"},  // even
           {"attention_window", "[0, 4]"},  //
           {"pad_token_id", "60"},          // in the vocabulary
           {"position_rows", "2"},          // past the padding offset
           {"activation", "\"tanh\""},      //
           {"torch_dtype", "\"int32\""},    //
           {"layer_norm_epsilon", "0"},     //
           {"mlm_head", "1"},               // a boolean
           {"pooler", "true"},              // unknown
       }) {
    auto bad = ParseEncoderConfig(with(field, value));
    ASSERT_FALSE(bad.ok()) << field << " = " << value;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(bad.status().message());
    EXPECT_TRUE(message.find(field) != std::string::npos ||
                (field == "d_head" && message.find("n_head") != std::string::npos))
        << field << ": " << message;
  }
  // Nyströmformer: its own fields instead of attention_window, each checked.
  const std::string nystrom = R"({"architecture": "nystromformer", "vocab_size": 60,
      "d_model": 32, "n_layer": 2, "n_head": 4, "d_head": 8, "d_inner": 64, "activation":
      "gelu_tanh", "layer_norm_epsilon": 1e-5, "pad_token_id": 1, "position_rows": 66,
      "type_vocab_size": 2, "segment_len": 64, "num_landmarks": 8, "conv_kernel_size": 5,
      "torch_dtype": "float32"})";
  auto n = ParseEncoderConfig(nystrom);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_TRUE(n->nystromformer());
  EXPECT_EQ(n->max_tokens(), 64);
  EXPECT_TRUE(IsEncoderArchitecture("nystromformer"));
  for (const auto& [from, to, field] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"\"num_landmarks\": 8", "\"num_landmarks\": 7", "num_landmarks"},  // divides 64
           {"\"conv_kernel_size\": 5", "\"conv_kernel_size\": 4", "conv_kernel_size"},  // odd
           {"\"segment_len\": 64", "\"segment_len\": 65", "segment_len"},  // the table's rows
           {"\"torch_dtype\"", "\"mlm_head\": true, \"torch_dtype\"", "mlm_head"},
           {"\"torch_dtype\"", "\"attention_window\": [4, 4], \"torch_dtype\"",
            "attention_window"},  // Longformer's
       }) {
    std::string text = nystrom;
    text.replace(text.find(from), from.size(), to);
    auto bad = ParseEncoderConfig(text);
    ASSERT_FALSE(bad.ok()) << to;
    EXPECT_NE(bad.status().message().find(field), std::string::npos) << bad.status();
  }
  // Linformer and Synthesizer: a pass of segment_len positions at most, their own fields.
  const std::string linformer = R"({"architecture": "linformer", "vocab_size": 60, "d_model": 32,
      "n_layer": 2, "n_head": 4, "d_head": 8, "d_inner": 64, "pad_token_id": 1,
      "position_rows": 24, "segment_len": 24, "linformer_k": 6, "torch_dtype": "float32"})";
  auto lin = ParseEncoderConfig(linformer);
  ASSERT_TRUE(lin.ok()) << lin.status();
  EXPECT_TRUE(lin->linformer() && lin->fixed_length());
  EXPECT_EQ(lin->max_tokens(), 24);
  std::string synth = linformer;
  synth.replace(synth.find("\"linformer\""), 11, "\"synthesizer\"");
  synth.replace(synth.find("\"linformer_k\": 6"), 16, "\"synthesizer\": \"random\"");
  auto syn = ParseEncoderConfig(synth);
  ASSERT_TRUE(syn.ok()) << syn.status() << synth;
  EXPECT_TRUE(syn->synthesized());
  EXPECT_EQ(syn->synthesizer, "random");
  synth.replace(synth.find("\"random\""), 8, "\"mixed\"");
  EXPECT_FALSE(ParseEncoderConfig(synth).ok());
  // BigBird: full or block-sparse attention, its block fields checked.
  const std::string bigbird = R"({"architecture": "bigbird", "vocab_size": 60, "d_model": 32,
      "n_layer": 2, "n_head": 4, "d_head": 8, "d_inner": 64, "pad_token_id": 0,
      "position_rows": 1100, "attention_type": "block_sparse", "block_size": 64,
      "num_random_blocks": 3, "torch_dtype": "float32"})";
  auto bb = ParseEncoderConfig(bigbird);
  ASSERT_TRUE(bb.ok()) << bb.status();
  EXPECT_TRUE(bb->bigbird() && bb->block_sparse && !bb->fixed_length());
  EXPECT_EQ(bb->max_tokens(), 1088);  // whole blocks of the table
  EXPECT_EQ(bb->pass_rows(705), 768);
  EXPECT_EQ(bb->pass_rows(704), 704);  // (5 + 2·3) blocks: full attention
  EXPECT_TRUE(IsEncoderArchitecture("bigbird"));
  for (const auto& [from, to, field] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"\"block_sparse\"", "\"sliding\"", "attention_type"},
           {"\"block_size\": 64", "\"block_size\": 0", "block_size"},
           {"\"num_random_blocks\": 3", "\"num_random_blocks\": 0", "num_random_blocks"},
           {"\"num_random_blocks\": 3", "\"num_random_blocks\": 65", "num_random_blocks"},
           {"\"position_rows\": 1100", "\"position_rows\": 300000", "block_size"},  // 4096 blocks
           {"\"torch_dtype\"", "\"mlm_activation\": \"gelu\", \"torch_dtype\"",
            "mlm_activation"},  // without the head
           {"\"torch_dtype\"", "\"mlm_head\": true, \"mlm_activation\": \"tanh\", \"torch_dtype\"",
            "mlm_activation"},
       }) {
    std::string text = bigbird;
    text.replace(text.find(from), from.size(), to);
    auto bad = ParseEncoderConfig(text);
    ASSERT_FALSE(bad.ok()) << to;
    EXPECT_NE(bad.status().message().find(field), std::string::npos) << bad.status();
  }
  std::string full = bigbird;
  full.replace(full.find("\"block_sparse\""), 14, "\"original_full\"");
  full.replace(full.find("\"num_random_blocks\": 3"), 22, "\"num_random_blocks\": 0");
  auto fb = ParseEncoderConfig(full);
  ASSERT_TRUE(fb.ok()) << fb.status();
  EXPECT_EQ(fb->max_tokens(), 1100);
  EXPECT_EQ(fb->pass_rows(1000), 1000);
  // Funnel: blocks, pooling and heads of any width, each field checked.
  const std::string funnel = R"({"architecture": "funnel", "vocab_size": 60, "d_model": 32,
      "n_layer": 4, "n_head": 3, "d_head": 10, "d_inner": 64, "pad_token_id": 0,
      "position_rows": 512, "block_sizes": [2, 1, 1], "block_repeats": [1, 1, 1],
      "decoder_layers": 2, "pooling": "mean", "segment_len": 512, "torch_dtype": "float32"})";
  auto fn = ParseEncoderConfig(funnel);
  ASSERT_TRUE(fn.ok()) << fn.status();
  EXPECT_TRUE(fn->funnel() && fn->fixed_length() && fn->separate_cls && fn->truncate_seq);
  EXPECT_EQ(fn->attn_width(), 30);
  EXPECT_EQ(fn->min_tokens(), 5);
  for (const auto& [from, to, field] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"\"n_layer\": 4", "\"n_layer\": 5", "block_sizes"},  // their sum
           {"\"block_repeats\": [1, 1, 1]", "\"block_repeats\": [1]", "block_repeats"},
           {"\"d_model\": 32", "\"d_model\": 33", "even"},                 // the sinusoid
           {"\"mean\"", "\"min\"", "pooling"},                             //
           {"\"segment_len\": 512", "\"segment_len\": 4", "segment_len"},  // pools at every block
           {"\"decoder_layers\": 2", "\"decoder_layers\": -1", "decoder_layers"},
           {"\"decoder_layers\": 2", "\"decoder_layers\": 0, \"mlm_head\": true",
            "mlm_head"},  // the head reads the decoder's output
           {"\"torch_dtype\"", "\"mlm_head\": true, \"mlm_activation\": \"gelu\", \"torch_dtype\"",
            "mlm_activation"},  // no transform
       }) {
    std::string text = funnel;
    text.replace(text.find(from), from.size(), to);
    auto bad = ParseEncoderConfig(text);
    ASSERT_FALSE(bad.ok()) << to;
    EXPECT_NE(bad.status().message().find(field), std::string::npos) << bad.status();
  }
  // The decoders' parser names an encoder as one instead of listing its fields as unknown.
  auto decoder = ParseModelConfig(good);
  ASSERT_FALSE(decoder.ok());
  EXPECT_NE(decoder.status().message().find("encoder"), std::string::npos) << decoder.status();
}

std::vector<float> Values(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

// Every window of `batch` in one pass gets what it gets alone.
void ExpectSharedPassEqualsAlone(const Encoder& encoder,
                                 const std::vector<EncoderSequence>& batch) {
  auto together = encoder.EncodeBatch(batch);
  ASSERT_TRUE(together.ok()) << together.status();
  ASSERT_EQ(together->size(), batch.size());
  for (size_t k = 0; k < batch.size(); ++k) {
    auto alone = encoder.EncodeBatch(std::span(&batch[k], 1));
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*together)[k].hidden.shape(), (*alone)[0].hidden.shape());
    EXPECT_EQ((*together)[k].hidden.dim(0), static_cast<int64_t>(batch[k].ids.size()));
    EXPECT_TRUE(test::NearRelative(Values((*together)[k].hidden), Values((*alone)[0].hidden), 1e-5))
        << "window " << k;
    EXPECT_EQ((*together)[k].pooled.defined(), (*alone)[0].pooled.defined());
    if ((*alone)[0].pooled.defined()) {  // Funnel's pooled sequence too
      EXPECT_TRUE(
          test::NearRelative(Values((*together)[k].pooled), Values((*alone)[0].pooled), 1e-5))
          << "window " << k;
    }
  }
}

TEST(EncoderTest, WindowsSharingAPassEncodeAsTheyWouldAlone) {
  const test::ScopedTempDir dir = test::WriteRandomLongformer(3);
  auto encoder = Encoder::Load(dir.path());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<int32_t> a = test::RandomTokens(30, 40, 1);
  const std::vector<int32_t> b = test::RandomTokens(7, 40, 2);
  const std::vector<int32_t> c = test::RandomTokens(19, 40, 3);
  // Globals in some windows only (the pass computes global projections for every row then).
  ExpectSharedPassEqualsAlone(**encoder, {{a, {0, 17, 29}, {}}, {b, {}, {}}, {c, {4}, {}}});
  // One bad window fails the pass, naming it; nothing is returned for the others.
  const std::vector<int32_t> bad{3, 40};
  const std::vector<EncoderSequence> with_bad{{a, {}, {}}, {bad, {}, {}}};
  auto refused = (*encoder)->EncodeBatch(with_bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("window 1"), std::string::npos) << refused.status();
}

TEST(EncoderTest, BigBirdPassesPadToBlocksAndShareAPass) {
  const test::ScopedTempDir dir = test::WriteRandomBigBird(5);
  auto encoder = Encoder::Load(dir.path());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const EncoderConfig& c = (*encoder)->config();
  EXPECT_EQ(c.max_tokens(), 64);    // 66 positions hold 16 whole blocks of 4
  EXPECT_FALSE(c.sparse_pass(28));  // (5 + 2·1) blocks of 4: full attention, as Hugging Face
  EXPECT_EQ(c.pass_rows(28), 28);
  EXPECT_TRUE(c.sparse_pass(29));
  EXPECT_EQ(c.pass_rows(29), 32);
  // Full, padded block-sparse, whole-block and longest windows in one pass.
  ExpectSharedPassEqualsAlone(**encoder, {{test::RandomTokens(10, 40, 1), {}, {}},
                                          {test::RandomTokens(29, 40, 2), {}, {}},
                                          {test::RandomTokens(48, 40, 3), {}, {}},
                                          {test::RandomTokens(64, 40, 4), {}, {}},
                                          {test::RandomTokens(45, 40, 5), {}, {}}});
  const std::vector<int32_t> ids = test::RandomTokens(29, 40, 6);
  // Global positions are Longformer's.
  auto global = (*encoder)->EncodeBatch(std::vector<EncoderSequence>{{ids, {0}, {}}});
  ASSERT_FALSE(global.ok());
  EXPECT_NE(global.status().message().find("Longformer"), std::string::npos) << global.status();
}

TEST(EncoderTest, FunnelWindowsShareAPassAndPoolAsTheyWouldAlone) {
  const test::ScopedTempDir dir = test::WriteRandomFunnel(6);
  auto encoder = Encoder::Load(dir.path());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const EncoderConfig& c = (*encoder)->config();
  EXPECT_EQ(c.min_tokens(), 5);  // 5 → 3 → 2: both poolings see more than the first and one
  EXPECT_EQ((*encoder)->min_window(), 5);
  EXPECT_EQ(c.PooledLength(5), 3);
  const std::vector<int32_t> a = test::RandomTokens(5, 40, 1), b = test::RandomTokens(64, 40, 2),
                             d = test::RandomTokens(17, 40, 3);
  const std::vector<EncoderSequence> batch{{a, {}, {}}, {b, {}, {}}, {d, {}, {}}};
  ExpectSharedPassEqualsAlone(**encoder, batch);
  auto together = (*encoder)->EncodeBatch(batch);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t k = 0; k < batch.size(); ++k) {  // pooled rows: 5 → 2, 64 → 16, 17 → 5
    const auto n = static_cast<int64_t>(batch[k].ids.size());
    EXPECT_EQ((*together)[k].pooled.dim(0), c.PooledLength(c.PooledLength(n)));
  }
  // Too short to pool at every block: refused, naming the need.
  const std::vector<EncoderSequence> short_pass{{test::RandomTokens(4, 40, 4), {}, {}}};
  auto refused = (*encoder)->EncodeBatch(short_pass);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("at least 5"), std::string::npos) << refused.status();
  // The pooled sequence through Encode: one pass only.
  EncodeOptions funnel;
  funnel.pooling = Pooling::kFunnel;
  const std::vector<int32_t> doc = test::RandomTokens(40, 40, 5);
  auto pooled = (*encoder)->Encode(doc, funnel);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  EXPECT_EQ(pooled->vectors.dim(0), 10);
  funnel.window_tokens = 20;
  EXPECT_EQ((*encoder)->Encode(doc, funnel).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EncoderTest, PoolerFoldsWindowsAsEncodeDoes) {
  const test::ScopedTempDir dir = test::WriteRandomLongformer(4);
  auto encoder = Encoder::Load(dir.path());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<int32_t> ids = test::RandomTokens(50, 40, 5);
  EncodeOptions options;
  options.window_tokens = 12;
  options.global_positions = {0, 13, 49};
  auto per_token = (*encoder)->Encode(ids, options);
  ASSERT_TRUE(per_token.ok()) << per_token.status();
  ASSERT_EQ(per_token->vectors.shape(), (std::vector<int64_t>{50, 16}));
  auto windows = (*encoder)->Plan(50, options);
  ASSERT_TRUE(windows.ok()) << windows.status();
  ASSERT_GT(windows->size(), 3u);
  for (Pooling pooling : {Pooling::kMean, Pooling::kFirst}) {
    options.pooling = pooling;
    auto pooled = (*encoder)->Encode(ids, options);
    ASSERT_TRUE(pooled.ok()) << pooled.status();
    // The windows Encode runs for this pooling, in the one pass it gives them (50 tokens fit).
    auto plan = (*encoder)->Plan(50, options);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->size(), pooling == Pooling::kFirst ? 1u : windows->size());
    std::vector<EncoderSequence> group;
    for (const EncodeWindow& w : *plan) group.push_back(WindowSequence(ids, w, options));
    auto h = (*encoder)->EncodeBatch(group);
    ASSERT_TRUE(h.ok()) << h.status();
    Pooler pooler(pooling, 50, 16);
    for (size_t k = 0; k < plan->size(); ++k) pooler.Add((*plan)[k], (*h)[k].hidden);
    const std::vector<float> folded = Values(pooler.Finish());
    EXPECT_EQ(folded, Values(pooled->vectors));
    // The definition from the per-token vectors.
    std::vector<float> expected(16, 0.0f);
    const std::vector<float> rows = Values(per_token->vectors);
    for (int64_t t = 0; t < (pooling == Pooling::kFirst ? 1 : 50); ++t) {
      for (int e = 0; e < 16; ++e) expected[e] += rows[t * 16 + e];
    }
    if (pooling == Pooling::kMean) {
      for (float& v : expected) v /= 50.0f;
    }
    EXPECT_TRUE(test::NearRelative(folded, expected, 1e-5));
  }
  // Plan's refusals.
  EXPECT_EQ((*encoder)->Plan(0, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EncodeOptions wide;
  wide.window_tokens = 31;  // the position table holds 30
  EXPECT_EQ((*encoder)->Plan(40, wide).status().code(), absl::StatusCode::kInvalidArgument);
  EncodeOptions unordered;
  unordered.global_positions = {5, 5};
  EXPECT_EQ((*encoder)->Plan(40, unordered).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mnemo::engine::api
