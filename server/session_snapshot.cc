#include "server/session_snapshot.h"

#include <utility>

#include "base/status_macros.h"

namespace mnemo::server {

engine::api::SnapshotIdentity IdentityOf(const LoadedModel& model) {
  engine::api::SnapshotIdentity identity;
  identity.model_fingerprint = model.description.fingerprint;
  if (model.draft != nullptr) identity.draft_fingerprint = model.draft->description.fingerprint;
  return identity;
}

absl::StatusOr<std::string> EncodeSession(const LoadedModel& model, const SessionMemory& memory,
                                          engine::api::SnapshotSession fields) {
  fields.model_name = model.name;
  fields.pending = memory.pending;
  return engine::api::WriteSnapshot(*model.model, IdentityOf(model), memory.state,
                                    model.draft != nullptr ? &memory.draft_state : nullptr, fields);
}

absl::StatusOr<DecodedSession> DecodeSession(const LoadedModel& model, std::string_view bytes) {
  ASSIGN_OR_RETURN(engine::api::RestoredSession restored,
                   engine::api::ReadSnapshot(*model.model, IdentityOf(model), bytes));
  DecodedSession out;
  out.memory.state = std::move(restored.state);
  out.memory.draft_state = std::move(restored.draft_state);
  out.memory.pending = restored.manifest.session.pending;
  out.manifest = std::move(restored.manifest);
  return out;
}

bool WrittenWithOtherSessionMemory(const LoadedModel& model, std::string_view bytes) {
  const absl::StatusOr<engine::api::SnapshotManifest> manifest =
      engine::api::ReadSnapshotManifest(bytes);
  return manifest.ok() && manifest->model_fingerprint == model.description.fingerprint &&
         manifest->session_memory != DTypeName(model.model->session_memory());
}

}  // namespace mnemo::server
