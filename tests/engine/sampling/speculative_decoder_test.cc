// Speculative decoding (engine/sampling/speculative_decoder.h): greedy output is exactly the
// target's own greedy decode and its memory ends exactly where the target's does, whether the
// draft agrees always, never or sometimes; sampled tokens follow the target's distribution
// (chi-square against the exact marginals, with a check that the test can tell the draft's
// distribution apart); bad set-ups are refused.
#include "engine/sampling/speculative_decoder.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/transfo_xl_model.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

using test::ConfigWith;
using test::LoadModel;
using test::RandomTokens;

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// A state holding `prompt` except its last token, fed as one segment.
SessionState Prefilled(TransfoXlModel& model, const std::vector<int32_t>& prompt) {
  SessionState state = *model.NewState();
  if (prompt.size() > 1) {
    Tensor none;
    EXPECT_TRUE(model
                    .Forward({SequenceInput{prompt.data(), static_cast<int64_t>(prompt.size()) - 1,
                                            &state}},
                             LogitsMode::kNone, &none)
                    .ok());
  }
  return state;
}

// `n` tokens decoded one at a time by `model` alone.
std::vector<SampledToken> PlainDecode(TransfoXlModel& model, SessionState& state,
                                      std::vector<int32_t> history, const SamplingParams& params,
                                      int64_t n) {
  Sampler sampler(params);
  std::vector<SampledToken> out;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t next = history.back();
    Tensor logits;
    EXPECT_TRUE(model.Forward({SequenceInput{&next, 1, &state}}, LogitsMode::kLast, &logits).ok());
    out.push_back(sampler.Sample(logits.data<float>(), model.config().vocab_size, history));
    history.push_back(out.back().id);
  }
  return out;
}

std::vector<float> LogitsOf(TransfoXlModel& model, SessionState& state,
                            const std::vector<int32_t>& tokens) {
  Tensor logits;
  EXPECT_TRUE(
      model
          .Forward({SequenceInput{tokens.data(), static_cast<int64_t>(tokens.size()), &state}},
                   LogitsMode::kAll, &logits)
          .ok());
  return std::vector<float>(logits.data<float>(), logits.data<float>() + logits.numel());
}

// The weights of RandomWeights(config, seed) plus `mix` times those of RandomWeights(config,
// other): a model that agrees with the first one only part of the time.
std::unique_ptr<TransfoXlModel> PerturbedModel(const ModelConfig& config, uint32_t seed,
                                               uint32_t other, float mix) {
  std::vector<test::RawTensor> tensors = test::RandomWeights(config, seed);
  const std::vector<test::RawTensor> noise = test::RandomWeights(config, other);
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (tensors[t].dtype != "F32") continue;
    std::vector<float> a(tensors[t].bytes.size() / sizeof(float)), b(a.size());
    std::memcpy(a.data(), tensors[t].bytes.data(), tensors[t].bytes.size());
    std::memcpy(b.data(), noise[t].bytes.data(), noise[t].bytes.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] += mix * b[i];
    tensors[t].bytes = test::FloatBytes(a, DType::kF32);
  }
  test::ScopedTempDir dir = test::WriteCheckpointFiles(test::ConfigJson(config), tensors);
  auto model = TransfoXlModel::Load(dir.path());
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

const std::vector<std::pair<std::string, std::vector<std::string>>>& TargetModels() {
  static const auto* models = new std::vector<std::pair<std::string, std::vector<std::string>>>{
      {"dense", {R"({"attention": "dense"})", R"({"attention": "dense"})"}},
      {"compressive",
       {R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
            "compression_rate": 2, "cmem_len": 3})",
        R"({"attention": "dense", "memory": "compressive", "compression": "most_used",
            "compression_rate": 3, "cmem_len": 2})"}},
      {"mixed",
       {R"({"attention": "sparse", "window": 3, "global_positions": [1]})",
        R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4, "history": 12})",
        R"({"attention": "linear", "feature_map": "elu"})",
        R"({"attention": "dense", "memory": "compressive", "compression": "max_pool",
            "compression_rate": 2, "cmem_len": 2})"}},
  };
  return *models;
}

