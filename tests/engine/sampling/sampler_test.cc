// engine/sampling: the Sampler (greedy, temperature, top-k, top-p, repetition penalty, seeds,
// reported log-probabilities), ValidateSamplingParams, and StopCondition (stop strings across
// tokens, earliest match, bytes held back while a stop string may still be forming).
#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/sampling/stop_condition.h"
#include "gtest/gtest.h"

namespace mnemo::engine {
namespace {

std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0) {
  double max = -std::numeric_limits<double>::infinity();
  for (float l : logits) max = std::max(max, l / temperature);
  std::vector<double> p(logits.size());
  double z = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) z += p[i] = std::exp(logits[i] / temperature - max);
  for (double& x : p) x /= z;
  return p;
}

std::vector<int> Histogram(Sampler& sampler, const std::vector<float>& logits, int draws,
                           const std::vector<int32_t>& history = {}) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    const SampledToken t =
        sampler.Sample(logits.data(), static_cast<int64_t>(logits.size()), history);
    EXPECT_GE(t.id, 0);
    EXPECT_LT(t.id, static_cast<int32_t>(logits.size()));
    ++counts[static_cast<size_t>(t.id)];
  }
  return counts;
}

double ChiSquare(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
  double chi2 = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double expected = p[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

SamplingParams Params(float temperature, uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

const std::vector<float> kLogits = {1.0f, 0.5f, -0.3f, 2.0f, 1.7f};  // argmax 3, runner-up 4

TEST(SamplerTest, GreedyPicksArgmax) {
  Sampler sampler(Params(0.0f));
  EXPECT_EQ(sampler.Sample(kLogits.data(), 5, {}).id, 3);
  const std::vector<float> first = {9.0f, 1.0f, 2.0f};
  EXPECT_EQ(sampler.Sample(first.data(), 3, {}).id, 0);
  const std::vector<float> last = {-9.0f, -1.0f, -0.5f};
  EXPECT_EQ(sampler.Sample(last.data(), 3, {}).id, 2);
  const std::vector<float> single = {0.0f};
  EXPECT_EQ(sampler.Sample(single.data(), 1, {}).id, 0);
}

// 20000 draws on a 5-token vocabulary: Pearson's χ² with 4 degrees of freedom stays below 25
// (p ≈ 5e-5) for the right distribution; ignoring the temperature gives χ² in the hundreds.
TEST(SamplerTest, TemperatureFrequenciesConvergeToSoftmax) {
  constexpr int kDraws = 20000;
  for (float temperature : {1.0f, 0.7f, 2.5f}) {
    Sampler sampler(Params(temperature, 1234));
    const std::vector<int> counts = Histogram(sampler, kLogits, kDraws);
    const std::vector<double> p = Softmax(kLogits, temperature);
    EXPECT_LT(ChiSquare(counts, p, kDraws), 25.0) << "temperature " << temperature;
    if (temperature != 1.0f) {
      EXPECT_GT(ChiSquare(counts, Softmax(kLogits, 1.0), kDraws), 100.0)
          << "temperature " << temperature << " looks ignored";
    }
  }
}

TEST(SamplerTest, TopKOneEqualsGreedy) {
  SamplingParams p = Params(1.5f, 5);
  p.top_k = 1;
  Sampler sampler(p);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(sampler.Sample(kLogits.data(), 5, {}).id, 3);
}

TEST(SamplerTest, TopKTwoNeverLeavesTheTopTwo) {
  SamplingParams p = Params(3.0f, 6);  // high temperature: the tail would be likely otherwise
  p.top_k = 2;
  Sampler sampler(p);
  const std::vector<int> counts = Histogram(sampler, kLogits, 4000);
  EXPECT_EQ(counts[0] + counts[1] + counts[2], 0);
  EXPECT_GT(counts[3], 0);
  EXPECT_GT(counts[4], 0);
  // Renormalised over the two: p(3) = 1 / (1 + e^{(1.7 − 2)/3}).
  const double p3 = 1.0 / (1.0 + std::exp((1.7 - 2.0) / 3.0));
  EXPECT_NEAR(counts[3] / 4000.0, p3, 0.03);
}

TEST(SamplerTest, TopKLargerThanVocabularyIsNoLimit) {
  SamplingParams p = Params(1.0f, 7);
  p.top_k = 50;
  Sampler sampler(p);
  const std::vector<int> counts = Histogram(sampler, kLogits, 20000);
  EXPECT_LT(ChiSquare(counts, Softmax(kLogits), 20000), 25.0);
}

TEST(SamplerTest, SmallTopPPicksOnlyTheTopToken) {
  SamplingParams p = Params(1.0f, 8);
  p.top_p = 0.05f;
  Sampler sampler(p);
  const std::vector<int> counts = Histogram(sampler, kLogits, 1000);
  EXPECT_EQ(counts[3], 1000);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities 0.5, 0.3, 0.2 (up to rounding): top_p 0.7 keeps the first two.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams p = Params(1.0f, 9);
  p.top_p = 0.7f;
  Sampler sampler(p);
  const std::vector<int> counts = Histogram(sampler, logits, 10000);
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 10000.0, 0.5 / 0.8, 0.02);
}

TEST(SamplerTest, RepetitionPenaltyChangesTheArgmax) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 1.3f;
  Sampler sampler(p);
  // Positive logit divided: 2.0 / 1.3 ≈ 1.54 < 1.7, so token 4 wins once 3 was seen.
  EXPECT_EQ(sampler.Sample(kLogits.data(), 5, {}).id, 3);
  EXPECT_EQ(sampler.Sample(kLogits.data(), 5, {3}).id, 4);
  // Negative logit multiplied: −1.0 · 1.3 = −1.3 < −1.2.
  const std::vector<float> negative = {-1.0f, -1.2f, -5.0f};
  EXPECT_EQ(sampler.Sample(negative.data(), 3, {}).id, 0);
  EXPECT_EQ(sampler.Sample(negative.data(), 3, {0}).id, 1);
  // Too small a penalty to overturn the gap, and ids outside the vocabulary are ignored.
  SamplingParams mild = p;
  mild.repetition_penalty = 1.1f;  // 2.0 / 1.1 ≈ 1.82 > 1.7
  Sampler mild_sampler(mild);
  EXPECT_EQ(mild_sampler.Sample(kLogits.data(), 5, {3, -1, 99}).id, 3);
  // The reported logprob is still the model's, not the penalised one.
  const SampledToken t = sampler.Sample(kLogits.data(), 5, {3});
  std::vector<float> lp(5);
  LogSoftmax(kLogits.data(), 5, lp.data());
  EXPECT_FLOAT_EQ(t.logprob, lp[4]);
}

// CTRL (Keskar et al. 2019) and Hugging Face penalise each token *seen*, once: a token that
// appears twice in the history is penalised exactly as if it appeared once.
TEST(SamplerTest, RepetitionPenaltyAppliesOncePerDistinctToken) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 1.1f;
  Sampler sampler(p);
  // Once: 2.0 / 1.1 ≈ 1.82 > 1.7 → token 3 stays the argmax. Compounded twice: 2.0 / 1.21 ≈ 1.65.
  EXPECT_EQ(sampler.Sample(kLogits.data(), 5, {3}).id, 3);
  EXPECT_EQ(sampler.Sample(kLogits.data(), 5, {3, 3}).id, 3);
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedDifferentSequence) {
  auto draw = [](uint64_t seed) {
    Sampler sampler(Params(1.0f, seed));
    std::vector<int32_t> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(sampler.Sample(kLogits.data(), 5, {}).id);
    return ids;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
  EXPECT_NE(draw(0), draw(1));
}

TEST(SamplerTest, LogprobIsLogSoftmaxOfRawLogits) {
  for (float temperature : {0.0f, 0.5f, 1.0f, 3.0f}) {
    SamplingParams p = Params(temperature, 11);
    p.top_k = 3;
    p.repetition_penalty = 1.5f;
    Sampler sampler(p);
    const std::vector<double> prob = Softmax(kLogits);
    for (int i = 0; i < 50; ++i) {
      const SampledToken t = sampler.Sample(kLogits.data(), 5, {0, 3});
      ASSERT_NEAR(t.logprob, std::log(prob[static_cast<size_t>(t.id)]), 1e-5)
          << "temperature " << temperature << " id " << t.id;
    }
  }
}

TEST(SamplerTest, LogSoftmaxMatchesDouble) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, 0.0f, 998.5f};
  std::vector<float> out(logits.size());
  LogSoftmax(logits.data(), static_cast<int64_t>(logits.size()), out.data());
  double z = 0.0;
  for (float l : logits) z += std::exp(static_cast<double>(l) - 1000.0);
  for (size_t i = 0; i < logits.size(); ++i) {
    EXPECT_NEAR(out[i], logits[i] - 1000.0 - std::log(z), 1e-4) << i;
  }
}

