// Tenants in the server core, without a transport: the auth file's parsing and validation,
// token and certificate-subject lookup and reload, the concurrency and token-bucket quotas, and
// the session manager's ownership check and session quotas (table-driven over every method that
// looks a session up).
#include <filesystem>
#include <fstream>
#include <functional>

#include "gtest/gtest.h"
#include "server/auth.h"
#include "server/error_reason.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/session_manager.h"
#include "server/tenant_limiter.h"
#include "tests/test_checkpoint.h"

namespace mnemo::server {
namespace {

std::string Tenants(const std::string& list) { return "{\"tenants\": [" + list + "]}"; }

std::string TenantJson(const std::string& name, const std::string& token,
                       const std::string& extra = "") {
  return "{\"name\": \"" + name + "\", \"token_sha256\": [\"" + Sha256Hex(token) + "\"]" + extra +
         "}";
}

TEST(AuthConfigTest, ParsesTheDocumentedFormat) {
  auto config = ParseAuthConfig(
      Tenants(TenantJson("a", "ta",
                         ", \"admin\": true, \"certificate_subjects\": [\"CN=a\"], \"quotas\": "
                         "{\"sessions\": 3, \"state_bytes\": 4, \"concurrent_requests\": 5, "
                         "\"tokens_per_minute\": 6}")));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->tenants.size(), 1u);
  const Tenant& t = config->tenants[0];
  EXPECT_EQ(t.name, "a");
  EXPECT_TRUE(t.admin);
  EXPECT_EQ(t.certificate_subjects, std::vector<std::string>{"CN=a"});
  EXPECT_EQ(t.quotas.sessions, 3);
  EXPECT_EQ(t.quotas.state_bytes, 4);
  EXPECT_EQ(t.quotas.concurrent_requests, 5);
  EXPECT_EQ(t.quotas.tokens_per_minute, 6);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(AuthConfigTest, RefusesWhatItCannotTrust) {
  const std::string hash = Sha256Hex("t");
  for (const std::string& bad : {
           std::string("[]"),
           std::string("{\"tenant\": []}"),
           Tenants("{\"token_sha256\": [\"" + hash + "\"]}"),             // no name
           Tenants("{\"name\": \"a b\"}"),                                // bad name
           Tenants("{\"name\": \"a\", \"token_sha256\": [\"secret\"]}"),  // a token, not a hash
           Tenants("{\"name\": \"a\", \"token_sha256\": [\"" + std::string(64, 'A') + "\"]}"),
           Tenants("{\"name\": \"a\", \"quotas\": {\"session\": 1}}"),  // unknown quota
           Tenants("{\"name\": \"a\", \"quotas\": {\"sessions\": -1}}"),
           Tenants("{\"name\": \"a\", \"admin\": \"yes\"}"),
           Tenants("{\"name\": \"a\", \"extra\": 1}"),
           Tenants(TenantJson("a", "t") + "," + TenantJson("b", "t")),  // shared token
           Tenants(TenantJson("a", "t") + "," + TenantJson("a", "u")),  // name twice
           Tenants("{\"name\": \"a\", \"certificate_subjects\": [\"CN=x\"]}, {\"name\": \"b\", "
                   "\"certificate_subjects\": [\"CN=x\"]}"),
       }) {
    EXPECT_EQ(ParseAuthConfig(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

class AuthFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mnemo_tenants_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "auth.json").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& text) {
    std::ofstream(path_ + ".tmp") << text;
    std::filesystem::rename(path_ + ".tmp", path_);
  }
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(AuthFileTest, TokensAndSubjectsMapToTenantsAndReloadApplies) {
  Write(Tenants(TenantJson("a", "token-a", ", \"certificate_subjects\": [\"CN=a,O=x\"]") + "," +
                TenantJson("ops", "token-ops", ", \"admin\": true")));
  auto auth = Authenticator::Open(path_, absl::Hours(1));  // reloaded by hand below
  ASSERT_TRUE(auth.ok()) << auth.status();
  Authenticator& a = **auth;
  EXPECT_EQ(a.Authenticate("token-a", std::nullopt)->tenant, "a");
  EXPECT_FALSE(a.Authenticate("token-a", std::nullopt)->admin);
  EXPECT_TRUE(a.Authenticate("token-ops", std::nullopt)->admin);
  EXPECT_EQ(a.Authenticate(std::nullopt, "CN=a,O=x")->tenant, "a");
  EXPECT_EQ(a.Authenticate("wrong", "CN=a,O=x").status().code(), absl::StatusCode::kUnauthenticated)
      << "a token decides alone";
  EXPECT_EQ(a.Authenticate(std::nullopt, "CN=b").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authenticate(std::nullopt, std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);

  EXPECT_FALSE(*a.Reload()) << "unchanged";
  Write(Tenants(TenantJson("b", "token-b")));
  EXPECT_TRUE(*a.Reload());
  EXPECT_EQ(a.Authenticate("token-a", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authenticate("token-b", std::nullopt)->tenant, "b");
  Write("{broken");
  EXPECT_FALSE(a.Reload().ok());
  EXPECT_EQ(a.Authenticate("token-b", std::nullopt)->tenant, "b") << "the previous contents stay";
  EXPECT_EQ(a.generation(), 2);
}

TEST(AuthenticatorTest, WithoutAFileEveryCallerIsTheImplicitTenant) {
  Authenticator none;
  EXPECT_FALSE(none.enabled());
  auto caller = none.Authenticate(std::nullopt, std::nullopt);
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->tenant, "");
}

TEST(TenantLimiterTest, ConcurrentRequestsAndTokensPerMinute) {
  TenantLimiter limiter(nullptr);
  Caller c{"a", false, {}};
  c.quotas.concurrent_requests = 2;
  c.quotas.tokens_per_minute = 60;
  {
    TenantLimiter::Slot one, two, three;
    ASSERT_TRUE(limiter.Enter(c, &one).ok());
    ASSERT_TRUE(limiter.Enter(c, &two).ok());
    absl::Status refused = limiter.Enter(c, &three);
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(QuotaOf(refused), "concurrent_requests");
    EXPECT_EQ(ReasonOf(refused), kReasonQuotaExceeded);
    Caller other{"b", false, c.quotas};
    TenantLimiter::Slot theirs;
    EXPECT_TRUE(limiter.Enter(other, &theirs).ok()) << "another tenant has its own slots";
    EXPECT_EQ(limiter.running("a"), 2);
  }
  EXPECT_EQ(limiter.running("a"), 0);

  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(limiter.CheckTokens(c, t0).ok()) << "starts full";
  limiter.Charge(c, 90, t0);  // 60 - 90 = -30: a request may overdraw
  absl::Status empty = limiter.CheckTokens(c, t0 + absl::Seconds(29));
  EXPECT_EQ(QuotaOf(empty), "tokens_per_minute");
  EXPECT_TRUE(limiter.CheckTokens(c, t0 + absl::Seconds(31)).ok()) << "1 token/s refills it";
  limiter.Charge(c, 1000, t0 + absl::Seconds(31));
  // 1 - 1000 = -999 at 31 s: empty until ~17 min, and never more than a minute's worth.
  EXPECT_FALSE(limiter.CheckTokens(c, t0 + absl::Minutes(10)).ok());
  EXPECT_TRUE(limiter.CheckTokens(c, t0 + absl::Minutes(30)).ok());
  limiter.Charge(c, 61, t0 + absl::Hours(2));
  EXPECT_FALSE(limiter.CheckTokens(c, t0 + absl::Hours(2)).ok()) << "capped at 60 before";
  EXPECT_TRUE(limiter.CheckTokens(Caller{"free", false, {}}, t0).ok()) << "no quota";
}

class SessionTenancyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = test::SmallConfig();
    dir_ = std::make_unique<test::ScopedTempDir>(test::WriteCheckpoint(config_, 11));
    auto registry = ModelRegistry::Load({{"small", dir_->path()}}, "cpu", /*segment_tokens=*/5,
                                        SchedulerOptions{}, &metrics_);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
    model_ = *registry_->Find("");
  }
  SessionOptions Owned(const std::string& tenant) {
    SessionOptions o;
    o.tenant = tenant;
    return o;
  }
  engine::ModelConfig config_;
  std::unique_ptr<test::ScopedTempDir> dir_;
  Metrics metrics_;
  std::unique_ptr<ModelRegistry> registry_;
  LoadedModel* model_ = nullptr;
};

TEST_F(SessionTenancyTest, AnotherTenantsSessionAnswersAsAMissingOne) {
  SessionManager sessions(SessionManagerOptions{}, &metrics_);
  auto mine = sessions.Create(*model_, Owned("a"));
  ASSERT_TRUE(mine.ok());
  const Caller owner{"a", false, {}}, other{"b", false, {}}, admin{"ops", true, {}};
  const std::string missing(32, '0');
  // Every method that looks a session up, and whether an admin may use it.
  const std::vector<
      std::tuple<const char*, std::function<absl::Status(const std::string&, const Caller&)>, bool>>
      methods = {
          {"Get", [&](auto& id, auto& c) { return sessions.Get(id, c).status(); }, true},
          {"Acquire", [&](auto& id, auto& c) { return sessions.Acquire(id, 0, c).status(); },
           false},
          {"Fork",
           [&](auto& id, auto& c) { return sessions.Fork(id, 0, Owned(c.tenant), c).status(); },
           false},
          {"Delete", [&](auto& id, auto& c) { return sessions.Delete(id, 99, c); }, true},
      };
  for (const auto& [name, call, admin_may] : methods) {
    const absl::Status theirs = call(mine->id, other);
    const absl::Status absent = call(missing, other);
    EXPECT_EQ(theirs.code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(std::string(theirs.message()).replace(theirs.message().find(mine->id), 32, missing),
              absent.message())
        << name;
    EXPECT_NE(call(mine->id, owner).code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(call(mine->id, admin).code() == absl::StatusCode::kNotFound, !admin_may) << name;
  }
  bool more = false;
  EXPECT_TRUE(sessions.List(0, 10, {}, &more, other).empty());
  EXPECT_EQ(sessions.List(0, 10, {}, &more, owner).size(), 2u) << "its session and its fork";
  EXPECT_EQ(sessions.List(0, 10, {}, &more, admin).size(), 2u);
  EXPECT_EQ(sessions.Get(mine->id, owner)->tenant, "a");
  EXPECT_TRUE(sessions.Delete(mine->id, 0, admin).ok());
}

TEST_F(SessionTenancyTest, SessionAndStateByteQuotas) {
  SessionManager sessions(SessionManagerOptions{}, &metrics_);
  const int64_t bytes = model_->SessionBytes();
  SessionOptions a = Owned("a");
  a.quotas.sessions = 2;
  auto first = sessions.Create(*model_, a);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(sessions.Create(*model_, a).ok());
  absl::Status refused = sessions.Create(*model_, a).status();
  EXPECT_EQ(QuotaOf(refused), "sessions");
  EXPECT_EQ(QuotaOf(sessions.Fork(first->id, 0, a, Caller{"a", false, {}}).status()), "sessions");
  EXPECT_TRUE(sessions.Create(*model_, Owned("b")).ok()) << "b has no quota";
  ASSERT_TRUE(sessions.Delete(first->id, 0, Caller{"a", false, {}}).ok());
  EXPECT_TRUE(sessions.Create(*model_, a).ok()) << "a deletion makes room";

  SessionOptions c = Owned("c");
  c.quotas.state_bytes = bytes * 3 / 2;
  EXPECT_TRUE(sessions.Create(*model_, c).ok());
  EXPECT_EQ(QuotaOf(sessions.Create(*model_, c).status()), "state_bytes");
}

}  // namespace
}  // namespace mnemo::server