// Greedy: tokens, log-probabilities and the target's memory equal the target decoding alone, with
// a draft that always agrees (the target itself), one that rarely does (other weights) and one
// that sometimes does (the target's weights plus noise).
TEST(SpeculativeDecoderTest, GreedyEqualsTheTargetAlone) {
  for (const auto& [name, layers] : TargetModels()) {
    const ModelConfig tc = ConfigWith(layers, {{"memory_init", "\"zeros\""}}, 6);
    auto target = LoadModel(tc, 11);
    ASSERT_NE(target, nullptr);
    std::vector<std::pair<std::string, std::unique_ptr<TransfoXlModel>>> drafts;
    drafts.emplace_back("other weights", LoadModel(tc, 12));
    drafts.emplace_back("perturbed", PerturbedModel(tc, 11, 12, 0.5f));
    drafts.emplace_back("itself", nullptr);
    for (auto& [draft_name, draft_model] : drafts) {
      TransfoXlModel& draft = draft_model ? *draft_model : *target;
      for (int k : {1, 3, 6}) {
        SCOPED_TRACE(name + ", draft " + draft_name + ", k " + std::to_string(k));
        const std::vector<int32_t> prompt = RandomTokens(9, tc.vocab_size, 4);
        SessionState ts = Prefilled(*target, prompt), ds = Prefilled(draft, prompt);
        auto decoder = SpeculativeDecoder::Create(*target, &ts, draft, &ds, Greedy(), k, prompt);
        ASSERT_TRUE(decoder.ok()) << decoder.status();
        std::vector<SampledToken> got;
        while (got.size() < 70) {
          auto more = decoder->Next();
          ASSERT_TRUE(more.ok()) << more.status();
          ASSERT_GE(more->size(), 1u);
          ASSERT_LE(more->size(), static_cast<size_t>(k + 1));
          got.insert(got.end(), more->begin(), more->end());
        }
        SessionState alone = Prefilled(*target, prompt);
        const std::vector<SampledToken> want =
            PlainDecode(*target, alone, prompt, Greedy(), static_cast<int64_t>(got.size()));
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(got[i].id, want[i].id) << "token " << i;
          ASSERT_NEAR(got[i].logprob, want[i].logprob, 1e-4) << "token " << i;
        }
        const SpeculativeStats& st = decoder->stats();
        EXPECT_EQ(st.emitted, static_cast<int64_t>(got.size()));
        EXPECT_EQ(st.emitted, st.accepted + st.cycles);
        if (draft_name == "itself") {
          EXPECT_EQ(st.accepted, st.drafted);
        }
        if (draft_name == "perturbed") {  // both paths taken
          EXPECT_GT(st.accepted, 0);
          EXPECT_LT(st.accepted, st.drafted);
        }
        // Settled, both targets hold the same document: the same logits for what follows.
        ASSERT_TRUE(decoder->Settle().ok());
        std::vector<int32_t> next = {decoder->history().back()};
        const std::vector<int32_t> extra = RandomTokens(5, tc.vocab_size, 5);
        next.insert(next.end(), extra.begin(), extra.end());
        const std::vector<float> a = LogitsOf(*target, ts, next),
                                 b = LogitsOf(*target, alone, next);
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(b[i])));
      }
    }
  }
}

