// A session's memory as a snapshot (engine/api/snapshot.h) and back, for one loaded model and,
// with speculative decoding, its draft: what the session store, ExportSession and ImportSession
// move. No transport and no store here.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

#include "engine/api/snapshot.h"
#include "server/model_registry.h"
#include "server/session_manager.h"

namespace mnemo::server {

// The fingerprints the model's snapshots carry (from the descriptions the registry computed).
engine::api::SnapshotIdentity IdentityOf(const LoadedModel& model);

// Serialises `memory` (state, draft state, pending tail) with the session's descriptive fields.
absl::StatusOr<std::string> EncodeSession(const LoadedModel& model, const SessionMemory& memory,
                                          engine::api::SnapshotSession fields);

struct DecodedSession {
  engine::api::SnapshotManifest manifest;
  SessionMemory memory;  // on the model's device
};

// Validates `bytes` as a snapshot of `model` and builds its memory (the engine's error codes:
// INVALID_ARGUMENT, FAILED_PRECONDITION, DATA_LOSS).
absl::StatusOr<DecodedSession> DecodeSession(const LoadedModel& model, std::string_view bytes);

// Whether `bytes` is this model's snapshot (its fingerprint) written under another
// --session-memory: a snapshot a server with that setting restores, not a damaged one.
bool WrittenWithOtherSessionMemory(const LoadedModel& model, std::string_view bytes);

}  // namespace mnemo::server
