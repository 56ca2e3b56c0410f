// TenantLimiter: the per-tenant quotas that are not about sessions (SessionManager counts those):
// requests running at once, and tokens per minute as a token bucket. A bucket holds at most a
// minute's worth and refills continuously; a request is admitted while its tenant's bucket is
// above zero and takes the tokens it ran (ingested, prompt, scored and generated) as it counts
// them, so one request may take the bucket below zero and the next ones wait for the refill.
//
// Threading: every method is safe from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

#include "base/mutex.h"
#include "server/auth.h"

namespace mnemo::server {

class Metrics;

class TenantLimiter {
 public:
  explicit TenantLimiter(Metrics* metrics) : metrics_(metrics) {}

  // One running request of `caller`'s tenant while alive (see Enter).
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept : limiter_(other.limiter_), tenant_(std::move(other.tenant_)) {
      other.limiter_ = nullptr;
    }
    Slot& operator=(Slot&& other) noexcept;
    ~Slot();

   private:
    friend class TenantLimiter;
    TenantLimiter* limiter_ = nullptr;
    std::string tenant_;
  };

  // A slot, or RESOURCE_EXHAUSTED (quota "concurrent_requests") when the tenant already runs
  // its quota's worth.
  absl::Status Enter(const Caller& caller, Slot* slot) ABSL_LOCKS_EXCLUDED(mu_);
  // RESOURCE_EXHAUSTED (quota "tokens_per_minute") while the tenant's bucket is empty.
  absl::Status CheckTokens(const Caller& caller, absl::Time now = absl::Now())
      ABSL_LOCKS_EXCLUDED(mu_);
  // Takes `tokens` from the tenant's bucket (and counts them in the metrics).
  void Charge(const Caller& caller, int64_t tokens, absl::Time now = absl::Now())
      ABSL_LOCKS_EXCLUDED(mu_);
  int64_t running(const std::string& tenant) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct State {
    int64_t running = 0;
    double bucket = 0;  // tokens; starts full
    absl::Time refilled = absl::InfinitePast();
  };
  // Refills `s` for the time since its last refill (capacity: `per_minute`).
  static void Refill(State& s, int64_t per_minute, absl::Time now);
  void Leave(const std::string& tenant) ABSL_LOCKS_EXCLUDED(mu_);

  Metrics* const metrics_;
  mutable Mutex mu_;
  std::map<std::string, State> tenants_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mnemo::server
