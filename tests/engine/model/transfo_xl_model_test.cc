// engine/model/transfo_xl_model: exactness properties that need no reference implementation
// (segmenting, decoding, batching and cloning never change the logits where the maths says they
// must not), the memory's boundary cases, the session state's size, and input validation that
// leaves states untouched. Tolerance: max|a − b| ≤ 1e-5 · max|b| (float32).
#include "engine/model/transfo_xl_model.h"

#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

constexpr double kTol = 1e-5;

using test::LoadModel;
using test::RandomTokens;

std::vector<float> ToVector(const Tensor& t) {
  EXPECT_EQ(t.dtype(), DType::kF32);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

// Runs one sequence; the test fails (and an empty vector comes back) on error.
std::vector<float> Feed(TransfoXlModel& model, SessionState& state,
                        const std::vector<int32_t>& tokens, LogitsMode mode = LogitsMode::kAll) {
  Tensor logits;
  const absl::Status status = model.Forward(
      {SequenceInput{tokens.data(), static_cast<int64_t>(tokens.size()), &state}}, mode, &logits);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok() || mode == LogitsMode::kNone) return {};
  const int64_t rows = mode == LogitsMode::kAll ? static_cast<int64_t>(tokens.size()) : 1;
  EXPECT_EQ(logits.shape(), (std::vector<int64_t>{rows, model.config().vocab_size}));
  return ToVector(logits);
}

// Feeds `tokens` in consecutive segments of the given lengths (Σ = tokens.size()) and returns
// every position's logits in order.
std::vector<float> FeedInSegments(TransfoXlModel& model, SessionState& state,
                                  const std::vector<int32_t>& tokens,
                                  const std::vector<int64_t>& lengths) {
  std::vector<float> out;
  size_t pos = 0;
  for (int64_t len : lengths) {
    std::vector<int32_t> seg(tokens.begin() + static_cast<std::ptrdiff_t>(pos),
                             tokens.begin() + static_cast<std::ptrdiff_t>(pos + len));
    const std::vector<float> logits = Feed(model, state, seg);
    out.insert(out.end(), logits.begin(), logits.end());
    pos += static_cast<size_t>(len);
  }
  EXPECT_EQ(pos, tokens.size());
  return out;
}

std::vector<float> Row(const std::vector<float>& all, int64_t row, int64_t vocab) {
  return std::vector<float>(all.begin() + row * vocab, all.begin() + (row + 1) * vocab);
}

// ---------------------------------------------------------------------------------------------
// Segment / decode equivalence: "empty" memory at least as long as the document, so every token
// sees every earlier token at the same distances however the document is cut.