// Rewind keeps a prefix of a pass as if the rest had never been produced (a stop string or a
// length limit inside a pass): the kept tokens are still the target's greedy decode, and after
// Settle the target's memory holds exactly them. Next(max_tokens) caps the proposals.
TEST(SpeculativeDecoderTest, RewindKeepsAPrefixAndTheMemoryFollows) {
  int64_t rejected_then_rewound = 0;  // passes with a rejection and a rewind, over all cases
  for (const auto& [name, layers] : TargetModels()) {
    SCOPED_TRACE(name);
    const ModelConfig tc = ConfigWith(layers, {{"memory_init", "\"zeros\""}}, 6);
    auto target = LoadModel(tc, 11);
    ASSERT_NE(target, nullptr);
    // A draft that always agrees (rewinds inside fully accepted passes) and one that sometimes
    // does (rewinds after a rejection).
    for (auto draft : {std::shared_ptr<TransfoXlModel>(target.get(), [](TransfoXlModel*) {}),
                       std::shared_ptr<TransfoXlModel>(PerturbedModel(tc, 11, 12, 0.1f))}) {
      ASSERT_NE(draft, nullptr);
      SCOPED_TRACE(draft.get() == target.get() ? "draft: the target" : "draft: perturbed");
      const std::vector<int32_t> prompt = RandomTokens(9, tc.vocab_size, 4);
      SessionState ts = Prefilled(*target, prompt), ds = Prefilled(*draft, prompt);
      // The general form: no penalty history, the last token given apart.
      auto decoder = SpeculativeDecoder::Create({target.get(), &ts, {}}, {draft.get(), &ds, {}},
                                                Greedy(), 4, {}, prompt.back());
      ASSERT_TRUE(decoder.ok()) << decoder.status();
      std::vector<int32_t> got;
      int rewinds = 0;
      for (int pass = 0; got.size() < 60; ++pass) {
        const int64_t cap = 1 + pass % 4;
        auto more = decoder->Next(cap);
        ASSERT_TRUE(more.ok()) << more.status();
        ASSERT_LE(static_cast<int64_t>(more->size()), std::max<int64_t>(cap, 2));
        const int64_t keep = 1 + pass % static_cast<int64_t>(more->size());
        ASSERT_TRUE(decoder->Rewind(keep).ok());
        rewinds += keep < static_cast<int64_t>(more->size());
        const int64_t proposed = std::clamp<int64_t>(cap - 1, 1, 4);
        rejected_then_rewound += static_cast<int64_t>(more->size()) < proposed + 1 &&
                                 keep < static_cast<int64_t>(more->size());
        for (int64_t i = 0; i < keep; ++i) got.push_back((*more)[static_cast<size_t>(i)].id);
        ASSERT_EQ(decoder->last(), got.back());
        ASSERT_EQ(decoder->history(), got);
      }
      if (draft.get() == target.get()) {
        EXPECT_GT(rewinds, 2);
      }
      EXPECT_EQ(decoder->stats().emitted, static_cast<int64_t>(got.size()));
      EXPECT_EQ(decoder->Rewind(1).code(), absl::StatusCode::kFailedPrecondition);
      SessionState alone = Prefilled(*target, prompt);
      const std::vector<SampledToken> want =
          PlainDecode(*target, alone, prompt, Greedy(), static_cast<int64_t>(got.size()));
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i].id) << "token " << i;
      ASSERT_TRUE(decoder->Settle().ok());
      std::vector<int32_t> next = {decoder->last()};
      const std::vector<int32_t> extra = RandomTokens(5, tc.vocab_size, 5);
      next.insert(next.end(), extra.begin(), extra.end());
      const std::vector<float> a = LogitsOf(*target, ts, next), b = LogitsOf(*target, alone, next);
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(b[i])));
      // The draft's memory, too, holds the kept document: it predicts what a fresh draft does.
      SessionState fresh = Prefilled(*draft, prompt);
      std::vector<int32_t> doc = {prompt.back()};
      doc.insert(doc.end(), got.begin(), got.end() - 1);
      for (int32_t t : doc) LogitsOf(*draft, fresh, {t});  // as decode steps fed it
      const std::vector<float> c = LogitsOf(*draft, ds, next), d = LogitsOf(*draft, fresh, next);
      for (size_t i = 0; i < c.size(); ++i) ASSERT_NEAR(c[i], d[i], 1e-4 * (1 + std::fabs(d[i])));
    }
  }
  EXPECT_GT(rejected_then_rewound, 0) << "no pass both rejected a proposal and was rewound";
}

