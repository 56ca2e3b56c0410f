// server/ core without a transport: the scheduler batches concurrent streams without changing
// their results, documents give the same memory however they are split, sessions are exclusive,
// versioned, expire, and move between tiers exactly, and cancellation stops work. Threads call
// the core directly so ThreadSanitizer sees every synchronisation.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/session_manager.h"
#include "server/session_runner.h"
#include "server/text_chunker.h"
#include "tests/test_checkpoint.h"

namespace mnemo::server {
namespace {

std::vector<int32_t> Document(int n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

class ServerCoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Load(SchedulerOptions{}); }

  // `layers`: config.json's "layers" list (raw JSON), or empty for dense layers.
  void Load(SchedulerOptions scheduling, const std::string& layers = "") {
    registry_.reset();
    config_ = test::SmallConfig();
    config_.memory_init = engine::MemoryInit::kZeros;
    if (!layers.empty()) {
      config_.n_layer = static_cast<int64_t>(std::count(layers.begin(), layers.end(), '{'));
      auto fields = test::ConfigFields(config_);
      fields.emplace_back("layers", layers);
      auto parsed = engine::ParseModelConfig(test::RenderJsonObject(fields));
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      config_ = *parsed;
    }
    dir_ = std::make_unique<test::ScopedTempDir>(test::WriteCheckpoint(config_, 11));
    auto registry = ModelRegistry::Load({{"small", dir_->path()}}, "cpu", /*segment_tokens=*/5,
                                        scheduling, &metrics_);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
    model_ = *registry_->Find("");
  }

  SessionMemory Fresh() {
    SessionMemory m;
    m.state = *model_->model->NewState();
    return m;
  }

  // Greedy continuation of `doc` appended to a fresh memory.
  std::vector<int32_t> Continue(SessionMemory& memory, const std::vector<int32_t>& doc, int n) {
    RequestControl control;
    EXPECT_TRUE(AppendTokens(*model_, memory, doc, control, nullptr).ok());
    GenerationParams params;
    params.max_tokens = n;
    params.sampling.temperature = 0.8f;
    params.sampling.seed = 5;
    params.ignore_eos = true;
    std::vector<int32_t> out;
    auto result = Generate(*model_, memory, params, doc, control, [&](const GeneratedToken& t) {
      out.push_back(t.sample.id);
      return true;
    });
    EXPECT_TRUE(result.ok()) << result.status();
    return out;
  }

  std::vector<float> ScoreOf(SessionMemory memory, const std::vector<int32_t>& text) {
    auto scored = Score(*model_, memory, text, RequestControl{});
    EXPECT_TRUE(scored.ok()) << scored.status();
    std::vector<float> out;
    for (const ScoredToken& t : *scored) out.push_back(t.logprob);
    return out;
  }

  double MaxBatchObserved() {
    const std::string text = prometheus::TextSerializer().Serialize(metrics_.registry()->Collect());
    double max_le = 0;
    // The smallest bucket bound whose count equals the total count bounds the largest batch.
    size_t pos = text.find("mnemo_batch_size_count ");
    const double count = std::stod(text.substr(pos + 23));
    for (double le : {1.0, 2.0, 4.0, 8.0, 16.0}) {
      char key[64];
      std::snprintf(key, sizeof(key), "mnemo_batch_size_bucket{le=\"%g\"} ", le);
      pos = text.find(key);
      if (pos != std::string::npos && std::stod(text.substr(pos + std::strlen(key))) < count) {
        max_le = le;
      }
    }
    return max_le;  // 1 means some batch had more than 1 sequence
  }

