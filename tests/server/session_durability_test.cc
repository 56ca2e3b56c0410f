// Durable sessions in the server core, without a transport: a SessionManager on a real
// FileSessionStore in a temporary directory. SYNC versions survive a "restart" (a second manager
// on the same store) exactly; ASYNC versions become durable; host-budget eviction goes to the
// store and back exactly; a failing store fails SYNC changes and keeps the previous version; a
// corrupt stored snapshot is quarantined while other sessions are served. The real-process
// versions of these (kill -9, a second server, gRPC export/import) are in
// test_server_durability.py.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "server/error_reason.h"
#include "server/fault_injecting_store_env.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/session_manager.h"
#include "server/session_runner.h"
#include "server/session_snapshot.h"
#include "server/session_store.h"
#include "tests/test_checkpoint.h"

namespace mnemo::server {
namespace {

class SessionDurabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = test::SmallConfig();
    model_dir_ = std::make_unique<test::ScopedTempDir>(test::WriteCheckpoint(config_, 11));
    auto registry = ModelRegistry::Load({{"small", model_dir_->path()}}, "cpu",
                                        /*segment_tokens=*/5, SchedulerOptions{}, &metrics_);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
    model_ = *registry_->Find("");
    store_dir_ = std::filesystem::temp_directory_path() / ("mnemo-durability-" + NewSessionId());
    faults_ = std::make_unique<FaultInjectingStoreEnv>(PosixStoreEnv());
    OpenStore();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(store_dir_);
  }

  void OpenStore() {
    store_.reset();
    auto store = OpenFileSessionStore(store_dir_.string(), faults_.get());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  SessionManagerOptions Options(Durability durability) {
    SessionManagerOptions o;
    o.store = store_.get();
    o.default_durability = durability;
    o.reap_interval = absl::Milliseconds(20);
    return o;
  }

  // Appends `doc` to the session (committed, persisted for SYNC sessions).
  void Append(SessionManager& sessions, const std::string& id, const std::vector<int32_t>& doc) {
    auto lease = sessions.Acquire(id, 0);
    ASSERT_TRUE(lease.ok()) << lease.status();
    ASSERT_TRUE(AppendTokens(*model_, (*lease)->memory(), doc, {}, nullptr).ok());
    ASSERT_TRUE((*lease)->Persist(static_cast<int64_t>(doc.size())).ok());
    (*lease)->Commit(static_cast<int64_t>(doc.size()));
  }

  // Log-probabilities of `probe` after the session's memory (on a copy: the session is kept).
  std::vector<float> ScoreOf(SessionManager& sessions, const std::string& id,
                             const std::vector<int32_t>& probe, const char** source = nullptr) {
    auto lease = sessions.Acquire(id, 0);
    EXPECT_TRUE(lease.ok()) << lease.status();
    if (!lease.ok()) return {};
    if (source != nullptr) *source = (*lease)->state_source();
    SessionMemory copy = *CopyMemory(*model_, (*lease)->memory());
    auto scored = Score(*model_, copy, probe, RequestControl{});
    EXPECT_TRUE(scored.ok()) << scored.status();
    std::vector<float> out;
    for (const ScoredToken& t : *scored) out.push_back(t.logprob);
    return out;
  }

  std::filesystem::path SnapshotFile(const std::string& id) {
    for (const auto& f : std::filesystem::directory_iterator(store_dir_ / "sessions" / id)) {
      if (f.path().extension() == ".snap") return f.path();
    }
    return {};
  }

  engine::ModelConfig config_;
  Metrics metrics_;
  std::unique_ptr<test::ScopedTempDir> model_dir_;
  std::unique_ptr<ModelRegistry> registry_;
  LoadedModel* model_ = nullptr;
  std::filesystem::path store_dir_;
  std::unique_ptr<FaultInjectingStoreEnv> faults_;
  std::unique_ptr<SessionStore> store_;
};

TEST_F(SessionDurabilityTest, SyncSessionsSurviveARestartExactly) {
  const std::vector<int32_t> doc =
      test::RandomTokens(13, config_.vocab_size, 1);  // ends mid-segment
  const std::vector<int32_t> probe = test::RandomTokens(7, config_.vocab_size, 2);
  std::string id;
  std::vector<float> expected;
  {
    SessionManager sessions(Options(Durability::kSync), &metrics_);
    SessionOptions labelled;
    labelled.labels = {{"book", "kjv"}};
    labelled.ttl = absl::Minutes(7);
    auto info = sessions.Create(*model_, labelled);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->durable_version, 0) << "a SYNC session's first version is durable at once";
    id = info->id;
    Append(sessions, id, doc);
    EXPECT_EQ(sessions.Get(id)->durable_version, 1);
    expected = ScoreOf(sessions, id, probe);
  }  // the "process" ends
  SessionManager restarted(Options(Durability::kNone), &metrics_);
  ASSERT_EQ(*restarted.Recover(*registry_), 1);
  auto info = restarted.Get(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tier, Tier::kStore);
  EXPECT_EQ(info->state_version, 1);
  EXPECT_EQ(info->tokens_seen, static_cast<int64_t>(doc.size()));
  EXPECT_EQ(info->labels.at("book"), "kjv");
  EXPECT_EQ(info->ttl, absl::Minutes(7));
  EXPECT_EQ(info->durability, Durability::kSync);
  EXPECT_EQ(info->pending_tokens, 3) << "13 tokens in segments of 5: 3 wait";
  const char* source = nullptr;
  EXPECT_EQ(ScoreOf(restarted, id, probe, &source), expected) << "bitwise the same";
  EXPECT_STREQ(source, "store");
  EXPECT_EQ(restarted.Get(id)->tier, Tier::kDevice);
}