struct Variant {
  std::string name;
  ModelConfig config;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

std::vector<Variant> EquivalenceVariants() {
  std::vector<Variant> v;
  ModelConfig base = test::SmallConfig();
  base.mem_len = 48;
  base.memory_init = MemoryInit::kEmpty;
  v.push_back({"PostLnRelu", base});
  ModelConfig pre = base;
  pre.pre_lnorm = true;
  pre.activation = Activation::kGelu;
  pre.untie_r = false;
  pre.tie_word_embeddings = true;
  v.push_back({"PreLnGeluSharedBiasTied", pre});
  // K never exceeds mem_len here, so same_length masks nothing; clamping keys beyond distance 3
  // does not depend on the cut either.
  ModelConfig clamped = base;
  clamped.clamp_len = 3;
  clamped.same_length = true;
  v.push_back({"ClampSameLength", clamped});
  ModelConfig half = base;
  half.dtype = DType::kF16;
  half.n_layer = 3;
  half.n_head = 3;
  half.d_head = 4;
  v.push_back({"Float16ThreeLayers", half});
  ModelConfig bf = pre;
  bf.dtype = DType::kBF16;
  bf.pre_lnorm = false;
  bf.eos_token_id = 1;
  v.push_back({"BFloat16", bf});
  return v;
}

// Every backend runs the same test bodies (test::TestBackends); parameters are (device, case).
template <typename Case>
std::string BackendCaseName(const ::testing::TestParamInfo<std::tuple<std::string, Case>>& info) {
  return std::get<0>(info.param) + "_" + std::get<1>(info.param).name;
}

class EquivalenceTest : public ::testing::TestWithParam<std::tuple<std::string, Variant>> {
 protected:
  void SetUp() override {
    std::string unavailable;
    model_ = test::LoadModelOn(device(), std::get<1>(GetParam()).config, 7, &unavailable);
    if (!unavailable.empty()) GTEST_SKIP() << unavailable;
    ASSERT_NE(model_, nullptr);
    tol_ = test::ExactnessTolerance(device());
  }
  const std::string& device() const { return std::get<0>(GetParam()); }
  std::unique_ptr<TransfoXlModel> model_;
  double tol_ = kTol;
};

TEST_P(EquivalenceTest, SegmentedPrefillEqualsOnePass) {
  const int64_t vocab = model_->config().vocab_size;
  const std::vector<int32_t> doc = RandomTokens(40, vocab, 3);
  SessionState whole_state = *model_->NewState();
  const std::vector<float> whole = Feed(*model_, whole_state, doc);
  ASSERT_EQ(whole.size(), static_cast<size_t>(40 * vocab));
  for (const std::vector<int64_t>& cut :
       std::vector<std::vector<int64_t>>{{1, 39}, {20, 20}, {7, 1, 13, 19}, {39, 1}}) {
    SessionState state = *model_->NewState();
    EXPECT_TRUE(test::NearRelative(FeedInSegments(*model_, state, doc, cut), whole, tol_))
        << "segments starting with " << cut[0];
    EXPECT_EQ(state.position(), 40);
  }
}

TEST_P(EquivalenceTest, DecodeEqualsPrefill) {
  const int64_t vocab = model_->config().vocab_size;
  const std::vector<int32_t> doc = RandomTokens(40, vocab, 4);
  SessionState prefill_state = *model_->NewState();
  const std::vector<float> prefill = Feed(*model_, prefill_state, doc);
  SessionState state = *model_->NewState();
  for (size_t t = 0; t < doc.size(); ++t) {
    const std::vector<float> step = Feed(*model_, state, {doc[t]}, LogitsMode::kLast);
    ASSERT_TRUE(test::NearRelative(step, Row(prefill, static_cast<int64_t>(t), vocab), tol_))
        << "token " << t;
  }
  EXPECT_EQ(state.position(), 40);
}

// Memory exactly full: a document of exactly mem_len tokens still fits.
TEST_P(EquivalenceTest, DocumentExactlyFillingMemory) {
  const int64_t mem_len = model_->config().mem_len;
  const std::vector<int32_t> doc = RandomTokens(mem_len, model_->config().vocab_size, 5);
  SessionState a = *model_->NewState();
  const std::vector<float> whole = Feed(*model_, a, doc);
  SessionState b = *model_->NewState();
  EXPECT_TRUE(test::NearRelative(FeedInSegments(*model_, b, doc, {mem_len - 1, 1}), whole, tol_));
  for (const XlMemory& m : test::Rings(b)) EXPECT_EQ(m.size(), mem_len);
}

INSTANTIATE_TEST_SUITE_P(Variants, EquivalenceTest,
                         ::testing::Combine(::testing::ValuesIn(test::TestBackends()),
                                            ::testing::ValuesIn(EquivalenceVariants())),
                         BackendCaseName<Variant>);

// ---------------------------------------------------------------------------------------------
// One layer: memory K/V are projections of embeddings, independent of context, so a decode step
// with a full (wrapped) ring equals a fresh pass over the window the ring holds. This pins the
// ring's eviction order and, with same_length, the mem_len-key window.

struct WindowCase {
  bool same_length;
  MemoryInit init;
  int64_t clamp_len;
};

void PrintTo(const WindowCase& c, std::ostream* os) {
  *os << "same_length=" << c.same_length
      << " memory_init=" << (c.init == MemoryInit::kZeros ? "zeros" : "empty")
      << " clamp_len=" << c.clamp_len;
}

class SlidingWindowTest : public ::testing::TestWithParam<WindowCase> {};

TEST_P(SlidingWindowTest, DecodeWithWrappedRingEqualsFreshWindow) {
  ModelConfig c = test::SmallConfig();
  c.n_layer = 1;
  c.mem_len = 5;
  c.same_length = GetParam().same_length;
  c.memory_init = GetParam().init;
  c.clamp_len = GetParam().clamp_len;
  auto model = LoadModel(c, 21);
  ASSERT_NE(model, nullptr);
  // The fresh window runs on an "empty" memory (same weights): a "zeros" state would start with
  // zero rows.
  ModelConfig empty_config = c;
  empty_config.memory_init = MemoryInit::kEmpty;
  auto window_model = LoadModel(empty_config, 21);
  ASSERT_NE(window_model, nullptr);
  const int64_t m = c.mem_len;
  const std::vector<int32_t> doc = RandomTokens(4 * m + 3, c.vocab_size, 8);
  SessionState state = *model->NewState();
  for (int64_t t = 0; t < static_cast<int64_t>(doc.size()); ++t) {
    const std::vector<float> step = Feed(*model, state, {doc[t]}, LogitsMode::kLast);
    if (t < m) continue;  // ring not yet full ("zeros": zero rows still present)
    // same_length: the query sees itself and m − 1 predecessors; otherwise m predecessors.
    const int64_t first = GetParam().same_length ? t - m + 1 : t - m;
    const std::vector<int32_t> window(doc.begin() + first, doc.begin() + t + 1);
    SessionState fresh = *window_model->NewState();
    ASSERT_TRUE(
        test::NearRelative(step, Feed(*window_model, fresh, window, LogitsMode::kLast), kTol))
        << "token " << t;
  }
  for (const XlMemory& mem : test::Rings(state)) EXPECT_EQ(mem.size(), m);
}

INSTANTIATE_TEST_SUITE_P(Cases, SlidingWindowTest,
                         ::testing::Values(WindowCase{false, MemoryInit::kEmpty, 0},
                                           WindowCase{true, MemoryInit::kEmpty, 0},
                                           WindowCase{true, MemoryInit::kEmpty, 2},
                                           WindowCase{false, MemoryInit::kZeros, 3},
                                           WindowCase{true, MemoryInit::kZeros, 0}),
                         [](const auto& info) {
                           return std::string(info.param.same_length ? "SameLength" : "AllKeys") +
                                  (info.param.init == MemoryInit::kZeros ? "Zeros" : "Empty") +
                                  "Clamp" + std::to_string(info.param.clamp_len);
                         });

// Exactly full vs one past: decoding token mem_len attends to a full memory holding every earlier
// token (equals the one pass); token mem_len + 1 finds token 0 evicted (differs from it).
TEST(TransfoXlModelTest, OnePastFullMemoryForgetsOldestToken) {
  ModelConfig c = test::SmallConfig();
  c.mem_len = 6;
  auto model = LoadModel(c, 2);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> doc = RandomTokens(c.mem_len + 2, c.vocab_size, 9);
  SessionState whole = *model->NewState();
  const std::vector<float> all = Feed(*model, whole, doc);
  SessionState state = *model->NewState();
  std::vector<std::vector<float>> steps;
  for (int32_t t : doc) steps.push_back(Feed(*model, state, {t}, LogitsMode::kLast));
  EXPECT_TRUE(test::NearRelative(steps[c.mem_len], Row(all, c.mem_len, c.vocab_size), kTol));
  EXPECT_FALSE(
      test::NearRelative(steps[c.mem_len + 1], Row(all, c.mem_len + 1, c.vocab_size), 1e-4));
  for (const XlMemory& m : test::Rings(state)) EXPECT_EQ(m.size(), c.mem_len);
}

// ---------------------------------------------------------------------------------------------
// Batching

struct BatchCase {
  std::string name;
  MemoryInit init;
  bool same_length;
  int64_t clamp_len;
};

void PrintTo(const BatchCase& c, std::ostream* os) { *os << c.name; }

class BatchTest : public ::testing::TestWithParam<std::tuple<std::string, BatchCase>> {
 protected:
  const std::string& device() const { return std::get<0>(GetParam()); }
  const BatchCase& batch_case() const { return std::get<1>(GetParam()); }
};

TEST_P(BatchTest, RaggedBatchEqualsEachSequenceAlone) {
  ModelConfig c = test::SmallConfig();
  c.mem_len = 8;
  c.memory_init = batch_case().init;
  c.same_length = batch_case().same_length;
  c.clamp_len = batch_case().clamp_len;
  c.pre_lnorm = batch_case().init == MemoryInit::kZeros;
  std::string unavailable;
  auto model = test::LoadModelOn(device(), c, 5, &unavailable);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  ASSERT_NE(model, nullptr);
  const double tol = test::ExactnessTolerance(device());
  const int64_t vocab = c.vocab_size;
  // Memory fill levels: none, partial, wrapped more than once.
  const std::vector<int64_t> history = {0, 5, 20};
  const std::vector<int64_t> lengths = {6, 1, 11};
  std::vector<SessionState> states;
  for (size_t b = 0; b < history.size(); ++b) {
    states.push_back(*model->NewState());
    if (history[b] > 0) {
      Feed(*model, states[b], RandomTokens(history[b], vocab, 100 + static_cast<uint32_t>(b)),
           LogitsMode::kNone);
    }
  }
  std::vector<std::vector<int32_t>> inputs;
  for (size_t b = 0; b < lengths.size(); ++b) {
    inputs.push_back(RandomTokens(lengths[b], vocab, 200 + static_cast<uint32_t>(b)));
  }
  for (LogitsMode mode : {LogitsMode::kAll, LogitsMode::kLast}) {
    std::vector<SessionState> batch_states, alone_states;
    for (const SessionState& s : states) {
      batch_states.push_back(*model->CloneState(s));
      alone_states.push_back(*model->CloneState(s));
    }
    std::vector<SequenceInput> batch;
    for (size_t b = 0; b < inputs.size(); ++b) {
      batch.push_back(SequenceInput{inputs[b].data(), lengths[b], &batch_states[b]});
    }
    Tensor logits;
    ASSERT_TRUE(model->Forward(batch, mode, &logits).ok());
    const std::vector<float> got = ToVector(logits);
    std::vector<float> want;
    for (size_t b = 0; b < inputs.size(); ++b) {
      const std::vector<float> alone = Feed(*model, alone_states[b], inputs[b], mode);
      want.insert(want.end(), alone.begin(), alone.end());
    }
    const int64_t rows = mode == LogitsMode::kAll ? 18 : 3;
    EXPECT_EQ(logits.shape(), (std::vector<int64_t>{rows, vocab}));
    EXPECT_TRUE(test::NearRelative(got, want, tol))
        << (mode == LogitsMode::kAll ? "kAll" : "kLast");
    // The states advanced exactly as when run alone: the next token agrees too.
    for (size_t b = 0; b < inputs.size(); ++b) {
      EXPECT_EQ(batch_states[b].position(), history[b] + lengths[b]);
      EXPECT_EQ(test::Ring(batch_states[b], 0).size(), test::Ring(alone_states[b], 0).size());
      const std::vector<int32_t> next = {static_cast<int32_t>(b)};
      EXPECT_TRUE(test::NearRelative(Feed(*model, batch_states[b], next),
                                     Feed(*model, alone_states[b], next), tol))
          << "sequence " << b;
    }
  }
}

TEST_P(BatchTest, LastModeEqualsLastRowOfAllMode) {
  ModelConfig c = test::SmallConfig();
  c.memory_init = batch_case().init;
  c.same_length = batch_case().same_length;
  std::string unavailable;
  auto model = test::LoadModelOn(device(), c, 6, &unavailable);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  ASSERT_NE(model, nullptr);
  const double tol = test::ExactnessTolerance(device());
  const std::vector<int32_t> a = RandomTokens(5, c.vocab_size, 1);
  const std::vector<int32_t> b = RandomTokens(3, c.vocab_size, 2);
  SessionState sa = *model->NewState(), sb = *model->NewState();
  SessionState ca = *model->NewState(), cb = *model->NewState();
  Tensor all, last;
  ASSERT_TRUE(
      model->Forward({{a.data(), 5, &sa}, {b.data(), 3, &sb}}, LogitsMode::kAll, &all).ok());
  ASSERT_TRUE(
      model->Forward({{a.data(), 5, &ca}, {b.data(), 3, &cb}}, LogitsMode::kLast, &last).ok());
  const std::vector<float> all_v = ToVector(all), last_v = ToVector(last);
  // The output products have 2 rows here and 8 there: OpenBLAS may pick different kernels for
  // the two shapes (seen on a 16-core machine), so equality is up to float32 rounding. A wrong
  // row would differ by far more than the tolerance.
  EXPECT_TRUE(test::NearRelative(Row(last_v, 0, c.vocab_size), Row(all_v, 4, c.vocab_size), tol));
  EXPECT_TRUE(test::NearRelative(Row(last_v, 1, c.vocab_size), Row(all_v, 7, c.vocab_size), tol));
  EXPECT_FALSE(test::NearRelative(Row(last_v, 0, c.vocab_size), Row(all_v, 3, c.vocab_size), tol));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BatchTest,
    ::testing::Combine(
        ::testing::ValuesIn(test::TestBackends()),
        ::testing::Values(BatchCase{"EmptyAllKeys", MemoryInit::kEmpty, false, 0},
                          BatchCase{"ZerosSameLengthClamp", MemoryInit::kZeros, true, 5},
                          BatchCase{"EmptySameLength", MemoryInit::kEmpty, true, 0})),
    BackendCaseName<BatchCase>);

TEST(TransfoXlModelTest, ConcurrentForwardOnDistinctStatesMatchesSequential) {
  ModelConfig c = test::SmallConfig();
  c.mem_len = 8;
  auto model = LoadModel(c, 12);
  ASSERT_NE(model, nullptr);
  constexpr int kThreads = 4;
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<float>> sequential;
  for (int i = 0; i < kThreads; ++i) {
    docs.push_back(RandomTokens(30 + i, c.vocab_size, 40 + i));
    SessionState s = *model->NewState();
    sequential.push_back(FeedInSegments(*model, s, docs[i], {10, 1, static_cast<int64_t>(19 + i)}));
  }
  std::vector<std::vector<float>> concurrent(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      SessionState s = *model->NewState();
      concurrent[i] = FeedInSegments(*model, s, docs[i], {10, 1, static_cast<int64_t>(19 + i)});
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_TRUE(test::NearRelative(concurrent[i], sequential[i], kTol)) << "thread " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Session state

TEST(TransfoXlModelTest, StateBytesAreExact) {
  for (MemoryInit init : {MemoryInit::kEmpty, MemoryInit::kZeros}) {
    ModelConfig c = test::SmallConfig();
    c.memory_init = init;
    c.n_layer = 3;
    c.mem_len = 11;
    auto model = LoadModel(c);
    ASSERT_NE(model, nullptr);
    const size_t want = static_cast<size_t>(c.n_layer * 2 * c.mem_len * c.n_head * c.d_head * 4);
    EXPECT_EQ(model->StateBytes(), want);
    EXPECT_EQ(SessionStateBytes(c.n_layer, c.mem_len, c.attn_width()), want);
    SessionState s = *model->NewState();
    EXPECT_EQ(s.bytes(), want);
    Feed(*model, s, RandomTokens(30, c.vocab_size, 1), LogitsMode::kNone);
    EXPECT_EQ(s.bytes(), want);  // a full, wrapped memory occupies exactly the same
    EXPECT_EQ(model->CloneState(s)->bytes(), want);
  }
}

class StateCopyTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ModelConfig c = test::SmallConfig();
    c.mem_len = 6;
    c.memory_init = MemoryInit::kZeros;
    std::string unavailable;
    model_ = test::LoadModelOn(GetParam(), c, 3, &unavailable);
    if (!unavailable.empty()) GTEST_SKIP() << unavailable;
    ASSERT_NE(model_, nullptr);
  }
  std::unique_ptr<TransfoXlModel> model_;
};

TEST_P(StateCopyTest, CloneIsIndependentAndIdentical) {
  const ModelConfig& c = model_->config();
  SessionState original = *model_->NewState();
  Feed(*model_, original, RandomTokens(9, c.vocab_size, 1), LogitsMode::kNone);  // wrapped ring
  SessionState clone = *model_->CloneState(original);
  EXPECT_EQ(clone.position(), original.position());
  const std::vector<int32_t> next = RandomTokens(4, c.vocab_size, 2);
  const std::vector<float> from_clone = Feed(*model_, clone, next);
  EXPECT_EQ(original.position(), 9);  // untouched by feeding the clone
  EXPECT_EQ(clone.position(), 13);
  const std::vector<float> from_original = Feed(*model_, original, next);
  EXPECT_EQ(from_clone, from_original);
  // And the clone's further evolution does not leak back either.
  const std::vector<int32_t> more = RandomTokens(3, c.vocab_size, 3);
  EXPECT_EQ(Feed(*model_, clone, more), Feed(*model_, original, more));
}

TEST_P(StateCopyTest, OffloadRoundTripIsExact) {
  const ModelConfig& c = model_->config();
  SessionState original = *model_->NewState();
  Feed(*model_, original, RandomTokens(9, c.vocab_size, 4), LogitsMode::kNone);
  auto host = model_->StateToHost(original);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->device(), Device::kCpu);
  EXPECT_EQ(host->bytes(), original.bytes());
  auto restored = model_->StateFromHost(*host);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->position(), original.position());
  const std::vector<int32_t> next = RandomTokens(4, c.vocab_size, 5);
  EXPECT_EQ(Feed(*model_, *restored, next), Feed(*model_, original, next));
}