// CopyStateInto reuses the destination's buffers and copies exactly.
TEST(SpeculativeDecoderTest, CopyStateIntoReusesBuffers) {
  const ModelConfig tc = ConfigWith(TargetModels()[2].second, {{"memory_init", "\"zeros\""}}, 6);
  auto model = LoadModel(tc, 11);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> prompt = RandomTokens(17, tc.vocab_size, 4);
  SessionState a = Prefilled(*model, prompt);
  SessionState copy;
  ASSERT_TRUE(model->CopyStateInto(a, &copy).ok());
  const void* keys = test::Ring(copy, 3).keys().data<float>();
  ASSERT_TRUE(model->CopyStateInto(a, &copy).ok());
  EXPECT_EQ(test::Ring(copy, 3).keys().data<float>(), keys);
  EXPECT_EQ(copy.bytes(), a.bytes());
  EXPECT_EQ(copy.position(), a.position());
  const std::vector<int32_t> next = RandomTokens(4, tc.vocab_size, 6);
  const std::vector<float> x = LogitsOf(*model, a, next), y = LogitsOf(*model, copy, next);
  EXPECT_EQ(x, y);
}

// Chi-square statistic of `counts` against probabilities `p` (cells expected < 5 pooled), with
// its degrees of freedom.
std::pair<double, int> ChiSquare(const std::vector<int>& counts, const std::vector<double>& p,
                                 int n) {
  double stat = 0.0, pooled_expected = 0.0;
  int pooled_count = 0, cells = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = p[i] * n;
    if (e < 5.0) {
      pooled_expected += e;
      pooled_count += counts[i];
      continue;
    }
    stat += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  if (pooled_expected > 0.0) {
    stat += (pooled_count - pooled_expected) * (pooled_count - pooled_expected) /
            std::max(pooled_expected, 1e-9);
    ++cells;
  }
  return {stat, cells - 1};
}