TEST_F(SessionDurabilityTest, AsyncVersionsBecomeDurableInTheBackground) {
  SessionManager sessions(Options(Durability::kAsync), &metrics_);
  auto info = sessions.Create(*model_, {});
  ASSERT_TRUE(info.ok());
  Append(sessions, info->id, test::RandomTokens(9, config_.vocab_size, 3));
  Append(sessions, info->id, test::RandomTokens(4, config_.vocab_size, 4));
  sessions.FlushStore();
  EXPECT_EQ(sessions.Get(info->id)->durable_version, 2);
  auto newest = store_->Newest(info->id);
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ(newest->version, 2);
  ASSERT_TRUE(sessions.Delete(info->id, 0).ok());
  sessions.FlushStore();
  EXPECT_EQ(store_->Newest(info->id).status().code(), absl::StatusCode::kNotFound)
      << "a deleted session leaves nothing in the store";
}

TEST_F(SessionDurabilityTest, AsyncWritesThatFailAreRetriedUntilTheStoreRecovers) {
  SessionManagerOptions options = Options(Durability::kAsync);
  options.async_retry_interval = absl::Milliseconds(30);
  SessionManager sessions(options, &metrics_);
  auto info = sessions.Create(*model_, {});
  ASSERT_TRUE(info.ok());
  sessions.FlushStore();
  ASSERT_TRUE(faults_->SetSpec("append:full").ok());
  Append(sessions, info->id, test::RandomTokens(7, config_.vocab_size, 6));
  sessions.FlushStore();
  EXPECT_EQ(sessions.Get(info->id)->state_version, 1);
  EXPECT_EQ(sessions.Get(info->id)->durable_version, 0) << "the write failed";
  EXPECT_GT(faults_->injected(StoreOp::kAppend), 0);
  ASSERT_TRUE(faults_->SetSpec("").ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (sessions.Get(info->id)->durable_version != 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(sessions.Get(info->id)->durable_version, 1) << "the reaper wrote it again";
  EXPECT_EQ(store_->Newest(info->id)->version, 1);
}

TEST_F(SessionDurabilityTest, AFailingStoreFailsSyncChangesAndKeepsTheVersion) {
  SessionManager sessions(Options(Durability::kSync), &metrics_);
  auto info = sessions.Create(*model_, {});
  ASSERT_TRUE(info.ok());
  Append(sessions, info->id, test::RandomTokens(6, config_.vocab_size, 5));
  for (const char* spec : {"append:full", "sync:fail", "rename:fail", "append:tear"}) {
    SCOPED_TRACE(spec);
    ASSERT_TRUE(faults_->SetSpec(spec).ok());
    auto lease = sessions.Acquire(info->id, 0);
    ASSERT_TRUE(lease.ok());
    absl::Status s = (*lease)->Persist(1);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_FALSE((*lease)->persisted());
    lease->reset();
    EXPECT_EQ(sessions.Get(info->id)->state_version, 1);
    EXPECT_EQ(sessions.Get(info->id)->durable_version, 1);
    ASSERT_TRUE(faults_->SetSpec("").ok());
    EXPECT_EQ(store_->Newest(info->id)->version, 1) << "the previous version stays published";
  }
  SessionOptions sync;
  sync.durability = Durability::kSync;
  ASSERT_TRUE(faults_->SetSpec("any:fail").ok());
  EXPECT_EQ(sessions.Create(*model_, sync).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(sessions.size(), 1) << "a session whose creation failed does not exist";
  ASSERT_TRUE(faults_->SetSpec("").ok());
}

TEST_F(SessionDurabilityTest, HostBudgetEvictsToTheStoreAndBackExactly) {
  const int64_t bytes = model_->SessionBytes();
  SessionManagerOptions options = Options(Durability::kNone);
  options.device_budget_bytes = bytes;
  options.host_budget_bytes = bytes;
  SessionManager sessions(options, &metrics_);
  const std::vector<int32_t> probe = test::RandomTokens(5, config_.vocab_size, 9);
  std::vector<std::string> ids;
  std::vector<std::vector<float>> expected;
  for (uint32_t i = 0; i < 3; ++i) {
    auto info = sessions.Create(*model_, {});
    ASSERT_TRUE(info.ok()) << info.status();
    ids.push_back(info->id);
    Append(sessions, info->id,
           test::RandomTokens(8 + static_cast<int>(i), config_.vocab_size, 20 + i));
    expected.push_back(ScoreOf(sessions, info->id, probe));
  }
  sessions.EvictToStore();
  EXPECT_EQ(sessions.Get(ids[0])->tier, Tier::kStore) << "the least recently used";
  EXPECT_EQ(sessions.Get(ids[1])->tier, Tier::kHost);
  EXPECT_EQ(sessions.Get(ids[2])->tier, Tier::kDevice);
  EXPECT_EQ(sessions.store_count(), 1);
  const char* source = nullptr;
  EXPECT_EQ(ScoreOf(sessions, ids[0], probe, &source), expected[0]);
  EXPECT_STREQ(source, "store");
  sessions.FlushStore();
  // A NONE session is memory-only again once back from the store.
  EXPECT_EQ(sessions.Get(ids[0])->durable_version, -1);
  EXPECT_EQ(store_->Newest(ids[0]).status().code(), absl::StatusCode::kNotFound);
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_EQ(ScoreOf(sessions, ids[i], probe), expected[i]) << i;
      sessions.EvictToStore();
    }
  }
}

TEST_F(SessionDurabilityTest, ACorruptSnapshotIsQuarantinedAndOthersAreServed) {
  const std::vector<int32_t> probe = test::RandomTokens(5, config_.vocab_size, 31);
  std::string good, bad;
  std::vector<float> expected;
  {
    SessionManager sessions(Options(Durability::kSync), &metrics_);
    good = sessions.Create(*model_, {})->id;
    bad = sessions.Create(*model_, {})->id;
    Append(sessions, good, test::RandomTokens(11, config_.vocab_size, 32));
    Append(sessions, bad, test::RandomTokens(11, config_.vocab_size, 33));
    expected = ScoreOf(sessions, good, probe);
  }
  const std::filesystem::path file = SnapshotFile(bad);
  ASSERT_FALSE(file.empty());
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(file) - 100));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(file) - 100));
    c = static_cast<char>(c ^ 0x40);
    f.write(&c, 1);
  }
  SessionManager restarted(Options(Durability::kNone), &metrics_);
  ASSERT_EQ(*restarted.Recover(*registry_), 2);
  auto lease = restarted.Acquire(bad, 0);
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDataLoss) << lease.status();
  EXPECT_EQ(restarted.Acquire(bad, 0).status().code(), absl::StatusCode::kDataLoss)
      << "quarantined: every request gets the error";
  EXPECT_TRUE(std::filesystem::exists(store_dir_ / "quarantine"));
  EXPECT_FALSE(std::filesystem::is_empty(store_dir_ / "quarantine"));
  EXPECT_EQ(ScoreOf(restarted, good, probe), expected);
  EXPECT_TRUE(restarted.Delete(bad, 0).ok());
}

