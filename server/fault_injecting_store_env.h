// FaultInjectingStoreEnv: a StoreEnv that forwards to another one and fails, fills up or tears
// the operations a fault spec names, so tests (and a server a test drives) meet every I/O error
// the session store can; it can also simulate a crash (DropUnsyncedData). leveldb's
// FaultInjectionTestEnv is the model.
//
// A spec is comma- (or newline-) separated rules `op:mode[@N[+]][%P]` (base/fault_spec.h); ""
// means no faults:
//   op    create (NewWritableFile), append, sync, close, rename, remove (RemoveFile, RemoveDir),
//         read (ReadFile), stat (GetFileSize), list (GetChildren), mkdir (CreateDir), syncdir,
//         link (LinkFile), or any (every op);
//   mode  fail: UNAVAILABLE, as EIO; full: RESOURCE_EXHAUSTED, as ENOSPC; tear: an append writes
//         the first half of its data to the file and then fails UNAVAILABLE (other ops fail as
//         with fail); hang: the op never returns (a volume that stopped answering; the
//         thread is lost until the process exits);
//   @N, %P  the N-th matching op (@N+: and every later one: a crash there), with probability P.
// A failed op does nothing, except a torn append (its prefix is written) and close (the file is
// closed anyway, as close(2) does).
//
// A spec `@PATH` takes the rules from the file PATH as it changes, looked at on every op.
//
// Threading: every method is safe from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

#include "base/fault_spec.h"
#include "base/mutex.h"
#include "server/session_store.h"

namespace mnemo::server {

enum class StoreOp {
  kCreate,
  kAppend,
  kSync,
  kClose,
  kRename,
  kRemove,
  kRead,
  kStat,
  kList,
  kMkdir,
  kSyncDir,
  kLink,
};
inline constexpr int kNumStoreOps = 12;

// The op's name in a spec ("append").
std::string_view StoreOpName(StoreOp op);

enum class StoreFaultMode { kFail, kFull, kTear, kHang };

using StoreFaultRule = FaultRule<StoreOp, StoreFaultMode>;

// The rules of `spec` (not an @PATH spec); INVALID_ARGUMENT naming the bad rule.
absl::StatusOr<std::vector<StoreFaultRule>> ParseStoreFaultSpec(std::string_view spec);

class FaultInjectingStoreEnv final : public StoreEnv {
 public:
  // `base` is not owned and outlives this env.
  explicit FaultInjectingStoreEnv(StoreEnv* base, uint64_t seed = 1);
  ~FaultInjectingStoreEnv() override;
  FaultInjectingStoreEnv(const FaultInjectingStoreEnv&) = delete;
  FaultInjectingStoreEnv& operator=(const FaultInjectingStoreEnv&) = delete;

  // Replaces the rules and restarts their counts: a spec, or `@PATH`. INVALID_ARGUMENT naming the
  // bad rule (the rules stay as they were).
  absl::Status SetSpec(std::string_view spec);

  // Faults injected so far, per op and in all.
  int64_t injected(StoreOp op) const;
  int64_t injected_total() const;

  // What a crash would leave: every file written through this env is cut to its length at its
  // last Sync, and files whose directory was not synced since they were created or renamed into
  // it disappear. (Removals and renames away are not undone.) Goes straight to the base env, with
  // no faults; files still open must not be used afterwards.
  absl::Status DropUnsyncedData();

  absl::StatusOr<std::unique_ptr<StoreWritableFile>> NewWritableFile(
      const std::string& path) override;
  absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override;
  absl::Status LinkFile(const std::string& from, const std::string& to) override;
  absl::Status RemoveFile(const std::string& path) override;
  absl::Status CreateDir(const std::string& path) override;
  absl::Status RemoveDir(const std::string& path) override;
  absl::Status SyncDir(const std::string& path) override;
  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override;
  absl::StatusOr<std::vector<std::string>> GetChildren(const std::string& dir) override;

 private:
  friend class FaultInjectingWritableFile;

  // What a file written through this env holds, and what of it a crash keeps.
  struct FileState {
    uint64_t size = 0;
    uint64_t synced = 0;
  };
  enum class Fault { kNone, kFail, kTear };

  // Whether `op` on `path` fails, and how; an injected failure's status in `*status`. Never
  // returns when the fault is a hang.
  Fault Decide(StoreOp op, const std::string& path, absl::Status* status) ABSL_LOCKS_EXCLUDED(mu_);
  Fault DecideOnce(StoreOp op, const std::string& path, absl::Status* status, bool* hang)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Appended(const std::string& path, uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  void Synced(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_);

  StoreEnv* const base_;
  mutable Mutex mu_;
  FaultRuleSet<StoreOp, StoreFaultMode> rules_ ABSL_GUARDED_BY(mu_);
  std::array<int64_t, kNumStoreOps> injected_ ABSL_GUARDED_BY(mu_){};
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> undurable_names_ ABSL_GUARDED_BY(mu_);  // not dir-synced yet
};

}  // namespace mnemo::server
