#include "server/tenant_limiter.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

#include "server/error_reason.h"
#include "server/metrics.h"

namespace mnemo::server {

TenantLimiter::Slot& TenantLimiter::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (limiter_ != nullptr) limiter_->Leave(tenant_);
    limiter_ = other.limiter_;
    tenant_ = std::move(other.tenant_);
    other.limiter_ = nullptr;
  }
  return *this;
}

TenantLimiter::Slot::~Slot() {
  if (limiter_ != nullptr) limiter_->Leave(tenant_);
}

absl::Status TenantLimiter::Enter(const Caller& caller, Slot* slot) {
  MutexLock lock(&mu_);
  State& s = tenants_[caller.tenant];
  const int64_t quota = caller.quotas.concurrent_requests;
  if (quota > 0 && s.running >= quota) {
    if (metrics_ != nullptr) metrics_->TenantQuotaRejected(caller.tenant, "concurrent_requests");
    return QuotaExceeded("concurrent_requests",
                         absl::StrCat("tenant ", caller.tenant, " already runs ", s.running,
                                      " requests, its concurrent_requests quota; retry when one "
                                      "finishes"));
  }
  ++s.running;
  slot->limiter_ = this;
  slot->tenant_ = caller.tenant;
  return absl::OkStatus();
}

void TenantLimiter::Leave(const std::string& tenant) {
  MutexLock lock(&mu_);
  --tenants_[tenant].running;
}

int64_t TenantLimiter::running(const std::string& tenant) const {
  MutexLock lock(&mu_);
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second.running;
}

void TenantLimiter::Refill(State& s, int64_t per_minute, absl::Time now) {
  const auto capacity = static_cast<double>(per_minute);
  if (s.refilled == absl::InfinitePast()) {
    s.bucket = capacity;
  } else if (now > s.refilled) {
    s.bucket += capacity * absl::ToDoubleSeconds(now - s.refilled) / 60.0;
  }
  s.bucket = std::min(s.bucket, capacity);  // a lowered quota applies at once
  s.refilled = std::max(s.refilled, now);
}

absl::Status TenantLimiter::CheckTokens(const Caller& caller, absl::Time now) {
  const int64_t quota = caller.quotas.tokens_per_minute;
  if (quota <= 0) return absl::OkStatus();
  MutexLock lock(&mu_);
  State& s = tenants_[caller.tenant];
  Refill(s, quota, now);
  if (s.bucket > 0) return absl::OkStatus();
  if (metrics_ != nullptr) metrics_->TenantQuotaRejected(caller.tenant, "tokens_per_minute");
  const double wait = -s.bucket * 60.0 / static_cast<double>(quota);
  return QuotaExceeded(
      "tokens_per_minute",
      absl::StrCat("tenant ", caller.tenant, " used its tokens_per_minute quota (", quota,
                   "); retry in ", std::max(1, static_cast<int>(wait + 1)), " s"));
}

void TenantLimiter::Charge(const Caller& caller, int64_t tokens, absl::Time now) {
  if (tokens <= 0) return;
  if (metrics_ != nullptr) metrics_->TenantTokens(caller.tenant, tokens);
  const int64_t quota = caller.quotas.tokens_per_minute;
  if (quota <= 0) return;
  MutexLock lock(&mu_);
  State& s = tenants_[caller.tenant];
  Refill(s, quota, now);
  s.bucket -= static_cast<double>(tokens);
}

}  // namespace mnemo::server