  engine::ModelConfig config_;
  Metrics metrics_;
  std::unique_ptr<test::ScopedTempDir> dir_;
  std::unique_ptr<ModelRegistry> registry_;
  LoadedModel* model_ = nullptr;
};

TEST_F(ServerCoreTest, ConcurrentStreamsShareForwardPassesWithoutChangingResults) {
  SchedulerOptions scheduling;
  scheduling.batch_wait = absl::Seconds(2);  // ample: all streams are registered before they run
  Load(scheduling);
  constexpr int kStreams = 4;
  std::vector<std::vector<int32_t>> docs, alone(kStreams), together(kStreams);
  for (int i = 0; i < kStreams; ++i)
    docs.push_back(Document(23 + 3 * i, 100 + i, config_.vocab_size));
  for (int i = 0; i < kStreams; ++i) {
    SessionMemory m = Fresh();
    alone[i] = Continue(m, docs[i], 12);
  }
  std::barrier sync(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      Scheduler::ActiveStream active(*model_->scheduler);
      sync.arrive_and_wait();
      SessionMemory m = Fresh();
      together[i] = Continue(m, docs[i], 12);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) EXPECT_EQ(together[i], alone[i]) << "stream " << i;
  EXPECT_GE(MaxBatchObserved(), 1.0) << "no forward pass held more than one sequence";
}

// A pass waits for the streams the last pass answered: from the end of that pass even when the
// first queued step was submitted during it (else the streams take turns in half-full passes),
// for batch_wait or a quarter of the last pass's time, whichever is longer.
TEST(PassDeadlineTest, CountsFromTheLastPassEndForAShareOfItsTime) {
  const absl::Time end = absl::FromUnixSeconds(1000);
  const absl::Duration wait = absl::Microseconds(500);
  // Queued during a 100 ms pass: 25 ms after its end.
  EXPECT_EQ(PassDeadline(end - absl::Milliseconds(60), end, absl::Milliseconds(100), wait),
            end + absl::Milliseconds(25));
  // Submitted after the pass: from the submission.
  EXPECT_EQ(PassDeadline(end + absl::Milliseconds(3), end, absl::Milliseconds(100), wait),
            end + absl::Milliseconds(28));
  // A short pass: batch_wait.
  EXPECT_EQ(PassDeadline(end - absl::Microseconds(100), end, absl::Microseconds(400), wait),
            end + wait);
  // No pass yet.
  EXPECT_EQ(PassDeadline(end, absl::InfinitePast(), absl::ZeroDuration(), wait), end + wait);
  EXPECT_EQ(PassDeadline(end, absl::InfinitePast(), absl::ZeroDuration(), absl::ZeroDuration()),
            end);
}

TEST_F(ServerCoreTest, TheMemoryDoesNotDependOnHowADocumentWasSplit) {
  const std::vector<int32_t> doc = Document(61, 7, config_.vocab_size);
  const std::vector<int32_t> probe = Document(9, 8, config_.vocab_size);
  SessionMemory whole = Fresh();
  ASSERT_TRUE(AppendTokens(*model_, whole, doc, {}, nullptr).ok());
  for (int split : {1, 2, 3, 7, 13}) {
    SessionMemory pieces = Fresh();
    int64_t segments = 0;
    for (size_t i = 0; i < doc.size(); i += static_cast<size_t>(split)) {
      const size_t n = std::min(static_cast<size_t>(split), doc.size() - i);
      ASSERT_TRUE(AppendTokens(*model_, pieces, std::span(doc).subspan(i, n), {}, &segments).ok());
    }
    EXPECT_EQ(segments, 12) << "61 tokens, segments of 5, the tail of 1 kept pending";
    EXPECT_EQ(pieces.pending, whole.pending);
    EXPECT_EQ(ScoreOf(std::move(pieces), probe), ScoreOf(*CopyMemory(*model_, whole), probe))
        << "split " << split;
  }
}

// Every long-context kind behind the runner: whole segments make the memory independent of how
// the document arrived, compressed rows are counted (metric and state), and a host round trip
// (demote + promote) is exact.
TEST_F(ServerCoreTest, LongContextKindsServeSplitFreeAndCountCompressions) {
  Load(SchedulerOptions{},
       R"([{"attention": "sparse", "pattern": "bigbird", "block": 3, "span": 12,
            "global_tokens": [1, 2], "max_global": 3},
           {"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 3, "history": 20},
           {"attention": "linear", "feature_map": "elu"},
           {"attention": "dense", "memory": "compressive", "compression": "mean_pool",
            "compression_rate": 2, "cmem_len": 4},
           {"attention": "dense", "memory": "compressive", "compression": "mean_pool",
            "compression_rate": 2, "cmem_len": 4, "residual_attention": true},
           {"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 5},
           {"attention": "routing", "n_clusters": 3, "history": 11}])");
  ASSERT_EQ(config_.n_layer, 7);
  const std::vector<int32_t> doc = Document(61, 7, config_.vocab_size);
  const std::vector<int32_t> probe = Document(9, 8, config_.vocab_size);
  SessionMemory whole = Fresh();
  ASSERT_TRUE(AppendTokens(*model_, whole, doc, {}, nullptr).ok());
  // 60 tokens ran; the zero-filled memory of 16 made every one of them evict a row.
  EXPECT_EQ(whole.state.tokens_compressed(), 60);
  EXPECT_EQ(whole.state.compressions(), 2 * 30);
  const std::string text = prometheus::TextSerializer().Serialize(metrics_.registry()->Collect());
  const size_t at = text.find("\nmnemo_memory_compressions_total ");  // the sample, not # HELP
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(std::stod(text.substr(at + 33)), 60.0);
  for (int split : {1, 4, 13}) {
    SessionMemory pieces = Fresh();
    for (size_t i = 0; i < doc.size(); i += static_cast<size_t>(split)) {
      const size_t n = std::min(static_cast<size_t>(split), doc.size() - i);
      ASSERT_TRUE(AppendTokens(*model_, pieces, std::span(doc).subspan(i, n), {}, nullptr).ok());
    }
    EXPECT_EQ(ScoreOf(std::move(pieces), probe), ScoreOf(*CopyMemory(*model_, whole), probe))
        << "split " << split;
  }
  SessionMemory round_trip;
  round_trip.state = *model_->model->StateFromHost(*model_->model->StateToHost(whole.state));
  round_trip.pending = whole.pending;
  EXPECT_EQ(ScoreOf(std::move(round_trip), probe), ScoreOf(*CopyMemory(*model_, whole), probe));
  EXPECT_EQ(whole.state.bytes(), model_->model->StateBytes());
}

TEST_F(ServerCoreTest, ScoringWithoutContextSkipsTheFirstToken) {
  const std::vector<int32_t> text = Document(8, 3, config_.vocab_size);
  EXPECT_EQ(ScoreOf(Fresh(), text).size(), text.size() - 1);
  SessionMemory with_context = Fresh();
  ASSERT_TRUE(
      AppendTokens(*model_, with_context, Document(4, 4, config_.vocab_size), {}, nullptr).ok());
  EXPECT_EQ(ScoreOf(std::move(with_context), text).size(), text.size());
}

TEST_F(ServerCoreTest, CancellationAndDeadlinesStopAtTheNextStep) {
  // A failed request leaves its memory valid but unspecified (callers restore a snapshot), so
  // each case starts from a fresh one.
  auto memory = [&] {
    SessionMemory m = Fresh();
    EXPECT_TRUE(AppendTokens(*model_, m, Document(7, 1, config_.vocab_size), {}, nullptr).ok());
    return m;
  };
  SessionMemory m = memory();
  GenerationParams params;
  params.max_tokens = 1000;
  params.sampling.temperature = 0;
  params.ignore_eos = true;
  std::atomic<int> tokens{0};
  RequestControl cancel;
  cancel.cancelled = [&] { return tokens.load() >= 3; };
  auto result = Generate(*model_, m, params, {}, cancel, [&](const GeneratedToken&) {
    ++tokens;
    return true;
  });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(tokens.load(), 3);
  RequestControl late;
  late.deadline = absl::Now() - absl::Seconds(1);
  m = memory();
  result = Generate(*model_, m, params, {}, late, [](const GeneratedToken&) { return true; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
  m = memory();
  result = Generate(*model_, m, params, {}, {}, [](const GeneratedToken&) { return false; });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << "the client went away";
}

TEST_F(ServerCoreTest, SessionsAreExclusiveVersionedAndExpire) {
  SessionManagerOptions options;
  options.max_sessions = 2;
  options.default_ttl = absl::Minutes(5);
  SessionManager sessions(options, &metrics_);
  auto a = sessions.Create(*model_, {});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id.size(), 32u);
  EXPECT_EQ(a->state_bytes, static_cast<int64_t>(model_->model->StateBytes()));
  {
    auto lease = sessions.Acquire(a->id, 0);
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(sessions.Acquire(a->id, 0).status().code(), absl::StatusCode::kAborted);
    EXPECT_EQ(sessions.Delete(a->id, 0).code(), absl::StatusCode::kAborted);
    (*lease)->Commit(10);
  }
  EXPECT_EQ(sessions.Get(a->id)->state_version, 1);
  EXPECT_EQ(sessions.Get(a->id)->tokens_seen, 10);
  EXPECT_EQ(sessions.Acquire(a->id, 7).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(sessions.Acquire(a->id, 1).ok());
  EXPECT_EQ(sessions.Acquire("0123", 0).status().code(), absl::StatusCode::kNotFound);

  SessionOptions labelled;
  labelled.labels = {{"book", "dune"}};
  labelled.ttl = absl::Seconds(30);
  auto b = sessions.Create(*model_, labelled);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(sessions.Create(*model_, {}).status().code(), absl::StatusCode::kResourceExhausted);
  bool more = true;
  auto page = sessions.List(0, 1, {}, &more);
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].id, a->id);
  EXPECT_TRUE(more);
  page = sessions.List(page[0].sequence, 1, {}, &more);
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].id, b->id);
  EXPECT_FALSE(more);
  EXPECT_EQ(sessions.List(0, 10, {{"book", "dune"}}, &more).size(), 1u);

  EXPECT_EQ(sessions.ReapExpired(absl::Now() + absl::Seconds(60)), 1) << "b's 30 s ran out";
  EXPECT_EQ(sessions.Get(b->id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(sessions.Delete(a->id, 1).ok());
  EXPECT_EQ(sessions.size(), 0);
  EXPECT_EQ(sessions.device_bytes(), 0);
}

TEST_F(ServerCoreTest, IdleStatesMoveToHostAndBackExactly) {
  const int64_t bytes = static_cast<int64_t>(model_->model->StateBytes());
  SessionManagerOptions options;
  options.device_budget_bytes = 2 * bytes;
  SessionManager sessions(options, &metrics_);
  const std::vector<int32_t> doc = Document(17, 9, config_.vocab_size);
  const std::vector<int32_t> probe = Document(6, 10, config_.vocab_size);
  auto a = sessions.Create(*model_, {});
  ASSERT_TRUE(a.ok());
  std::vector<float> expected;
  {
    auto lease = *sessions.Acquire(a->id, 0);
    ASSERT_TRUE(AppendTokens(*model_, lease->memory(), doc, {}, nullptr).ok());
    lease->Commit(static_cast<int64_t>(doc.size()));
    expected = ScoreOf(*CopyMemory(*model_, lease->memory()), probe);
  }
  auto b = sessions.Create(*model_, {});
  auto c = sessions.Create(*model_, {});  // over budget: a, the least recently used, moves out
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_EQ(sessions.Get(a->id)->tier, Tier::kHost);
  EXPECT_EQ(sessions.device_bytes(), 2 * bytes);
  EXPECT_EQ(sessions.host_bytes(), bytes);
  {
    auto lease = *sessions.Acquire(a->id, 0);  // promoted; b (older than c) moves out
    EXPECT_STREQ(lease->state_source(), "promoted");
    EXPECT_EQ(ScoreOf(*CopyMemory(*model_, lease->memory()), probe), expected);
    EXPECT_EQ(sessions.Get(b->id)->tier, Tier::kHost);
    // With a and c leased, b cannot come back.
    auto lease_c = *sessions.Acquire(c->id, 0);
    EXPECT_EQ(sessions.Acquire(b->id, 0).status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(sessions.device_bytes() + sessions.host_bytes(), 3 * bytes);
}

TEST_F(ServerCoreTest, ForkCopiesTheMemory) {
  SessionManager sessions({}, &metrics_);
  auto a = sessions.Create(*model_, {});
  const std::vector<int32_t> doc = Document(12, 2, config_.vocab_size);
  {
    auto lease = *sessions.Acquire(a->id, 0);
    ASSERT_TRUE(AppendTokens(*model_, lease->memory(), doc, {}, nullptr).ok());
    lease->Commit(12);
  }
  auto fork = sessions.Fork(a->id, 1, {});
  ASSERT_TRUE(fork.ok()) << fork.status();
  EXPECT_EQ(fork->tokens_seen, 12);
  EXPECT_EQ(fork->pending_tokens, sessions.Get(a->id)->pending_tokens);
  const std::vector<int32_t> probe = Document(5, 3, config_.vocab_size);
  std::vector<float> from_fork, from_source;
  {
    auto lease = *sessions.Acquire(fork->id, 0);
    from_fork = ScoreOf(*CopyMemory(*model_, lease->memory()), probe);
    // Changing the fork leaves the source alone.
    ASSERT_TRUE(
        AppendTokens(*model_, lease->memory(), Document(30, 4, config_.vocab_size), {}, nullptr)
            .ok());
  }
  auto lease = *sessions.Acquire(a->id, 0);
  from_source = ScoreOf(*CopyMemory(*model_, lease->memory()), probe);
  EXPECT_EQ(from_fork, from_source);
}

TEST_F(ServerCoreTest, ManyThreadsOnSharedSessionsKeepTheAccountsExact) {
  SessionManagerOptions options;
  options.device_budget_bytes = 3 * static_cast<int64_t>(model_->model->StateBytes());
  SessionManager sessions(options, &metrics_);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(sessions.Create(*model_, {})->id);
  std::atomic<int> done{0}, aborted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t));
      for (int i = 0; i < 30; ++i) {
        auto lease = sessions.Acquire(ids[rng() % ids.size()], 0);
        if (!lease.ok()) {
          ++aborted;  // busy, or no device room while others hold theirs
          continue;
        }
        Scheduler::ActiveStream active(*model_->scheduler);
        const auto doc = Document(3 + static_cast<int>(rng() % 9), rng(), config_.vocab_size);
        ASSERT_TRUE(AppendTokens(*model_, (*lease)->memory(), doc, {}, nullptr).ok());
        (*lease)->Commit(static_cast<int64_t>(doc.size()));
        ++done;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(done + aborted, 180);
  EXPECT_GT(done.load(), 0);
  int64_t version_sum = 0;
  for (const auto& id : ids) version_sum += sessions.Get(id)->state_version;
  EXPECT_EQ(version_sum, done.load());
  EXPECT_EQ(sessions.device_bytes() + sessions.host_bytes(),
            5 * static_cast<int64_t>(model_->model->StateBytes()));
}

// Speculative serving (--speculative; the model directory's draft.json names the draft).
class SpeculativeServerTest : public ServerCoreTest {
 protected:
  void SetUp() override {
    // A compressive layer too: its memory is the hardest to keep exactly in step.
    Load(SchedulerOptions{},
         R"([{"attention": "dense", "memory": "compressive", "compression": "conv1d",
              "compression_rate": 2, "cmem_len": 3}, {"attention": "dense"}])");
  }

  // A draft with the model's own weights (seed 11) proposes exactly the model's greedy tokens as
  // long as its memory holds the same document: any drift shows as a rejection. Another seed
  // makes a draft that mostly disagrees.
  void LoadSpeculative(uint32_t draft_seed, int draft_tokens) {
    draft_dir_ = std::make_unique<test::ScopedTempDir>(test::WriteCheckpoint(config_, draft_seed));
    std::ofstream(dir_->File("draft.json")) << R"({"model": ")" << draft_dir_->path()
                                            << R"(", "draft_tokens": )" << draft_tokens << "}";
    auto registry = ModelRegistry::Load({{"small", dir_->path()}}, "cpu", /*segment_tokens=*/5,
                                        SchedulerOptions{}, &metrics_, {}, /*speculative=*/true);
    ASSERT_TRUE(registry.ok()) << registry.status();
    spec_registry_ = *std::move(registry);
    spec_ = *spec_registry_->Find("");
    ASSERT_NE(spec_->draft, nullptr);
    ASSERT_EQ(spec_->draft_tokens, draft_tokens);
  }

  struct Generated {
    std::vector<int32_t> ids;
    std::vector<float> logprobs;
    int64_t proposed = 0, accepted = 0;
  };

  static Generated Gen(LoadedModel& model, SessionMemory& memory, std::vector<int32_t> history,
                       int64_t max_tokens, std::vector<int32_t> stop_ids = {}) {
    GenerationParams params;
    params.max_tokens = max_tokens;
    params.sampling.temperature = 0;
    params.stop_ids = std::move(stop_ids);
    params.ignore_eos = true;
    Generated out;
    auto result = Generate(model, memory, params, std::move(history), RequestControl{},
                           [&](const GeneratedToken& t) {
                             out.ids.push_back(t.sample.id);
                             out.logprobs.push_back(t.sample.logprob);
                             return true;
                           });
    EXPECT_TRUE(result.ok()) << result.status();
    if (result.ok()) {
      EXPECT_EQ(result->generated, static_cast<int64_t>(out.ids.size()));
      out.proposed = result->draft_proposed;
      out.accepted = result->draft_accepted;
    }
    return out;
  }

  static void ExpectSame(const Generated& got, const Generated& want) {
    ASSERT_EQ(got.ids, want.ids);
    for (size_t i = 0; i < got.logprobs.size(); ++i) {
      EXPECT_NEAR(got.logprobs[i], want.logprobs[i], 1e-4) << "token " << i;
    }
  }

  std::unique_ptr<test::ScopedTempDir> draft_dir_;
  std::unique_ptr<ModelRegistry> spec_registry_;
  LoadedModel* spec_ = nullptr;
};