// The chi-square value exceeded with probability ~1e-6 (Wilson–Hilferty).
double Critical(int df) {
  const double z = 4.75, a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

// Sampling: the first three generated tokens follow the target's exact marginals, computed by
// enumerating the target's own distributions; measured against the draft's marginal instead, the
// same samples fail (the test has the power to see a wrong distribution).
TEST(SpeculativeDecoderTest, SampledTokensFollowTheTargetDistribution) {
  const ModelConfig tc = ConfigWith(TargetModels()[1].second, {}, 6);
  auto target = LoadModel(tc, 21);
  auto draft = LoadModel(ConfigWith({R"({"attention": "dense"})"}, {}, 3), 22);
  ASSERT_NE(target, nullptr);
  ASSERT_NE(draft, nullptr);
  const int64_t v = tc.vocab_size;
  const std::vector<int32_t> prompt = RandomTokens(6, v, 7);
  SamplingParams params;
  params.temperature = 0.25f;
  params.top_k = 12;
  params.repetition_penalty = 1.5f;

  // Exact marginals of tokens 1 … 3 under the target's sampling distribution, and token 1 under
  // the draft's.
  Sampler exact(params);
  std::vector<std::vector<double>> marginal(3, std::vector<double>(v, 0.0));
  std::vector<double> draft_first;
  {
    SessionState ds = Prefilled(*draft, prompt);
    const std::vector<float> logits = LogitsOf(*draft, ds, {prompt.back()});
    exact.Distribution(logits.data(), v, prompt, draft_first);
  }
  SessionState base = Prefilled(*target, prompt);
  std::vector<double> p1, p2, p3;
  SessionState s1 = *target->CloneState(base);
  exact.Distribution(LogitsOf(*target, s1, {prompt.back()}).data(), v, prompt, p1);
  for (int32_t a = 0; a < v; ++a) {
    if (p1[a] == 0.0) continue;
    marginal[0][a] += p1[a];
    SessionState s2 = *target->CloneState(s1);
    std::vector<int32_t> h2 = prompt;
    h2.push_back(a);
    exact.Distribution(LogitsOf(*target, s2, {a}).data(), v, h2, p2);
    for (int32_t b = 0; b < v; ++b) {
      if (p2[b] == 0.0) continue;
      marginal[1][b] += p1[a] * p2[b];
      SessionState s3 = *target->CloneState(s2);
      std::vector<int32_t> h3 = h2;
      h3.push_back(b);
      exact.Distribution(LogitsOf(*target, s3, {b}).data(), v, h3, p3);
      for (int32_t c = 0; c < v; ++c) marginal[2][c] += p1[a] * p2[b] * p3[c];
    }
  }

  constexpr int kRuns = 6000;
  std::vector<std::vector<int>> counts(3, std::vector<int>(v, 0));
  int64_t accepted = 0, drafted = 0;
  for (int run = 0; run < kRuns; ++run) {
    SessionState ts = *target->CloneState(base);
    SessionState ds = Prefilled(*draft, prompt);
    SamplingParams seeded = params;
    seeded.seed = static_cast<uint64_t>(run);
    auto decoder = SpeculativeDecoder::Create(*target, &ts, *draft, &ds, seeded, 2, prompt);
    ASSERT_TRUE(decoder.ok()) << decoder.status();
    std::vector<int32_t> got;
    while (got.size() < 3) {
      auto more = decoder->Next();
      ASSERT_TRUE(more.ok()) << more.status();
      for (const SampledToken& t : *more) got.push_back(t.id);
    }
    for (int i = 0; i < 3; ++i) ++counts[i][got[i]];
    accepted += decoder->stats().accepted;
    drafted += decoder->stats().drafted;
  }
  // Both the accept and the reject branch are taken often.
  EXPECT_GT(accepted, drafted / 10);
  EXPECT_LT(accepted, drafted * 9 / 10);
  for (int i = 0; i < 3; ++i) {
    const auto [stat, df] = ChiSquare(counts[i], marginal[i], kRuns);
    EXPECT_LT(stat, Critical(df)) << "token " << i + 1 << ": chi-square " << stat << ", df " << df;
  }
  const auto [wrong, df] = ChiSquare(counts[0], draft_first, kRuns);
  EXPECT_GT(wrong, Critical(df)) << "the draft's distribution is indistinguishable";
}

TEST(SpeculativeDecoderTest, RefusesBadSetUps) {
  const ModelConfig tc = ConfigWith({R"({"attention": "dense"})"}, {}, 4);
  auto target = LoadModel(tc, 1);
  ModelConfig other_vocab = tc;
  other_vocab.vocab_size = tc.vocab_size + 1;
  auto wide = LoadModel(other_vocab, 1);
  auto realformer = LoadModel(ConfigWith({R"({"attention": "dense"})",
                                          R"({"attention": "dense", "residual_attention": true})"},
                                         {}, 4),
                              1);
  ASSERT_NE(target, nullptr);
  ASSERT_NE(wide, nullptr);
  ASSERT_NE(realformer, nullptr);
  const std::vector<int32_t> prompt = {1, 2, 3};
  SessionState a = *target->NewState(), b = *target->NewState(), w = *wide->NewState();
  EXPECT_EQ(SpeculativeDecoder::Create(*target, &a, *wide, &w, Greedy(), 4, prompt).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (int k : {0, 65}) {
    EXPECT_EQ(
        SpeculativeDecoder::Create(*target, &a, *target, &b, Greedy(), k, prompt).status().code(),
        absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(
      SpeculativeDecoder::Create(*target, &a, *target, &a, Greedy(), 2, prompt).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SpeculativeDecoder::Create(*target, &a, *target, &b, Greedy(), 2, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SpeculativeDecoder::Create(*target, &a, *target, &b, Greedy(), 2, {1, 99999}).status().code(),
      absl::StatusCode::kInvalidArgument);
  // A RealFormer target cannot verify token by token: the first pass fails cleanly.
  SessionState r = *realformer->NewState(), d = *target->NewState();
  auto decoder = SpeculativeDecoder::Create(*realformer, &r, *target, &d, Greedy(), 2, prompt);
  ASSERT_TRUE(decoder.ok());
  EXPECT_EQ(decoder->Next().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.position(), 0);
}

}  // namespace
}  // namespace mnemo::engine
