// SessionStore: the third tier of session states (device → host → store) and what makes a
// session durable: snapshots (engine/api/snapshot.h) kept per session and version. A server
// started on a store that holds sessions serves them again.
//
// FileSessionStore keeps them in a directory (a local disk, or a shared volume several replicas
// mount):
//   DIR/sessions/<id>/<version, 20 digits>.snap   published snapshots
//   DIR/sessions/<id>/.tmp-*                      writes in progress (removed at open)
//   DIR/sessions/<id>/<version>-<epoch>.snap     published by the owner of that epoch (replica
//                                                 mode; <epoch>: 20 digits)
//   DIR/sessions/<id>/owner-<epoch, 20 digits>    owner records (replica mode): the newest names
//                                                 the replica that owns the session
//   DIR/quarantine/<id>-<version>.snap (+ .why)   snapshots that failed to restore
// A version is published atomically: written to a temporary file, fsync'd, renamed into place,
// and the directory fsync'd; the session's other versions are removed only after that.
//
// Ownership (replica mode: several servers share the directory; docs/deploy.md): a replica
// claims a session by creating the owner record of the next epoch with link(2), which fails when
// the file exists, so exactly one of two racing claims wins, on a local disk and on NFS alike.
// The claim fences the previous owner: this store checks, before and after it publishes a
// version of a session it claimed, that its epoch is still the newest, and refuses the write
// otherwise; versions sort by (epoch, version), so nothing a fenced owner leaves behind outranks
// what the new owner writes.
//
// All file access goes through StoreEnv (leveldb's Env is the model), so FaultInjectingStoreEnv
// can fail, fill up or tear any write in tests.
//
// Errors: UNAVAILABLE for I/O failures (errno text in the message), RESOURCE_EXHAUSTED when the
// disk is full, NOT_FOUND for a session without a published version, INVALID_ARGUMENT for an id
// or version out of form, FAILED_PRECONDITION where the directory holds something of the wrong
// kind (a file or a link where a session's directory or a version belongs).
// Threading: every method is safe from any thread; operations on different sessions run
// concurrently, operations on one session are the caller's to order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mnemo::server {

// One file being written.
class StoreWritableFile {
 public:
  virtual ~StoreWritableFile() = default;
  virtual absl::Status Append(std::string_view data) = 0;
  virtual absl::Status Sync() = 0;  // fsync: the data is on stable storage
  virtual absl::Status Close() = 0;
};

// The file operations a FileSessionStore makes.
class StoreEnv {
 public:
  virtual ~StoreEnv() = default;
  virtual absl::StatusOr<std::unique_ptr<StoreWritableFile>> NewWritableFile(
      const std::string& path) = 0;
  // At most `max_bytes` from the start of the file.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) = 0;
  virtual absl::Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  virtual absl::Status CreateDir(const std::string& path) = 0;  // ok when it exists
  virtual absl::Status RemoveDir(const std::string& path) = 0;  // an empty directory
  virtual absl::Status SyncDir(const std::string& path) = 0;
  // The size of a regular file; FAILED_PRECONDITION for anything else (a directory, a link).
  virtual absl::StatusOr<uint64_t> GetFileSize(const std::string& path) = 0;
  // Names in a directory (no "." or ".."); NOT_FOUND when it does not exist.
  virtual absl::StatusOr<std::vector<std::string>> GetChildren(const std::string& dir) = 0;
  // A second name `to` for the file `from` (link(2)); ALREADY_EXISTS when `to` exists.
  virtual absl::Status LinkFile(const std::string& from, const std::string& to) = 0;
};

// The real file system (POSIX calls).
StoreEnv* PosixStoreEnv();

// A published version of a session.
struct StoredVersion {
  std::string id;
  int64_t version = 0;
  int64_t bytes = 0;
  int64_t epoch = 0;  // the owner epoch it was written under (0: no ownership)
};

// Who owns a session (replica mode).
struct SessionOwner {
  int64_t epoch = 0;    // 0: nobody ever claimed it
  std::string replica;  // empty: released (the last owner let go)
  std::string address;  // where that replica takes hand-off calls (may be empty)
  // The session's tenant (kept across claims and releases), so that a replica can refuse another
  // tenant's session before taking it over; empty: none, or a record written before tenants.
  std::string tenant;
};

class SessionStore {
 public:
  virtual ~SessionStore() = default;
  // Publishes `snapshot` as `version` of session `id` (32 lowercase hex digits), the session's
  // newest from then on; durable when it returns OK. Every other version is removed afterwards
  // (a lower `version` takes the session back); a failed Put leaves them as they were.
  virtual absl::Status Put(const std::string& id, int64_t version, std::string_view snapshot) = 0;
  // The snapshot of `version` (as Newest or List gave it), whole or (max_bytes) its first bytes;
  // NOT_FOUND once a newer version replaced it.
  virtual absl::StatusOr<std::string> Read(const StoredVersion& version,
                                           size_t max_bytes = SIZE_MAX) = 0;
  virtual absl::StatusOr<StoredVersion> Newest(const std::string& id) = 0;
  // The newest version of every session in the store.
  virtual absl::StatusOr<std::vector<StoredVersion>> List() = 0;
  // Removes every version of `id` (OK when there is none).
  virtual absl::Status Delete(const std::string& id) = 0;
  // Moves `version` aside with the reason it failed, keeping it for inspection, and removes the
  // session's older versions: the session no longer appears in List.
  virtual absl::Status Quarantine(const StoredVersion& version, std::string_view why) = 0;
  // Where the store lives, for logs.
  virtual std::string Describe() const = 0;

  // Ownership (replica mode). The newest owner record of `id` (epoch 0 when there is none).
  virtual absl::StatusOr<SessionOwner> Owner(const std::string& id) = 0;
  // Records `owner` as the owner of `id` with epoch `seen_epoch` + 1, unless another claim took
  // that epoch first (ABORTED). From then on this store's Puts and Deletes of `id` are fenced:
  // once a later claim is recorded they fail with ABORTED and change nothing. Returns the epoch.
  virtual absl::StatusOr<int64_t> Claim(const std::string& id, int64_t seen_epoch,
                                        const SessionOwner& owner) = 0;
  // OK while this store's claim on `id` is the newest (or it holds none); ABORTED once another
  // claim has been recorded.
  virtual absl::Status CheckClaim(const std::string& id) = 0;
  // Lets go of this store's claim on `id`: records a released owner (the next epoch, no replica)
  // if the claim is still the newest, and forgets it either way.
  virtual absl::Status Release(const std::string& id) = 0;
  // Forgets this store's claim on `id` without writing anything (it was fenced).
  virtual void Forget(const std::string& id) = 0;
};

// A store in `dir` (created if missing) through `env` (not owned; PosixStoreEnv() for the real
// file system). Leftover temporary files from a crash are removed.
absl::StatusOr<std::unique_ptr<SessionStore>> OpenFileSessionStore(const std::string& dir,
                                                                   StoreEnv* env);

}  // namespace mnemo::server