// A request script (ingest, generate stopped inside a pass, ingest, one-token and longer
// generations, score) gives the same tokens and the same memory with and without the draft.
TEST_F(SpeculativeServerTest, SessionsGenerateAndRememberWhatThePlainModelDoes) {
  const std::vector<int32_t> doc = Document(23, 21, config_.vocab_size);
  const std::vector<int32_t> more = Document(11, 22, config_.vocab_size);
  const std::vector<int32_t> probe = Document(9, 23, config_.vocab_size);
  // The plain model's run, which also picks a stop token met a few tokens in.
  SessionMemory plain = Fresh();
  ASSERT_TRUE(AppendTokens(*model_, plain, doc, {}, nullptr).ok());
  SessionMemory look = *CopyMemory(*model_, plain);
  const std::vector<int32_t> stop = {Gen(*model_, look, doc, 12).ids[4]};
  std::vector<Generated> want;
  want.push_back(Gen(*model_, plain, doc, 12, stop));
  ASSERT_TRUE(AppendTokens(*model_, plain, more, {}, nullptr).ok());
  want.push_back(Gen(*model_, plain, {}, 1));
  want.push_back(Gen(*model_, plain, {}, 13));
  const std::vector<float> want_scores = ScoreOf(*CopyMemory(*model_, plain), probe);

  for (uint32_t draft_seed : {11u, 12u}) {
    for (int k : {1, 3}) {
      SCOPED_TRACE("draft seed " + std::to_string(draft_seed) + ", k " + std::to_string(k));
      LoadSpeculative(draft_seed, k);
      auto memory = NewMemory(*spec_);
      ASSERT_TRUE(memory.ok()) << memory.status();
      ASSERT_TRUE(AppendTokens(*spec_, *memory, doc, {}, nullptr).ok());
      std::vector<Generated> got;
      got.push_back(Gen(*spec_, *memory, doc, 12, stop));
      ASSERT_TRUE(AppendTokens(*spec_, *memory, more, {}, nullptr).ok());
      got.push_back(Gen(*spec_, *memory, {}, 1));
      got.push_back(Gen(*spec_, *memory, {}, 13));
      int64_t proposed = 0, accepted = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        SCOPED_TRACE("generation " + std::to_string(i));
        ExpectSame(got[i], want[i]);
        proposed += got[i].proposed;
        accepted += got[i].accepted;
      }
      EXPECT_GT(proposed, 0);
      if (draft_seed == 11) {
        EXPECT_EQ(accepted, proposed) << "the draft's memory drifted from the model's";
      } else {
        EXPECT_LT(accepted, proposed);
      }
      const std::vector<float> scores = ScoreOf(*CopyMemory(*spec_, *memory), probe);
      ASSERT_EQ(scores.size(), want_scores.size());
      for (size_t i = 0; i < scores.size(); ++i) EXPECT_NEAR(scores[i], want_scores[i], 1e-4);
    }
  }
}

