// What one request may carry: a limit for every repeated field and string of every mnemo.v1
// request (docs/server-api.md "Request limits"), and known values for every enum. Checked right
// after a request parses and before any work or allocation proportional to a field's size, so a
// request carrying two million stop ids is refused in microseconds, naming the field. Each check
// looks at sizes only (and at most max_labels map entries); the services' own validation of
// values (ids inside the vocabulary, label key syntax, sampling ranges) runs afterwards.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

#include "mnemo/v1/mnemo.pb.h"

namespace mnemo::server {

struct RequestLimits;  // server/service_context.h

// Fixed limits (not flags): what the server itself hands out never comes near them.
inline constexpr int64_t kMaxNameBytes = 64;          // model names (--model NAME, ≤ 64)
inline constexpr int64_t kMaxSessionIdBytes = 64;     // ids are 32 hex digits
inline constexpr int64_t kMaxPageTokenBytes = 32;     // a decimal uint64
inline constexpr int64_t kMaxLabelKeyBytes = 63;      // label keys
inline constexpr int64_t kMaxLabelValueBytes = 256;   // label values
inline constexpr int64_t kMaxReplicaNameBytes = 256;  // HandOffSessionRequest.to_replica
inline constexpr int64_t kMaxGlobalPositions = 4096;  // EncodeRequest.global_positions
inline constexpr int64_t kMaxMlmPositions = 256;      // EncodeRequest.mlm_positions

// OK, or INVALID_ARGUMENT with a BadRequest detail naming every field past its limit or holding
// an enum value this server does not know (proto3 parses unknown values; read as the default,
// `commit` = 99 would run as KEEP_ALL and change the session). Streams: each message is checked
// as it arrives; `index` is its position (0: the first), named in field paths as "messages[i]."
// for the messages after the first.
absl::Status CheckRequest(const v1::ListModelsRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::GetModelRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::TokenizeRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::DetokenizeRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::CreateSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::GetSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::ListSessionsRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::DeleteSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::ForkSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::ExportSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::GenerateRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::ScoreRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::HandOffSessionRequest& request, const RequestLimits& limits);
absl::Status CheckRequest(const v1::IngestRequest& request, const RequestLimits& limits,
                          int64_t index);
absl::Status CheckRequest(const v1::EncodeRequest& request, const RequestLimits& limits,
                          int64_t index);
// ImportSessionRequest.data is bounded by the snapshot size of the model it names, which the
// service checks as the chunks arrive.
absl::Status CheckRequest(const v1::ImportSessionRequest& request, const RequestLimits& limits,
                          int64_t index);

}  // namespace mnemo::server
