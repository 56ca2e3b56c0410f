#include "server/grpc_status.h"

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

#include "google/protobuf/any.pb.h"
#include "mnemo/v1/mnemo.pb.h"
#include "server/echo.h"

namespace mnemo::server {
namespace {

// absl::Status payload key for a serialized mnemo.v1.BadRequest, and the type URL clients expect.
constexpr char kBadRequestPayload[] = "type.googleapis.com/google.rpc.BadRequest";
constexpr char kErrorInfoType[] = "type.googleapis.com/google.rpc.ErrorInfo";
constexpr char kQuotaFailureType[] = "type.googleapis.com/google.rpc.QuotaFailure";

}  // namespace

void FieldViolations::Add(std::string field, std::string description) {
  if (violations_.size() >= kMaxViolations) {
    ++more_;
    return;
  }
  if (field.size() > 128) field = Echo(field, 128);
  if (description.size() > 256) description = Echo(description, 256);
  violations_.emplace_back(std::move(field), std::move(description));
}

absl::Status FieldViolations::ToStatus() const {
  if (violations_.empty()) return absl::OkStatus();
  v1::BadRequest detail;
  std::string message;
  for (const auto& [field, description] : violations_) {
    auto* v = detail.add_field_violations();
    v->set_field(field);
    v->set_description(description);
    absl::StrAppend(&message, message.empty() ? "" : "; ", field, ": ", description);
  }
  if (more_ > 0) absl::StrAppend(&message, "; and ", more_, " more");
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kBadRequestPayload, absl::Cord(detail.SerializeAsString()));
  return status;
}

absl::Status InvalidField(std::string field, std::string description) {
  FieldViolations v;
  v.Add(std::move(field), std::move(description));
  return v.ToStatus();
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  const std::string message = Echo(status.message(), kMaxStatusMessageBytes);
  auto bad_request = status.GetPayload(kBadRequestPayload);
  const std::string reason = ReasonOf(status);
  const std::string quota = QuotaOf(status);
  if (!bad_request.has_value() && reason.empty() && quota.empty()) {
    return grpc::Status(code, message);
  }
  v1::RpcStatus details;
  details.set_code(static_cast<int32_t>(code));
  details.set_message(message);
  if (bad_request.has_value()) {
    google::protobuf::Any* any = details.add_details();
    any->set_type_url(kBadRequestPayload);
    any->set_value(std::string(*bad_request));
  }
  if (!reason.empty()) {
    v1::ErrorInfo info;
    info.set_reason(reason);
    info.set_domain("mnemo.v1");
    google::protobuf::Any* any = details.add_details();
    any->set_type_url(kErrorInfoType);
    any->set_value(info.SerializeAsString());
  }
  if (!quota.empty()) {
    v1::QuotaFailure failure;
    v1::QuotaFailure::Violation* v = failure.add_violations();
    v->set_subject(quota);
    v->set_description(message);
    google::protobuf::Any* any = details.add_details();
    any->set_type_url(kQuotaFailureType);
    any->set_value(failure.SerializeAsString());
  }
  return grpc::Status(code, message, details.SerializeAsString());
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNKNOWN";
  }
}

}  // namespace mnemo::server