// The draft state is part of the session: counted in its bytes, moved to the host and back,
// forked, and still in step with the model's afterwards.
TEST_F(SpeculativeServerTest, DraftStatesAreCountedMovedAndForked) {
  LoadSpeculative(11, 3);
  const int64_t bytes = spec_->SessionBytes();
  EXPECT_EQ(bytes,
            static_cast<int64_t>(spec_->model->StateBytes() + spec_->draft->model->StateBytes()));
  SessionManagerOptions options;
  options.device_budget_bytes = 2 * bytes;
  SessionManager sessions(options, &metrics_);
  const std::vector<int32_t> doc = Document(19, 31, config_.vocab_size);
  SessionMemory plain = Fresh();
  ASSERT_TRUE(AppendTokens(*model_, plain, doc, {}, nullptr).ok());
  const Generated want = Gen(*model_, plain, doc, 10);

  auto a = sessions.Create(*spec_, {});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->state_bytes, bytes);
  {
    auto lease = *sessions.Acquire(a->id, 0);
    ASSERT_TRUE(AppendTokens(*spec_, lease->memory(), doc, {}, nullptr).ok());
    lease->Commit(static_cast<int64_t>(doc.size()));
  }
  auto fork = sessions.Fork(a->id, 0, {});
  ASSERT_TRUE(fork.ok()) << fork.status();
  auto c = sessions.Create(*spec_, {});  // over budget: a or its fork moves to the host
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(
      (sessions.Get(a->id)->tier == Tier::kHost) + (sessions.Get(fork->id)->tier == Tier::kHost),
      1);
  EXPECT_EQ(sessions.device_bytes() + sessions.host_bytes(), 3 * bytes);
  for (const std::string& id : {a->id, fork->id}) {
    SCOPED_TRACE(id == a->id ? "source" : "fork");
    auto lease = sessions.Acquire(id, 0);
    ASSERT_TRUE(lease.ok()) << lease.status();
    const Generated got = Gen(*spec_, (*lease)->memory(), doc, 10);
    ExpectSame(got, want);
    EXPECT_GT(got.proposed, 0);
    EXPECT_EQ(got.accepted, got.proposed);
  }
}

