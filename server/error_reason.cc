#include "server/error_reason.h"

#include "absl/strings/cord.h"

namespace mnemo::server {
namespace {

// absl::Status payload key of a reason (its plain text).
constexpr char kReasonPayload[] = "mnemo.v1/reason";

}  // namespace

absl::Status WithReason(absl::Status status, std::string_view reason) {
  status.SetPayload(kReasonPayload, absl::Cord(absl::string_view(reason.data(), reason.size())));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonPayload);
  return payload.has_value() ? std::string(*payload) : std::string();
}

}  // namespace mnemo::server
