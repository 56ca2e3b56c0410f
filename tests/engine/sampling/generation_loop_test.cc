// The generation loop (engine/sampling/generation_loop.h) on a scripted model: a fake tokenizer
// whose pieces split words and UTF-8 characters where a test wants, and decode steps whose logits
// make the greedy sampler pick a given token sequence. Stop strings split across tokens, UTF-8
// characters split across tokens, the length limit, eos against ignore_eos, stop ids, a callback
// that stops, the check hook, prefill segments; and, on a real model with a draft, speculative
// generation giving the plain loop's tokens and leaving both memories alike.
#include "engine/sampling/generation_loop.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/transfo_xl_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

// Id i decodes to pieces[i]; a sequence decodes to its pieces' bytes back to back.
class PieceTokenizer : public Tokenizer {
 public:
  PieceTokenizer(std::vector<std::string> pieces, int32_t eos)
      : pieces_(std::move(pieces)), eos_(eos) {}
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view) const override {
    return absl::UnimplementedError("not needed");
  }
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) return absl::InvalidArgumentError("id out of range");
      out += pieces_[static_cast<size_t>(id)];
    }
    return out;
  }
  int32_t eos_id() const override { return eos_; }

 private:
  std::vector<std::string> pieces_;
  int32_t eos_;
};

// A model that "predicts" script[i] at its i-th decode step (greedy sampling picks it) and
// records every call.
struct ScriptedModel {
  ScriptedModel(std::vector<int32_t> script, int64_t vocab)
      : script(std::move(script)), vocab(vocab) {}
  std::vector<int32_t> script;
  int64_t vocab = 0;
  std::vector<int32_t> decode_inputs;          // the token of each decode step
  std::vector<std::vector<int32_t>> prefills;  // each prefill segment

  GenerationSteps Steps() {
    GenerationSteps steps;
    steps.prefill = [this](std::span<const int32_t> tokens) {
      prefills.emplace_back(tokens.begin(), tokens.end());
      return absl::OkStatus();
    };
    steps.decode = [this](
                       int32_t token,
                       std::vector<float>* logits) -> absl::StatusOr<std::unique_ptr<PendingStep>> {
      const size_t i = decode_inputs.size();
      decode_inputs.push_back(token);
      logits->assign(static_cast<size_t>(vocab), 0.0f);
      if (i >= script.size()) return CompletedStep(absl::OutOfRangeError("script exhausted"));
      (*logits)[static_cast<size_t>(script[i])] = 10.0f;
      return CompletedStep(absl::OkStatus());
    };
    return steps;
  }
};

GenerationParams Greedy(int64_t max_tokens) {
  GenerationParams params;
  params.sampling.temperature = 0.0f;
  params.max_tokens = max_tokens;
  return params;
}

struct Outcome {
  absl::StatusOr<GenerationResult> result;
  std::vector<std::string> deltas;  // each token's text, in order
  std::vector<int32_t> ids;
  std::vector<int32_t> pending;  // after the run
};

// Generates from pending {0} with `pieces` (eos: the last piece's id unless told otherwise).
Outcome GenerateScripted(const std::vector<std::string>& pieces, const std::vector<int32_t>& script,
                         const GenerationParams& params, int32_t eos = -1,
                         const std::function<bool(const GeneratedToken&)>& extra = nullptr) {
  PieceTokenizer tokenizer(pieces, eos);
  ScriptedModel model(script, static_cast<int64_t>(pieces.size()));
  GenerationModel g;
  g.vocab_size = model.vocab;
  g.tokenizer = &tokenizer;
  g.segment_tokens = 4;
  Outcome run;
  run.pending = {0};
  run.result =
      RunGeneration(g, run.pending, params, {0}, model.Steps(), [&](const GeneratedToken& token) {
        run.deltas.push_back(token.text);
        run.ids.push_back(token.sample.id);
        return extra ? extra(token) : true;
      });
  return run;
}

TEST(GenerationLoopTest, StopStringSplitAcrossTokensIsHeldBackAndCut) {
  //                 0     1      2      3      4
  const std::vector<std::string> pieces = {"", "Hel", "lo ", "wor", "ld"};
  GenerationParams params = Greedy(10);
  params.stop = {"o w"};
  const Outcome run = GenerateScripted(pieces, {1, 2, 3, 4}, params);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  EXPECT_EQ(run.result->reason, FinishReason::kStopString);
  EXPECT_EQ(run.result->generated, 3);
  EXPECT_EQ(run.result->text, "Hell");
  // "lo " may begin the stop string: its "o " waits until "wor" decides, and is then dropped.
  EXPECT_EQ(run.deltas, (std::vector<std::string>{"Hel", "l", ""}));
  EXPECT_EQ(run.result->tail, "");
  EXPECT_EQ(run.pending, std::vector<int32_t>{3});  // the last sampled token, not yet run
}

