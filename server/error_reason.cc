#include "server/error_reason.h"

#include "absl/strings/cord.h"

namespace mnemo::server {
namespace {

// absl::Status payload key of a reason (its plain text).
constexpr char kReasonPayload[] = "mnemo.v1/reason";
// absl::Status payload key of the quota a QuotaFailure names (its plain text).
constexpr char kQuotaPayload[] = "mnemo.v1/quota";

}  // namespace

absl::Status WithReason(absl::Status status, std::string_view reason) {
  status.SetPayload(kReasonPayload, absl::Cord(absl::string_view(reason.data(), reason.size())));
  return status;
}

std::string ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonPayload);
  return payload.has_value() ? std::string(*payload) : std::string();
}

absl::Status QuotaExceeded(std::string_view quota, std::string_view message) {
  absl::Status status =
      WithReason(absl::ResourceExhaustedError(absl::string_view(message.data(), message.size())),
                 kReasonQuotaExceeded);
  status.SetPayload(kQuotaPayload, absl::Cord(absl::string_view(quota.data(), quota.size())));
  return status;
}

std::string QuotaOf(const absl::Status& status) {
  auto payload = status.GetPayload(kQuotaPayload);
  return payload.has_value() ? std::string(*payload) : std::string();
}

}  // namespace mnemo::server
