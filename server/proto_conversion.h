// Conversions between mnemo.v1 messages and the server core's types, with field validation.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/api/types.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "mnemo/v1/mnemo.pb.h"
#include "server/grpc_status.h"
#include "server/model_registry.h"
#include "server/session_manager.h"

namespace mnemo::server {

// Proto sampling (zeros meaning defaults) to the engine's; violations are named under `field`.
engine::api::SamplingParams SamplingFromProto(const v1::SamplingParams& p, const std::string& field,
                                              FieldViolations& violations);
v1::SamplingParams SamplingToProto(const engine::api::SamplingParams& p);

// Checks ids against the vocabulary ("field[i]: …").
void CheckTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocab,
                   const std::string& field, FieldViolations& violations);

// Labels: at most `max_labels`, keys 1–63 bytes of [a-z0-9_-], values ≤ 256 bytes.
void CheckLabels(const google::protobuf::Map<std::string, std::string>& labels, int max_labels,
                 const std::string& field, FieldViolations& violations);

void SessionToProto(const SessionInfo& info, v1::Session* out);
v1::Durability DurabilityToProto(Durability durability);
// Unset for DURABILITY_UNSPECIFIED (the server's default).
std::optional<Durability> DurabilityFromProto(v1::Durability durability);
void ModelToProto(const LoadedModel& model, v1::Model* out);
void EncoderToProto(const LoadedEncoder& encoder, v1::Model* out);

google::protobuf::Timestamp TimeToProto(absl::Time t);
google::protobuf::Duration DurationToProto(absl::Duration d);
absl::Duration DurationFromProto(const google::protobuf::Duration& d);

}  // namespace mnemo::server
