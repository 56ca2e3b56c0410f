// Errors across the transport: absl::Status (the engine's and the server core's vocabulary) to
// grpc::Status, with field violations carried as a BadRequest detail (wire-identical to
// google.rpc.BadRequest) and a reason for programs as an ErrorInfo detail (google.rpc.ErrorInfo,
// domain "mnemo.v1") in the status details trailer.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"

#include "grpcpp/support/status.h"
#include "server/error_reason.h"

namespace mnemo::server {

// Collects what is wrong with a request's fields: the first kMaxViolations, each field path and
// description cut short (server/echo.h), so the status always fits in gRPC's metadata.
class FieldViolations {
 public:
  static constexpr size_t kMaxViolations = 16;
  void Add(std::string field, std::string description);
  bool empty() const { return violations_.empty(); }
  // INVALID_ARGUMENT listing every violation kept (and how many more there were), with the
  // BadRequest detail attached.
  absl::Status ToStatus() const;

 private:
  std::vector<std::pair<std::string, std::string>> violations_;
  size_t more_ = 0;  // violations beyond kMaxViolations
};

// INVALID_ARGUMENT for one field.
absl::Status InvalidField(std::string field, std::string description);

// The message is cut to kMaxStatusMessageBytes: it may quote client input.
inline constexpr size_t kMaxStatusMessageBytes = 1024;
grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "INVALID_ARGUMENT", … (the metrics' `code` label).
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace mnemo::server