// A vocabulary-sized row (the vectorised exp over chunks, their tail, masked ids at −infinity)
// against double within float rounding of the result.
TEST(SamplerTest, LogSumExpOfALongRowMatchesDouble) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 4.0f);
  for (int64_t n : {1, 1023, 1024, 1025, 32000}) {
    std::vector<float> logits(static_cast<size_t>(n));
    for (float& l : logits) l = dist(rng);
    for (int64_t i = 3; i < n; i += 97) logits[i] = -std::numeric_limits<float>::infinity();
    const float max = *std::max_element(logits.begin(), logits.end());
    double z = 0.0;
    for (float l : logits) z += std::exp(static_cast<double>(l) - max);
    const double want = max + std::log(z);
    EXPECT_NEAR(LogSumExp(logits.data(), n), want, 4e-7 * std::max(1.0, std::fabs(want))) << n;
  }
}

TEST(SamplerTest, TopLogprobsAreSortedAndCorrect) {
  SamplingParams p = Params(1.0f, 13);
  p.top_logprobs = 3;
  Sampler sampler(p);
  const SampledToken t = sampler.Sample(kLogits.data(), 5, {});
  ASSERT_EQ(t.top.size(), 3u);
  const std::vector<double> prob = Softmax(kLogits);
  const std::vector<int32_t> want_ids = {3, 4, 0};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(t.top[i].first, want_ids[i]);
    EXPECT_NEAR(t.top[i].second, std::log(prob[static_cast<size_t>(want_ids[i])]), 1e-5);
    if (i > 0) {
      EXPECT_GE(t.top[i - 1].second, t.top[i].second);
    }
  }
  // More alternatives than tokens: all of them, still sorted.
  p.top_logprobs = 20;
  Sampler all(p);
  const SampledToken u = all.Sample(kLogits.data(), 5, {});
  ASSERT_EQ(u.top.size(), 5u);
  EXPECT_TRUE(std::is_sorted(u.top.begin(), u.top.end(),
                             [](const auto& a, const auto& b) { return a.second > b.second; }));
  EXPECT_EQ(u.top.back().first, 2);
  // None requested: none reported.
  Sampler none(Params(1.0f, 13));
  EXPECT_TRUE(none.Sample(kLogits.data(), 5, {}).top.empty());
}