TEST(GenerationLoopTest, HeldBackTextIsReleasedAtTheLengthLimit) {
  const std::vector<std::string> pieces = {"", "ab", "c"};
  GenerationParams params = Greedy(2);
  params.stop = {"cd"};
  const Outcome run = GenerateScripted(pieces, {1, 2}, params);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  EXPECT_EQ(run.result->reason, FinishReason::kLength);
  EXPECT_EQ(run.deltas, (std::vector<std::string>{"ab", ""}));
  EXPECT_EQ(run.result->tail, "c");
  EXPECT_EQ(run.result->text, "abc");
}

TEST(GenerationLoopTest, MultiByteCharacterSplitAcrossTokensComesOutWhole) {
  // "é" is C3 A9, "€" is E2 82 AC: split over two and three tokens.
  const std::vector<std::string> pieces = {"", "a", "\xC3", "\xA9", "\xE2", "\x82", "\xAC", "b"};
  const Outcome run = GenerateScripted(pieces, {1, 2, 3, 4, 5, 6, 7}, Greedy(7));
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  EXPECT_EQ(run.deltas,
            (std::vector<std::string>{"a", "", "\xC3\xA9", "", "", "\xE2\x82\xAC", "b"}));
  for (const std::string& d : run.deltas) EXPECT_TRUE(IsValidUtf8(d)) << d;
  EXPECT_EQ(run.result->text,
            "a\xC3\xA9\xE2\x82\xAC"
            "b");
  EXPECT_EQ(run.result->reason, FinishReason::kLength);
}

TEST(GenerationLoopTest, IncompleteCharacterAtTheLengthLimitEndsInTheTail) {
  const std::vector<std::string> pieces = {"", "a", "\xC3", "\xA9"};
  const Outcome run = GenerateScripted(pieces, {1, 2, 3}, Greedy(2));
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  EXPECT_EQ(run.deltas, (std::vector<std::string>{"a", ""}));
  EXPECT_EQ(run.result->generated, 2);
  EXPECT_EQ(run.result->tail, "\xC3");  // what the decoder held, as the tokenizer decodes it
}

TEST(GenerationLoopTest, MaxTokensEndsWithLengthAndRunsNoFurtherStep) {
  const std::vector<std::string> pieces = {"", "x", "y"};
  PieceTokenizer tokenizer(pieces, -1);
  ScriptedModel model{{1, 2, 1, 2, 1, 2}, 3};
  GenerationModel g{3, &tokenizer, 4, std::nullopt};
  std::vector<int32_t> pending = {2};
  int calls = 0;
  auto result = RunGeneration(g, pending, Greedy(4), {2}, model.Steps(),
                              [&](const GeneratedToken&) { return ++calls > 0; });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->reason, FinishReason::kLength);
  EXPECT_EQ(result->generated, 4);
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(result->text, "xyxy");
  // The input, then each sampled token but the last: that one stays pending.
  EXPECT_EQ(model.decode_inputs, (std::vector<int32_t>{2, 1, 2, 1}));
  EXPECT_EQ(pending, std::vector<int32_t>{2});
}

TEST(GenerationLoopTest, EosEndsUnlessIgnored) {
  const std::vector<std::string> pieces = {"", "x", "</s>"};
  const std::vector<int32_t> script = {1, 2, 1, 2, 1};
  const Outcome stopped = GenerateScripted(pieces, script, Greedy(5), /*eos=*/2);
  ASSERT_TRUE(stopped.result.ok()) << stopped.result.status();
  EXPECT_EQ(stopped.result->reason, FinishReason::kEos);
  EXPECT_EQ(stopped.result->generated, 2);
  EXPECT_EQ(stopped.ids, (std::vector<int32_t>{1, 2}));

  GenerationParams ignore = Greedy(5);
  ignore.ignore_eos = true;
  const Outcome ignored = GenerateScripted(pieces, script, ignore, /*eos=*/2);
  ASSERT_TRUE(ignored.result.ok()) << ignored.result.status();
  EXPECT_EQ(ignored.result->reason, FinishReason::kLength);
  EXPECT_EQ(ignored.result->generated, 5);
  EXPECT_EQ(ignored.result->text, "x</s>x</s>x");
}

TEST(GenerationLoopTest, StopIdEndsWithStopToken) {
  GenerationParams params = Greedy(5);
  params.stop_ids = {2};
  const Outcome run = GenerateScripted({"", "x", "y"}, {1, 1, 2, 1}, params);
  ASSERT_TRUE(run.result.ok()) << run.result.status();
  EXPECT_EQ(run.result->reason, FinishReason::kStopToken);
  EXPECT_EQ(run.result->generated, 3);
  EXPECT_EQ(run.result->text, "xxy");
}

TEST(GenerationLoopTest, CallbackReturningFalseCancels) {
  int seen = 0;
  const Outcome run = GenerateScripted({"", "x"}, {1, 1, 1, 1}, Greedy(4), -1,
                                       [&](const GeneratedToken&) { return ++seen < 2; });
  EXPECT_EQ(run.result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, 2);
}

