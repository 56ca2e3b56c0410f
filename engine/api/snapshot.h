// Session snapshots: one session's whole state (every layer's memory, the draft's for a
// speculative model, the pending tail, and the session's descriptive fields) as one versioned,
// checksummed byte string, so a session outlives its process and moves between servers and
// between backends (CPU ↔ CUDA). The format is docs/session-snapshots.md.
//
// Reading validates everything (header, format version, manifest, model fingerprint, every
// layer's kind and tensor shapes, section checksums, ring bookkeeping, index-like contents)
// before it builds a state; a failed read never touches a live session. Errors:
//   INVALID_ARGUMENT     not a snapshot, malformed or truncated header/manifest/sections, values
//                        outside the model's shapes;
//   FAILED_PRECONDITION  another model's snapshot (both fingerprints in the message), or a format
//                        version this build does not read;
//   DATA_LOSS            a section's checksum does not match (bytes changed after writing).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/api/model.h"
#include "engine/api/types.h"

namespace mnemo::engine::api {

// The snapshot format this build writes (and the only one it reads).
inline constexpr uint32_t kSnapshotFormatVersion = 1;
// The first 8 bytes of every snapshot.
inline constexpr std::string_view kSnapshotMagic = {"MNEMOSS\0", 8};
// Upper bound of a manifest's encoded size; larger ones are refused before they are parsed.
inline constexpr int64_t kMaxSnapshotManifestBytes = int64_t{1} << 20;

// What a snapshot records about the session beside its states. The engine carries these fields
// verbatim; the server gives them their meaning.
struct SnapshotSession {
  std::string id;
  std::string model_name;
  int64_t state_version = 0;
  int64_t tokens_seen = 0;
  // Tokens received but not run yet (the tail of the document, at most one segment).
  std::vector<int32_t> pending;
  std::map<std::string, std::string> labels;
  int64_t ttl_ms = 0;
  int64_t create_time_unix_ms = 0;
  int64_t last_use_unix_ms = 0;
  std::optional<SamplingParams> default_sampling;
  Durability durability = Durability::kNone;
  // The owner (the server's tenant name); "" for none, and then absent from the manifest, so
  // snapshots written before tenants existed read as before.
  std::string tenant;
};

// The header and manifest of a snapshot: enough to list a stored session without reading its
// states.
struct SnapshotManifest {
  uint32_t format_version = 0;
  std::string model_fingerprint;  // ModelDescription::fingerprint of the model that wrote it
  std::string draft_fingerprint;  // empty without a draft
  std::string session_memory;     // the model state's key/value ring dtype (--session-memory)
  SnapshotSession session;
  int64_t state_bytes = 0;  // tensor bytes of all states (model and draft)
  int64_t total_bytes = 0;  // the whole snapshot's size
};

// The fingerprints a model's snapshots carry (Describe() reads the checkpoint again: compute
// once per loaded model and keep).
struct SnapshotIdentity {
  std::string model_fingerprint;
  std::string draft_fingerprint;  // empty without a draft
};
absl::StatusOr<SnapshotIdentity> IdentityOf(const Model& model);

// Writes a snapshot of `state` (and `draft_state`, which must be set exactly when the model has a
// draft) on the model's device or in host memory; the states are read, never changed.
absl::StatusOr<std::string> WriteSnapshot(const Model& model, const SnapshotIdentity& identity,
                                          const SessionState& state,
                                          const SessionState* draft_state,
                                          const SnapshotSession& session);

// Parses and validates the header and manifest from the start of a snapshot (`prefix` may hold
// more); does not need the model. The manifest's size comes from the first 32 bytes
// (SnapshotManifestPrefixBytes), so a caller can read just enough of a file.
absl::StatusOr<SnapshotManifest> ReadSnapshotManifest(std::string_view prefix);
// Bytes from the start of a snapshot that hold its header and manifest, from its first
// kSnapshotHeaderBytes bytes.
inline constexpr size_t kSnapshotHeaderBytes = 32;
absl::StatusOr<int64_t> SnapshotManifestPrefixBytes(std::string_view header);

// A snapshot read back onto a model's device.
struct RestoredSession {
  SnapshotManifest manifest;
  SessionState state;
  SessionState draft_state;  // empty without a draft
};

// Validates `bytes` as a whole snapshot of `model` (see the error list above) and builds its
// states on the model's device.
absl::StatusOr<RestoredSession> ReadSnapshot(const Model& model, const SnapshotIdentity& identity,
                                             std::string_view bytes);

}  // namespace mnemo::engine::api