TEST_F(SessionDurabilityTest, ImportedMemoryContinuesExactly) {
  SessionManager sessions(Options(Durability::kNone), &metrics_);
  const std::vector<int32_t> probe = test::RandomTokens(6, config_.vocab_size, 41);
  auto info = sessions.Create(*model_, {});
  Append(sessions, info->id, test::RandomTokens(12, config_.vocab_size, 42));
  const std::vector<float> expected = ScoreOf(sessions, info->id, probe);
  std::string snapshot;
  {
    auto lease = *sessions.Acquire(info->id, 0);
    auto bytes = EncodeSession(*model_, lease->memory(), sessions.SnapshotFields(*lease));
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    snapshot = *bytes;
  }
  auto decoded = DecodeSession(*model_, snapshot);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  auto copy = sessions.CreateFrom(*model_, {}, std::move(decoded->memory),
                                  decoded->manifest.session.tokens_seen);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->tokens_seen, 12);
  EXPECT_EQ(ScoreOf(sessions, copy->id, probe), expected);
  snapshot[snapshot.size() / 2] ^= 1;
  EXPECT_EQ(DecodeSession(*model_, snapshot).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace mnemo::server

// --- replica mode: two managers on one store directory play two replicas -------------------

namespace mnemo::server {
namespace {

class ReplicaSessionsTest : public SessionDurabilityTest {
 protected:
  void SetUp() override {
    SessionDurabilityTest::SetUp();
    auto second = OpenFileSessionStore(store_dir_.string(), PosixStoreEnv());
    ASSERT_TRUE(second.ok()) << second.status();
    store_b_ = *std::move(second);
  }

  // Replica `name` on `store`; its hand-offs go straight to the other manager (the gRPC hop the
  // server adds is tested end to end in test_server_replica_ownership.py).
  std::unique_ptr<SessionManager> Replica(const std::string& name, SessionStore* store,
                                          std::unique_ptr<SessionManager>* peer) {
    SessionManagerOptions o = Options(Durability::kNone);
    o.store = store;
    o.replica_id = name;
    o.advertise = name;
    o.models = registry_.get();
    o.hand_off = [peer](const std::string&, const std::string& id) -> absl::Status {
      if (*peer == nullptr) return absl::UnavailableError("gone");
      return (*peer)->HandOff(id, absl::Now() + absl::Seconds(5)).status();
    };
    return std::make_unique<SessionManager>(o, &metrics_);
  }

  std::unique_ptr<SessionStore> store_b_;
};

TEST_F(ReplicaSessionsTest, SessionsMoveBetweenReplicasWithTheirNewestVersion) {
  std::unique_ptr<SessionManager> a, b;
  a = Replica("a", store_.get(), &b);
  b = Replica("b", store_b_.get(), &a);
  SessionManager reference(SessionManagerOptions{}, &metrics_);
  const std::vector<int32_t> probe = test::RandomTokens(6, config_.vocab_size, 40);
  for (Durability d : {Durability::kNone, Durability::kAsync, Durability::kSync}) {
    SessionOptions options;
    options.durability = d;
    auto info = a->Create(*model_, options);
    ASSERT_TRUE(info.ok()) << info.status();
    auto ref = reference.Create(*model_, {});
    ASSERT_TRUE(ref.ok());
    for (int step = 0; step < 6; ++step) {
      SessionManager& at = step % 2 == 0 ? *b : *a;  // every step moves it
      const std::vector<int32_t> doc = test::RandomTokens(7, config_.vocab_size, 50 + step);
      Append(at, info->id, doc);
      Append(reference, ref->id, doc);
      auto got = at.Get(info->id);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->state_version, step + 1);
      EXPECT_EQ(got->tokens_seen, 7 * (step + 1));
      // The other replica let go of it.
      EXPECT_EQ((step % 2 == 0 ? *a : *b).size(), 0);
    }
    EXPECT_EQ(ScoreOf(*a, info->id, probe), ScoreOf(reference, ref->id, probe))
        << "durability " << static_cast<int>(d) << ": bitwise the same after six moves";
    ASSERT_TRUE(a->Delete(info->id, 0).ok());
    EXPECT_TRUE(absl::IsNotFound(b->Get(info->id).status()));
  }
}

TEST_F(ReplicaSessionsTest, AFencedReplicaAnswersSessionMovedAndCommitsNothing) {
  std::unique_ptr<SessionManager> a, b;
  std::unique_ptr<SessionManager> none;
  a = Replica("a", store_.get(), &b);
  // B cannot reach A (a partition): it takes sessions over by claim alone.
  b = Replica("b", store_b_.get(), &none);
  SessionOptions options;
  options.durability = Durability::kSync;
  auto info = a->Create(*model_, options);
  ASSERT_TRUE(info.ok());
  Append(*a, info->id, test::RandomTokens(5, config_.vocab_size, 60));
  auto lease = a->Acquire(info->id, 0);  // a request runs on A …
  ASSERT_TRUE(lease.ok());
  auto taken = b->Get(info->id);  // … when B takes the session over
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->state_version, 1);
  ASSERT_TRUE(
      AppendTokens(*model_, (*lease)->memory(), std::vector<int32_t>{1, 2, 3}, {}, nullptr).ok());
  absl::Status persisted = (*lease)->Persist(3);
  EXPECT_TRUE(absl::IsAborted(persisted)) << persisted;
  EXPECT_EQ(ReasonOf(persisted), kReasonSessionMoved);
  lease->reset();
  // Nothing A did reached the store: B's version stands, and B can go on.
  Append(*b, info->id, test::RandomTokens(4, config_.vocab_size, 61));
  EXPECT_EQ(b->Get(info->id)->state_version, 2);
  // A dropped its copy; asked again, it takes the session back (B is not reachable from A's
  // side either way here: A's hand-off hook reaches B).
  auto back = a->Get(info->id);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->state_version, 2);
}

