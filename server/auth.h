// Who is calling: the auth file (--auth-file, JSON; docs/server-api.md "Tenants") maps bearer
// tokens (by their SHA-256, never in plain text) and verified client-certificate subjects to
// tenants, each with its quotas and an admin flag. The Authenticator resolves one Caller per RPC
// and re-reads the file when it changes. Without an auth file every caller is the implicit
// tenant "" with no quotas, as before tenants existed. No gRPC here: the services hand over the
// token and the certificate subject they found (service_context.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "base/mutex.h"

namespace mnemo::server {

// A tenant's limits; 0 means no limit.
struct TenantQuotas {
  int64_t sessions = 0;             // live sessions (every tier)
  int64_t state_bytes = 0;          // bytes of session state of those sessions
  int64_t concurrent_requests = 0;  // RPCs running at once
  int64_t tokens_per_minute = 0;    // tokens run through a model (a token bucket; see Limiter)
};

// The identity an RPC runs as. `admin` may list, read and delete every tenant's sessions (never
// run requests on them).
struct Caller {
  std::string tenant;
  bool admin = false;
  TenantQuotas quotas;
};

struct Tenant {
  std::string name;  // [A-Za-z0-9._-], 1 … 64 (a metrics label)
  bool admin = false;
  std::vector<std::string> token_sha256;          // 64 lowercase hex digits each
  std::vector<std::string> certificate_subjects;  // as gRPC reports them ("CN=a,O=b")
  TenantQuotas quotas;
};

struct AuthConfig {
  std::vector<Tenant> tenants;
};

// The auth file's contents, validated (unknown keys, a token hash or subject given to two
// tenants, a malformed hash: INVALID_ARGUMENT naming the place).
absl::StatusOr<AuthConfig> ParseAuthConfig(std::string_view json);

// SHA-256 of `data` as 64 lowercase hex digits.
std::string Sha256Hex(std::string_view data);

// Threading: Authenticate and Reload are safe from any thread; the watcher thread calls Reload.
class Authenticator {
 public:
  // Every caller is the implicit tenant "" (no auth file).
  Authenticator();
  // Reads `path` (an error if it cannot be read or parsed) and re-reads it every `interval`
  // when its contents changed: a file that no longer parses is logged and the previous
  // contents stay in force.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Open(std::string path,
                                                             absl::Duration interval);
  ~Authenticator();
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  bool enabled() const { return !path_.empty(); }
  // `token`: the bearer token sent, if any; `subject`: the verified client certificate's
  // subject, if any. A token decides alone (an unknown one is refused even with a
  // certificate); UNAUTHENTICATED when neither maps to a tenant.
  absl::StatusOr<Caller> Authenticate(std::optional<std::string_view> token,
                                      std::optional<std::string_view> subject) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Re-reads the file now if it changed; returns whether new contents were applied. An error
  // when it cannot be read or parsed (the previous contents stay).
  absl::StatusOr<bool> Reload() ABSL_LOCKS_EXCLUDED(mu_);
  // How many times new contents were applied since the start.
  int64_t generation() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Index;
  explicit Authenticator(std::string path);
  void WatchLoop(absl::Duration interval) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  mutable Mutex mu_;
  std::shared_ptr<const Index> index_ ABSL_GUARDED_BY(mu_);
  std::string contents_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  CondVar stop_cv_;
  std::thread watcher_;
};

}  // namespace mnemo::server