TEST(GenerationLoopTest, CheckHookStopsBeforeTheNextStep) {
  PieceTokenizer tokenizer({"", "x"}, -1);
  ScriptedModel model{{1, 1, 1, 1}, 2};
  GenerationSteps steps = model.Steps();
  int checks = 0;
  steps.check = [&]() {
    return ++checks > 2 ? absl::DeadlineExceededError("late") : absl::OkStatus();
  };
  GenerationModel g{2, &tokenizer, 4, std::nullopt};
  std::vector<int32_t> pending = {1};
  auto result =
      RunGeneration(g, pending, Greedy(4), {}, steps, [](const GeneratedToken&) { return true; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(model.decode_inputs.size(), 2u);
}

TEST(GenerationLoopTest, PendingTokensRunInSegmentsBeforeTheLastIsDecoded) {
  PieceTokenizer tokenizer({"", "x"}, -1);
  ScriptedModel model{{1}, 2};
  GenerationModel g{2, &tokenizer, 3, std::nullopt};
  std::vector<int32_t> pending = {1, 0, 1, 0, 1, 0, 1, 0};
  auto result = RunGeneration(g, pending, Greedy(1), {}, model.Steps(),
                              [](const GeneratedToken&) { return true; });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(model.prefills, (std::vector<std::vector<int32_t>>{{1, 0, 1}, {0, 1, 0}, {1}}));
  EXPECT_EQ(model.decode_inputs, std::vector<int32_t>{0});
  std::vector<int32_t> empty;
  EXPECT_EQ(RunGeneration(g, empty, Greedy(1), {}, model.Steps(),
                          [](const GeneratedToken&) { return true; })
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Without a tokenizer: ids only, no text; stop ids still end the generation.
TEST(GenerationLoopTest, WithoutTokenizerOnlyIdsCount) {
  ScriptedModel model{{1, 2, 1}, 3};
  GenerationModel g{3, nullptr, 4, std::nullopt};
  GenerationParams params = Greedy(5);
  params.stop_ids = {2};
  std::vector<int32_t> pending = {0};
  auto result = RunGeneration(g, pending, params, {}, model.Steps(),
                              [](const GeneratedToken& t) { return t.text.empty(); });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->reason, FinishReason::kStopToken);
  EXPECT_EQ(result->generated, 2);
  EXPECT_EQ(result->text, "");
}

// A real model: with a draft (here another random model), the speculative loop emits the plain
// loop's greedy tokens, stops at the same length, and leaves the model's memory where the plain
// loop leaves it.
TEST(GenerationLoopTest, SpeculativeGreedyEqualsPlainOnARealModel) {
  const ModelConfig config =
      test::ConfigWith({R"({"attention": "dense"})", R"({"attention": "dense"})"},
                       {{"memory_init", "\"zeros\""}}, 6);
  auto target = test::LoadModel(config, 11);
  auto draft = test::LoadModel(config, 12);
  ASSERT_NE(target, nullptr);
  ASSERT_NE(draft, nullptr);
  const std::vector<int32_t> prompt = test::RandomTokens(11, config.vocab_size, 4);
  GenerationParams params = Greedy(23);
  params.sampling.top_logprobs = 0;

  SessionState plain_state = *target->NewState();
  std::vector<int32_t> plain_pending = prompt;
  std::vector<int32_t> plain_ids;
  GenerationModel plain{config.vocab_size, nullptr, 4, std::nullopt};
  auto plain_result =
      RunGeneration(plain, plain_pending, params, prompt,
                    DirectGenerationSteps(*target, &plain_state), [&](const GeneratedToken& t) {
                      plain_ids.push_back(t.sample.id);
                      return true;
                    });
  ASSERT_TRUE(plain_result.ok()) << plain_result.status();

  for (int k : {1, 4}) {
    SCOPED_TRACE("draft_tokens " + std::to_string(k));
    SessionState state = *target->NewState(), draft_state = *draft->NewState();
    std::vector<int32_t> pending = prompt;
    std::vector<int32_t> ids;
    GenerationModel spec{
        config.vocab_size, nullptr, 4,
        GenerationModel::Speculative{target.get(), &state, draft.get(), &draft_state, k}};
    auto result = RunGeneration(spec, pending, params, prompt,
                                DirectGenerationSteps(*target, &state, draft.get(), &draft_state),
                                [&](const GeneratedToken& t) {
                                  ids.push_back(t.sample.id);
                                  return true;
                                });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(ids, plain_ids);
    EXPECT_EQ(result->generated, 23);
    EXPECT_GT(result->draft_passes, 0);
    EXPECT_EQ(pending, plain_pending);
    EXPECT_EQ(state.position(), plain_state.position());
    EXPECT_EQ(draft_state.position(), plain_state.position());
  }
}

}  // namespace
}  // namespace mnemo::engine