TEST_F(ReplicaSessionsTest, ConcurrentRequestsOnBothReplicasKeepEveryVersion) {
  std::unique_ptr<SessionManager> a, b;
  a = Replica("a", store_.get(), &b);
  b = Replica("b", store_b_.get(), &a);
  SessionOptions options;
  options.durability = Durability::kAsync;
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(a->Create(*model_, options)->id);
  std::atomic<int> committed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      SessionManager& at = t % 2 == 0 ? *a : *b;
      for (int i = 0; i < 6; ++i) {
        const std::string& id = ids[(t + i) % ids.size()];
        auto lease = at.Acquire(id, 0);
        if (!lease.ok())
          continue;  // busy (ABORTED), moving (UNAVAILABLE) or moved: retried by clients
        if (!AppendTokens(*model_, (*lease)->memory(), std::vector<int32_t>{5, 6}, {}, nullptr)
                 .ok())
          continue;
        if (!(*lease)->Persist(2).ok()) continue;
        (*lease)->Commit(2);
        ++committed;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int64_t versions = 0;
  for (const std::string& id : ids) {
    auto info = a->Get(id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->tokens_seen, 2 * info->state_version) << "no change lost or doubled";
    versions += info->state_version;
  }
  EXPECT_EQ(versions, committed.load());
}

}  // namespace
}  // namespace mnemo::server