INSTANTIATE_TEST_SUITE_P(Backends, StateCopyTest, ::testing::ValuesIn(test::TestBackends()),
                         [](const auto& info) { return info.param; });

TEST(TransfoXlModelTest, NoLogitsModeUpdatesStateLikeOtherModes) {
  ModelConfig c = test::SmallConfig();
  auto model = LoadModel(c, 4);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> first = RandomTokens(7, c.vocab_size, 1);
  const std::vector<int32_t> second = RandomTokens(3, c.vocab_size, 2);
  SessionState a = *model->NewState(), b = *model->NewState();
  Tensor untouched;
  ASSERT_TRUE(model->Forward({{first.data(), 7, &a}}, LogitsMode::kNone, &untouched).ok());
  EXPECT_FALSE(untouched.defined());
  Feed(*model, b, first, LogitsMode::kAll);
  EXPECT_EQ(a.position(), b.position());
  EXPECT_EQ(Feed(*model, a, second), Feed(*model, b, second));
}

TEST(TransfoXlModelTest, ZerosInitStartsWithFullMemory) {
  ModelConfig c = test::SmallConfig();
  c.memory_init = MemoryInit::kZeros;
  c.mem_len = 10;
  auto model = LoadModel(c);
  ASSERT_NE(model, nullptr);
  SessionState s = *model->NewState();
  EXPECT_EQ(s.position(), 0);
  ASSERT_EQ(static_cast<int64_t>(s.layers().size()), c.n_layer);
  for (const XlMemory& m : test::Rings(s)) {
    EXPECT_EQ(m.size(), c.mem_len);
    EXPECT_EQ(m.capacity(), c.mem_len);
    EXPECT_EQ(m.width(), c.attn_width());
  }
  Feed(*model, s, RandomTokens(4, c.vocab_size, 1));
  EXPECT_EQ(s.position(), 4);
  for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), c.mem_len);
}