// Drafts that cannot serve are refused at load, naming the model; without --speculative the
// draft.json is not read.
TEST_F(SpeculativeServerTest, UnfitDraftsAreRefusedAtLoad) {
  auto load = [&](bool speculative) {
    return ModelRegistry::Load({{"small", dir_->path()}}, "cpu", 5, SchedulerOptions{}, &metrics_,
                               {}, speculative);
  };
  engine::ModelConfig wide = config_;
  wide.vocab_size += 3;
  test::ScopedTempDir other = test::WriteCheckpoint(wide, 12);
  std::ofstream(dir_->File("draft.json")) << R"({"model": ")" << other.path() << R"("})";
  auto refused = load(true);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("model \"small\""), std::string::npos);
  EXPECT_NE(refused.status().message().find("vocabulary"), std::string::npos);
  auto plain = load(false);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->models()[0]->draft, nullptr);
  std::ofstream(dir_->File("draft.json")) << R"({"model": ")" << other.path() << R"(", "x": 1})";
  EXPECT_EQ(load(true).status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(dir_->File("draft.json")) << R"({"model": "/nonexistent/draft"})";
  EXPECT_EQ(load(true).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelRepositoryTest, ServesEverySubdirectoryWithAConfigByName) {
  test::ScopedTempDir repo("repo");
  const engine::ModelConfig config = test::SmallConfig();
  test::ScopedTempDir b = test::WriteCheckpoint(config, 1);
  test::ScopedTempDir a = test::WriteCheckpoint(config, 2);
  std::filesystem::create_directory_symlink(b.path(), repo.File("beta"));
  std::filesystem::create_directory_symlink(a.path(), repo.File("alpha"));
  std::filesystem::create_directory(repo.File("notes"));  // no config.json: not a model
  auto specs = ModelRepository(repo.path());
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[0].name, "alpha");
  EXPECT_EQ((*specs)[1].name, "beta");
  EXPECT_EQ(ModelRepository(repo.File("absent")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ParseModelSpec("bad name=/x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseModelSpec("=dir").status().code(), absl::StatusCode::kInvalidArgument);
}

// An encoder beside a decoder in one registry: each lookup names the other family; the encoder's
// scheduler takes windows from concurrent callers into shared passes, each getting what it would
// alone (run under TSan in CI: the loop, the tickets and the callers' buffers).
TEST(EncoderSchedulingTest, ConcurrentWindowsSharePassesAndTheRegistryNamesTheFamilies) {
  const test::ScopedTempDir decoder = test::WriteCheckpoint(test::SmallConfig(), 1);
  const test::ScopedTempDir encoder_dir = test::WriteRandomLongformer(7);
  Metrics metrics;
  SchedulerOptions options;
  options.batch_wait = absl::Milliseconds(20);
  auto registry = ModelRegistry::Load({{"dec", decoder.path()}, {"enc", encoder_dir.path()}}, "cpu",
                                      5, options, &metrics);
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_EQ((*registry)->Find("enc").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*registry)->FindEncoder("dec").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*registry)->FindEncoder("nope").status().code(), absl::StatusCode::kNotFound);
  auto found = (*registry)->FindEncoder("");
  ASSERT_TRUE(found.ok()) << found.status();
  LoadedEncoder& enc = **found;
  EXPECT_EQ(enc.name, "enc");

  constexpr int kCallers = 4, kWindows = 6;
  std::vector<std::vector<int32_t>> docs;
  for (int c = 0; c < kCallers; ++c) docs.push_back(test::RandomTokens(20 + c, 40, 10 + c));
  std::barrier start(kCallers);
  std::vector<std::vector<std::vector<float>>> got(kCallers);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      Scheduler::ActiveStream active(*enc.scheduler);
      start.arrive_and_wait();
      for (int w = 0; w < kWindows; ++w) {
        const engine::api::EncoderSequence seq{docs[c], {0}, {}};
        engine::api::EncodedWindow out;
        auto ticket = enc.scheduler->SubmitEncode(&seq, &out);
        ASSERT_TRUE(ticket.ok()) << ticket.status();
        ASSERT_TRUE((*ticket)->Wait(absl::InfiniteFuture(), {}).ok());
        ticket->reset();
        got[c].emplace_back(out.hidden.data<float>(),
                            out.hidden.data<float>() + out.hidden.numel());
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) {
    const engine::api::EncoderSequence seq{docs[c], {0}, {}};
    auto alone = enc.encoder->EncodeBatch(std::span(&seq, 1));
    ASSERT_TRUE(alone.ok()) << alone.status();
    const std::vector<float> want(
        alone->front().hidden.data<float>(),
        alone->front().hidden.data<float>() + alone->front().hidden.numel());
    for (const auto& window : got[c]) EXPECT_TRUE(test::NearRelative(window, want, 1e-5));
  }
  // Fewer passes than windows: some were shared.
  const std::string exposition =
      prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  const std::string key = "mnemo_engine_step_seconds_count{phase=\"encode\"} ";
  const size_t at = exposition.find(key);
  ASSERT_NE(at, std::string::npos) << exposition;
  const double passes = std::stod(exposition.substr(at + key.size()));
  EXPECT_LT(passes, kCallers * kWindows);
  (*registry)->Shutdown();
}

TEST(TextChunkerTest, RunsEndBeforeASpaceAndConcatenateToTheInput) {
  const std::string text = "It was the best of times,  it was the worst of times; é ü ok";
  for (size_t piece : {1, 2, 5, 11}) {
    TextChunker chunker;
    std::string joined;
    for (size_t i = 0; i < text.size(); i += piece) {
      const std::string ready = chunker.Push(text.substr(i, piece));
      if (!ready.empty()) {
        EXPECT_NE(ready.front(), '\0');
        EXPECT_TRUE(joined.empty() || ready.front() == ' ') << "a run starts at a space";
      }
      joined += ready;
    }
    joined += chunker.Finish();
    EXPECT_EQ(joined, text);
  }
  TextChunker tight(4);
  EXPECT_EQ(tight.Push("abcdé"), "abcdé") << "a long run without spaces is cut at a character";
}

}  // namespace
}  // namespace mnemo::server