void ExpectRejected(const SamplingParams& p, const std::string& field) {
  const absl::Status status = ValidateSamplingParams(p);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(std::string(status.message()).find(field), std::string::npos)
      << "message \"" << status.message() << "\" does not name " << field;
}

TEST(SamplerTest, ValidateSamplingParams) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams()).ok());
  SamplingParams edge;
  edge.temperature = 0.0f;
  edge.top_k = 0;
  edge.top_p = 1.0f;
  edge.repetition_penalty = 1.0f;
  edge.top_logprobs = 20;
  EXPECT_TRUE(ValidateSamplingParams(edge).ok());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {-0.1f, 100.5f, nan, inf}) {
    SamplingParams p;
    p.temperature = bad;
    ExpectRejected(p, "temperature");
  }
  {
    SamplingParams p;
    p.top_k = -1;
    ExpectRejected(p, "top_k");
  }
  for (float bad : {0.0f, -0.5f, 1.01f, nan}) {
    SamplingParams p;
    p.top_p = bad;
    ExpectRejected(p, "top_p");
  }
  for (float bad : {0.0f, -1.0f, 101.0f, nan, inf}) {
    SamplingParams p;
    p.repetition_penalty = bad;
    ExpectRejected(p, "repetition_penalty");
  }
  for (int32_t bad : {-1, 21}) {
    SamplingParams p;
    p.top_logprobs = bad;
    ExpectRejected(p, "top_logprobs");
  }
}

// ---------------------------------------------------------------------------------------------
// StopCondition

TEST(StopConditionTest, StopStringSpanningTokens) {
  StopCondition stop({"lo Wo"}, {}, -1);
  size_t keep = 0;
  std::string text;
  for (const std::string piece : {"Hel", "lo W"}) {
    text += piece;
    EXPECT_FALSE(stop.Check(7, text, &keep).has_value()) << text;
    EXPECT_EQ(keep, text.size());
  }
  text += "orld";
  const auto reason = stop.Check(7, text, &keep);
  ASSERT_TRUE(reason.has_value());
  EXPECT_EQ(*reason, FinishReason::kStopString);
  EXPECT_EQ(keep, 3u);  // "Hel"
}