TEST(TransfoXlModelTest, EmptyInitMemoryGrowsToMemLen) {
  ModelConfig c = test::SmallConfig();
  c.memory_init = MemoryInit::kEmpty;
  c.mem_len = 10;
  auto model = LoadModel(c);
  ASSERT_NE(model, nullptr);
  SessionState s = *model->NewState();
  for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), 0);
  Feed(*model, s, RandomTokens(4, c.vocab_size, 1));
  for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), 4);
  Feed(*model, s, RandomTokens(6, c.vocab_size, 2));
  for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), 10);  // exactly full
  Feed(*model, s, RandomTokens(1, c.vocab_size, 3));
  for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), 10);  // one past: still full
  EXPECT_EQ(s.position(), 11);
}

// With "zeros", memory rows are the keys/values of a zero hidden state: W_k·0 = 0 after post-LN
// blocks, W_k·LN(0) = W_k·β with pre-LN blocks (MODEL-SPEC §1.3).
TEST(TransfoXlModelTest, ZerosInitMemoryHoldsProjectionOfZeroHiddenState) {
  for (bool pre_lnorm : {false, true}) {
    ModelConfig c = test::SmallConfig();
    c.memory_init = MemoryInit::kZeros;
    c.pre_lnorm = pre_lnorm;
    c.mem_len = 3;
    auto model = LoadModel(c, 17);
    ASSERT_NE(model, nullptr);
    const std::vector<test::RawTensor> weights = test::RandomWeights(c, 17);
    auto tensor = [&](const std::string& name) {
      for (const test::RawTensor& t : weights) {
        if (t.name == name) {
          std::vector<float> v(t.bytes.size() / 4);
          std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
          return v;
        }
      }
      ADD_FAILURE() << "no tensor " << name;
      return std::vector<float>();
    };
    const SessionState s = *model->NewState();
    const int64_t hd = c.attn_width(), d = c.d_model;
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      const std::vector<float> qkv = tensor(p + "attn.qkv.weight");
      const std::vector<float> beta = tensor(p + "attn.ln.bias");
      for (int64_t j = 0; j < c.mem_len; ++j) {
        const float* k = test::Ring(s, l).KeyRow(j);
        const float* v = test::Ring(s, l).ValueRow(j);
        for (int64_t o = 0; o < hd; ++o) {
          double want_k = 0.0, want_v = 0.0;
          if (pre_lnorm) {
            for (int64_t i = 0; i < d; ++i) {
              want_k += static_cast<double>(qkv[(hd + o) * d + i]) * beta[i];
              want_v += static_cast<double>(qkv[(2 * hd + o) * d + i]) * beta[i];
            }
          }
          EXPECT_NEAR(k[o], want_k, 1e-6) << "layer " << l << " row " << j << " col " << o;
          EXPECT_NEAR(v[o], want_v, 1e-6) << "layer " << l << " row " << j << " col " << o;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// mem_len 0 and the distance table

TEST(TransfoXlModelTest, MemLenZeroKeepsNoState) {
  for (MemoryInit init : {MemoryInit::kEmpty, MemoryInit::kZeros}) {
    ModelConfig c = test::SmallConfig();
    c.mem_len = 0;
    c.memory_init = init;
    auto model = LoadModel(c, 8);
    ASSERT_NE(model, nullptr);
    EXPECT_EQ(model->StateBytes(), 0u);
    const std::vector<int32_t> first = RandomTokens(5, c.vocab_size, 1);
    const std::vector<int32_t> second = RandomTokens(6, c.vocab_size, 2);
    SessionState s = *model->NewState();
    EXPECT_EQ(s.bytes(), 0u);
    Feed(*model, s, first);
    for (const XlMemory& m : test::Rings(s)) EXPECT_EQ(m.size(), 0);
    // Nothing carries over: the second segment equals a fresh pass over it alone.
    const std::vector<float> continued = Feed(*model, s, second);
    SessionState fresh = *model->NewState();
    EXPECT_TRUE(test::NearRelative(continued, Feed(*model, fresh, second), kTol));
    EXPECT_EQ(s.position(), 11);
    // Decode: each token alone.
    SessionState d = *model->NewState();
    for (int32_t t : second) {
      SessionState alone = *model->NewState();
      EXPECT_TRUE(test::NearRelative(Feed(*model, d, {t}, LogitsMode::kLast),
                                     Feed(*model, alone, {t}, LogitsMode::kLast), kTol));
    }
  }
}

// mem_len 0 with same_length: the Hugging Face rule leaves every query mem_len = 0 keys, so
// attention contributes nothing and each position's logits depend on its own token only, in the
// decode path and in every row of the 128-row query blocks.
// same_length with no memory would leave every query with zero visible keys (not even itself):
// the checkpoint is refused at load time, naming the field.
TEST(TransfoXlModelTest, SameLengthWithoutMemoryIsRejected) {
  ModelConfig c = test::SmallConfig();
  c.mem_len = 0;
  c.same_length = true;
  test::ScopedTempDir dir = test::WriteCheckpoint(c, 8);
  auto model = TransfoXlModel::Load(dir.path());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(model.status().message()).find("same_length"), std::string::npos)
      << model.status();
}

// A prefill segment longer than mem_len + 512 needs distances beyond the precomputed table
// (clamp_len 0). Compared with a model whose memory is long enough for the whole document (same
// weights): same logits from a fresh state, and after a first segment that fits in both memories.
TEST(TransfoXlModelTest, SegmentBeyondPrecomputedDistanceTable) {
  ModelConfig small = test::SmallConfig();
  small.mem_len = 8;
  small.clamp_len = 0;
  small.memory_init = MemoryInit::kEmpty;
  ModelConfig large = small;
  large.mem_len = 700;
  auto a = LoadModel(small, 31);
  auto b = LoadModel(large, 31);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::vector<int32_t> doc = RandomTokens(600, small.vocab_size, 5);

  SessionState sa = *a->NewState(), sb = *b->NewState();
  const std::vector<float> one_pass = Feed(*b, sb, doc);
  EXPECT_TRUE(test::NearRelative(Feed(*a, sa, doc), one_pass, kTol)) << "fresh 600-token segment";

  SessionState segmented = *b->NewState();
  EXPECT_TRUE(test::NearRelative(FeedInSegments(*b, segmented, doc, {100, 100, 100, 100, 100, 100}),
                                 one_pass, kTol))
      << "600 tokens in segments of 100";

  // 8 tokens (all kept by both memories), then 600 more: 608 distances on the small model.
  const std::vector<int32_t> head = RandomTokens(8, small.vocab_size, 6);
  SessionState ha = *a->NewState(), hb = *b->NewState();
  Feed(*a, ha, head, LogitsMode::kNone);
  Feed(*b, hb, head, LogitsMode::kNone);
  EXPECT_TRUE(test::NearRelative(Feed(*a, ha, doc), Feed(*b, hb, doc), kTol))
      << "600-token segment after a full 8-row memory";
}

// ---------------------------------------------------------------------------------------------
// Input validation: INVALID_ARGUMENT and no state modified.

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = test::SmallConfig();
    config_.mem_len = 6;
    config_.memory_init = MemoryInit::kEmpty;
    model_ = LoadModel(config_, 9);
    ASSERT_NE(model_, nullptr);
    state_ = *model_->NewState();
    Feed(*model_, state_, RandomTokens(4, config_.vocab_size, 1), LogitsMode::kNone);
    reference_ = *model_->CloneState(state_);
  }

  // state_ is exactly as reference_: same position, same logits for the same next tokens.
  void ExpectStateUnchanged() {
    EXPECT_EQ(state_.position(), reference_.position());
    EXPECT_EQ(test::Ring(state_, 0).size(), test::Ring(reference_, 0).size());
    const std::vector<int32_t> next = RandomTokens(3, config_.vocab_size, 2);
    EXPECT_EQ(Feed(*model_, state_, next), Feed(*model_, reference_, next));
  }

  absl::Status Run(const std::vector<SequenceInput>& batch) {
    Tensor logits;
    return model_->Forward(batch, LogitsMode::kAll, &logits);
  }

  ModelConfig config_;
  std::unique_ptr<TransfoXlModel> model_;
  SessionState state_;
  SessionState reference_;
};

TEST_F(ValidationTest, TokenIdEqualToVocabSize) {
  const std::vector<int32_t> tokens = {1, static_cast<int32_t>(config_.vocab_size), 2};
  const absl::Status status = Run({{tokens.data(), 3, &state_}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  ExpectStateUnchanged();
}

TEST_F(ValidationTest, NegativeTokenId) {
  const std::vector<int32_t> tokens = {-1};
  const absl::Status status = Run({{tokens.data(), 1, &state_}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  ExpectStateUnchanged();
}

TEST_F(ValidationTest, BadTokenInLaterSequenceLeavesEarlierStateUntouched) {
  SessionState other = *model_->NewState();
  const std::vector<int32_t> good = {1, 2, 3};
  const std::vector<int32_t> bad = {0, static_cast<int32_t>(config_.vocab_size) + 5};
  const absl::Status status = Run({{good.data(), 3, &state_}, {bad.data(), 2, &other}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(other.position(), 0);
  ExpectStateUnchanged();
}

TEST_F(ValidationTest, LargestValidTokenIdIsAccepted) {
  const std::vector<int32_t> tokens = {0, static_cast<int32_t>(config_.vocab_size) - 1};
  EXPECT_TRUE(Run({{tokens.data(), 2, &state_}}).ok());
  EXPECT_EQ(state_.position(), reference_.position() + 2);
}

TEST_F(ValidationTest, SameStateTwiceInOneBatch) {
  const std::vector<int32_t> tokens = {1, 2};
  const absl::Status status = Run({{tokens.data(), 2, &state_}, {tokens.data(), 1, &state_}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  ExpectStateUnchanged();
}

TEST_F(ValidationTest, StateFromAnotherModel) {
  const std::vector<int32_t> tokens = {1, 2};
  ModelConfig other_mem = config_;
  other_mem.mem_len = 7;
  ModelConfig other_width = config_;
  other_width.d_head = config_.d_head + 1;
  ModelConfig other_depth = config_;
  other_depth.n_layer = config_.n_layer + 1;
  for (const ModelConfig& oc : {other_mem, other_width, other_depth}) {
    auto other = LoadModel(oc, 9);
    ASSERT_NE(other, nullptr);
    SessionState foreign = *other->NewState();
    const absl::Status status = Run({{tokens.data(), 2, &foreign}});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(foreign.position(), 0);
    // Together with a valid state: neither is modified.
    const absl::Status mixed = Run({{tokens.data(), 2, &state_}, {tokens.data(), 2, &foreign}});
    EXPECT_EQ(mixed.code(), absl::StatusCode::kInvalidArgument) << mixed;
  }
  SessionState blank;  // never made by any model
  EXPECT_EQ(Run({{tokens.data(), 2, &blank}}).code(), absl::StatusCode::kInvalidArgument);
  ExpectStateUnchanged();
}

TEST_F(ValidationTest, EmptyInputs) {
  const std::vector<int32_t> tokens = {1};
  EXPECT_EQ(Run({{tokens.data(), 0, &state_}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run({{tokens.data(), -1, &state_}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run({{nullptr, 1, &state_}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run({{tokens.data(), 1, nullptr}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run({}).code(), absl::StatusCode::kInvalidArgument);
  ExpectStateUnchanged();
}

// ---------------------------------------------------------------------------------------------
// Loading

TEST(TransfoXlModelTest, LoadReportsMissingAndBrokenCheckpoints) {
  test::ScopedTempDir empty("empty_ckpt");
  auto missing = TransfoXlModel::Load(empty.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  const ModelConfig c = test::SmallConfig();
  std::vector<test::RawTensor> weights = test::RandomWeights(c, 1);
  weights.pop_back();  // lm_head.bias
  test::ScopedTempDir broken = test::WriteCheckpointFiles(test::ConfigJson(c), weights);
  auto loaded = TransfoXlModel::Load(broken.path());
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(loaded.status().message()).find("lm_head.bias"), std::string::npos);

  test::ScopedTempDir no_weights("no_weights");
  test::WriteFile(no_weights.File("config.json"), test::ConfigJson(c));
  auto no_file = TransfoXlModel::Load(no_weights.path());
  ASSERT_FALSE(no_file.ok());
  EXPECT_EQ(no_file.status().code(), absl::StatusCode::kNotFound);
}

TEST(TransfoXlModelTest, RandomConfigsRunAndAreDeterministic) {
  for (uint32_t seed = 0; seed < 12; ++seed) {
    const ModelConfig c = test::RandomConfig(seed);
    auto model = LoadModel(c, seed);
    ASSERT_NE(model, nullptr) << "seed " << seed;
    const std::vector<int32_t> doc = RandomTokens(2 * c.mem_len + 3, c.vocab_size, seed);
    SessionState a = *model->NewState(), b = *model->NewState();
    const std::vector<float> first = Feed(*model, a, doc);
    for (float v : first) ASSERT_TRUE(std::isfinite(v)) << "seed " << seed;
    EXPECT_EQ(first, Feed(*model, b, doc)) << "seed " << seed;
    EXPECT_EQ(model->NewState()->bytes(), model->StateBytes());
  }
}

}  // namespace
}  // namespace mnemo::engine
