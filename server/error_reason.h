// Reasons for programs on errors (sent as a google.rpc.ErrorInfo detail, domain "mnemo.v1"):
// the server core attaches them to an absl::Status, the transport (grpc_status.h) sends them.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace mnemo::server {

// ABORTED: another replica owns the session now; nothing was committed: retry.
inline constexpr char kReasonSessionMoved[] = "SESSION_MOVED";
// UNAVAILABLE: the server is draining; nothing was done: retry on another replica.
inline constexpr char kReasonDraining[] = "DRAINING";

// RESOURCE_EXHAUSTED: a tenant quota is reached; the status also carries a QuotaFailure detail
// (google.rpc.QuotaFailure) whose violation's subject is the quota's name.
inline constexpr char kReasonQuotaExceeded[] = "QUOTA_EXCEEDED";

// `status` carrying `reason`.
absl::Status WithReason(absl::Status status, std::string_view reason);
// The reason WithReason attached, or "".
std::string ReasonOf(const absl::Status& status);

// RESOURCE_EXHAUSTED for tenant quota `quota` ("sessions", "state_bytes", "concurrent_requests",
// "tokens_per_minute"), with reason QUOTA_EXCEEDED.
absl::Status QuotaExceeded(std::string_view quota, std::string_view message);
// The quota QuotaExceeded named, or "".
std::string QuotaOf(const absl::Status& status);

}  // namespace mnemo::server
