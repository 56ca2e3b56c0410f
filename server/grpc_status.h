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

// Collects what is wrong with a request's fields.
class FieldViolations {
 public:
  void Add(std::string field, std::string description);
  bool empty() const { return violations_.empty(); }
  // INVALID_ARGUMENT listing every violation, with the BadRequest detail attached.
  absl::Status ToStatus() const;

 private:
  std::vector<std::pair<std::string, std::string>> violations_;
};

// INVALID_ARGUMENT for one field.
absl::Status InvalidField(std::string field, std::string description);

grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "INVALID_ARGUMENT", … (the metrics' `code` label).
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace mnemo::server