TEST(StopConditionTest, EarliestMatchWins) {
  StopCondition stop({"World", "o W", "xyz"}, {}, -1);
  size_t keep = 0;
  const auto reason = stop.Check(1, "Hello World", &keep);
  ASSERT_TRUE(reason.has_value());
  EXPECT_EQ(*reason, FinishReason::kStopString);
  EXPECT_EQ(keep, 4u);  // "Hell"
}

TEST(StopConditionTest, StopStringAtTheVeryStart) {
  StopCondition stop({"ab"}, {}, -1);
  size_t keep = 99;
  ASSERT_TRUE(stop.Check(1, "abc", &keep).has_value());
  EXPECT_EQ(keep, 0u);
}

// Searching only where a stop string can end in the new bytes finds the same earliest match as
// searching the whole text, when the text grows a few bytes per token.
TEST(StopConditionTest, TailSearchMatchesFullSearch) {
  const StopCondition stop({"needle", "dle x"}, {}, -1);
  const std::string full =
      "hay hay ne"
      "edle tail and a needle x";
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    std::string text;
    size_t pos = 0;
    std::optional<FinishReason> tail_result;
    size_t tail_keep = 0;
    while (pos < full.size()) {
      const size_t n = std::min<size_t>(1 + rng() % 4, full.size() - pos);
      text += full.substr(pos, n);
      pos += n;
      tail_result = stop.Check(1, text, &tail_keep, n);
      if (tail_result) break;
    }
    size_t full_keep = 0;
    const auto full_result = stop.Check(1, text, &full_keep);
    ASSERT_TRUE(tail_result.has_value());
    ASSERT_TRUE(full_result.has_value());
    EXPECT_EQ(tail_keep, full_keep);
    EXPECT_EQ(tail_keep, full.find("needle"));
  }
}

TEST(StopConditionTest, PendingBytesHoldBackAPossiblePrefix) {
  StopCondition stop({"World", "abc", "bcd"}, {}, -1);
  EXPECT_EQ(stop.PendingBytes("Hello Wo"), 2u);
  EXPECT_EQ(stop.PendingBytes("Hello W"), 1u);
  EXPECT_EQ(stop.PendingBytes("Hello"), 0u);
  EXPECT_EQ(stop.PendingBytes("Worl"), 4u);  // the whole text may be the start
  EXPECT_EQ(stop.PendingBytes("xab"), 2u);   // longest over all stop strings ("ab" vs "b")
  EXPECT_EQ(stop.PendingBytes("xbc"), 2u);   // "bc" of "bcd" ("c" is no prefix of "abc")
  EXPECT_EQ(stop.PendingBytes(""), 0u);
  StopCondition none({}, {}, -1);
  EXPECT_EQ(none.PendingBytes("Hello Wo"), 0u);
}

TEST(StopConditionTest, EmptyStopStringsAreIgnored) {
  StopCondition stop({"", "zz"}, {}, -1);
  size_t keep = 0;
  EXPECT_FALSE(stop.Check(1, "abc", &keep).has_value());
  EXPECT_EQ(keep, 3u);
  EXPECT_EQ(stop.PendingBytes("abc"), 0u);
  EXPECT_EQ(stop.PendingBytes("abz"), 1u);
}

TEST(StopConditionTest, EosAndStopIds) {
  StopCondition stop({"never"}, {5, 9}, 2);
  size_t keep = 0;
  auto r = stop.Check(2, "text", &keep);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, FinishReason::kEos);
  EXPECT_EQ(keep, 4u);
  r = stop.Check(9, "text", &keep);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, FinishReason::kStopToken);
  EXPECT_FALSE(stop.Check(3, "text", &keep).has_value());
  // No eos configured (-1): no id ends generation as eos.
  StopCondition no_eos({}, {}, -1);
  EXPECT_FALSE(no_eos.Check(2, "t", &keep).has_value());
  EXPECT_FALSE(no_eos.Check(-1, "t", &keep).has_value());
}

TEST(StopConditionTest, FinishReasonNames) {
  EXPECT_EQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_EQ(FinishReasonName(FinishReason::kStopString), "stop_string");
  EXPECT_EQ(FinishReasonName(FinishReason::kStopToken), "stop_token");
  EXPECT_EQ(FinishReasonName(FinishReason::kEos), "eos");
}

}  // namespace
}  // namespace mnemo::engine
