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

// `status` carrying `reason`.
absl::Status WithReason(absl::Status status, std::string_view reason);
// The reason WithReason attached, or "".
std::string ReasonOf(const absl::Status& status);

}  // namespace mnemo::server
