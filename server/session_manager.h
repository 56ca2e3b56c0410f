// SessionManager: sessions as durable resources. Each session holds one document's memory for
// one model; a session runs one request at a time (Acquire hands out an exclusive lease, a second
// caller gets ABORTED); idle sessions expire after their TTL. States live in three tiers: on the
// model's device under a byte budget; beyond it the least recently used idle states are demoted
// to host memory; with a session store, idle host states beyond the host budget are written to
// the store and freed. Each comes back on its next request, exactly. Byte accounting is exact
// (SessionState::bytes()).
//
// Durability (with a store): NONE sessions live in memory (the store holds them only while they
// are evicted there); ASYNC sessions are written by the StoreWriter after each committed change;
// SYNC sessions are written before a request's result is sent (SessionLease::Persist). Recover
// lists what a store holds after a restart; those sessions are restored on first use. A stored
// snapshot that fails to restore (corrupt, torn, another model's) is quarantined: the store
// moves it aside and the session answers every request with the error until it is deleted.
//
// Replica mode (replica_id set; replicas share the store; docs/deploy.md): every session has an
// owner record in the store. A request for a session this replica does not hold takes it over:
// its current owner is asked to hand it off (it finishes the running request, writes the session
// and lets go), then this replica claims it (the next epoch, which fences the previous owner) and
// restores the newest stored version. A replica that finds its claim superseded drops its copy
// and answers ABORTED with reason SESSION_MOVED (or takes the session back when asked for it).
// ReleaseAll (drain) writes every session to the store and lets go of it.
//
// Tenants (server/auth.h): every session belongs to the tenant that created it (kept in its
// snapshots, so it survives restarts, eviction to the store and moves between replicas). The
// lookup every session method goes through (Locate) answers another tenant's session with the
// same NOT_FOUND as a session that does not exist; an admin caller may see (Get, List) and
// delete every tenant's sessions, never run requests on them. The tenant's session and
// state-byte quotas are checked where sessions are made (Insert).
//
// Threading: every method is safe from any thread. `mu_` guards the session table, the byte and
// count totals, the stopping flag, and every entry's mutable fields (labels, TTL, last use, busy,
// moving, tier, versions, tokens seen); an entry's memory belongs to its lease holder while busy,
// to the thread moving it while `moving` (eviction to or restore from the store, an asynchronous
// snapshot's encoding: others wait on `moved_cv_`), and to the manager, under `mu_`, otherwise.
// Methods ending in Locked expect `mu_` held; the others take it (the reaper thread too) and never
// run the model or touch the store under it.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "base/mutex.h"
#include "engine/api/snapshot.h"
#include "engine/api/types.h"
#include "server/auth.h"
#include "server/model_registry.h"
#include "server/session_store.h"

namespace mnemo::server {

class Metrics;
class StoreWriter;
using engine::api::Durability;

// What a session remembers: the model's state, and tokens received but not run yet (the tail of
// the document, at most one segment, run with whatever comes next so segment boundaries do not
// depend on how a client split its document).
struct SessionMemory {
  engine::api::SessionState state;
  std::vector<int32_t> pending;
  // For a model with a draft (LoadedModel::draft): the draft's state, always holding the same
  // document as `state`. Empty otherwise.
  engine::api::SessionState draft_state;
};

// An empty memory for `model` (and its draft) on the model's device.
absl::StatusOr<SessionMemory> NewMemory(const LoadedModel& model);
// A deep copy of a session's memory on the model's device (snapshots for rollback, forks,
// scratch work).
absl::StatusOr<SessionMemory> CopyMemory(const LoadedModel& model, const SessionMemory& memory);

enum class Tier : uint8_t { kDevice, kHost, kStore };
const char* TierName(Tier tier);

struct SessionOptions {
  absl::Duration ttl = absl::ZeroDuration();  // zero: the manager's default
  std::map<std::string, std::string> labels;
  std::optional<engine::api::SamplingParams> default_sampling;
  std::optional<Durability> durability;  // unset: the manager's default
  // The owner of a new session and its quotas (sessions, state_bytes); "" and no limits
  // without an auth file.
  std::string tenant;
  TenantQuotas quotas;
};

// A copy of a session's descriptive fields.
struct SessionInfo {
  std::string id;
  std::string model;
  std::map<std::string, std::string> labels;
  absl::Time create_time;
  absl::Time last_use_time;
  absl::Duration ttl;
  int64_t tokens_seen = 0;
  int64_t state_bytes = 0;
  Tier tier = Tier::kDevice;
  int64_t state_version = 0;
  int64_t memory_tokens = 0;
  int64_t pending_tokens = 0;
  std::optional<engine::api::SamplingParams> default_sampling;
  uint64_t sequence = 0;  // creation order (list paging)
  Durability durability = Durability::kNone;
  int64_t durable_version = -1;  // the newest version the store holds; -1: none
  std::string tenant;
};

struct SessionManagerOptions {
  int64_t max_sessions = 10000;
  int64_t device_budget_bytes = int64_t{4} << 30;  // session states on the compute device
  absl::Duration default_ttl = absl::Hours(1);
  absl::Duration max_ttl = absl::Hours(24 * 7);
  absl::Duration reap_interval = absl::Seconds(1);
  // Idle host-tier states beyond this many bytes go to the store (0: no limit; needs a store).
  int64_t host_budget_bytes = 0;
  SessionStore* store = nullptr;  // not owned; null: no store (every session NONE)
  Durability default_durability = Durability::kNone;
  // How long an ASYNC session whose snapshot failed to reach the store waits before the reaper
  // tries again.
  absl::Duration async_retry_interval = absl::Seconds(5);
  // Replica mode (needs a store): this replica's name in owner records; empty: the server owns
  // its store alone.
  std::string replica_id;
  // Where other replicas reach this one for hand-offs (empty: they fence it without asking).
  std::string advertise;
  // Asks the replica at `address` to hand session `id` off (ReplicaService.HandOffSession): OK or
  // NOT_FOUND when it may be taken now, UNAVAILABLE when that replica cannot be reached.
  std::function<absl::Status(const std::string& address, const std::string& id)> hand_off;
  // Replica mode: the models sessions taken over from the store may belong to.
  const ModelRegistry* models = nullptr;
};

class SessionManager;

// Exclusive use of one session for the length of a request. The memory may be changed freely;
// Commit makes the change a new state version. Destroying the lease releases the session.
class SessionLease {
 public:
  ~SessionLease();
  SessionLease(const SessionLease&) = delete;
  SessionLease& operator=(const SessionLease&) = delete;

  const std::string& id() const;
  LoadedModel& model() const;
  SessionMemory& memory();
  int64_t state_version() const { return version_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  const std::optional<engine::api::SamplingParams>& default_sampling() const;
  // Where the state was when the request arrived: "resident", "promoted" (from host) or "store".
  const char* state_source() const { return source_; }
  // SYNC sessions: makes the memory durable as the version Commit(tokens_added) will record,
  // before the request's result is sent. UNAVAILABLE when the store fails (the request must then
  // fail and the session keep its version). OK and nothing written for the other levels.
  absl::Status Persist(int64_t tokens_added);
  // Whether Persist wrote the version the next Commit records (that result survives a crash, so
  // the request commits even when its client went away before reading it).
  bool persisted() const { return persisted_version_ == version_ + 1; }
  // Records the memory as the session's new version with `tokens_added` more document tokens.
  void Commit(int64_t tokens_added);

 private:
  friend class SessionManager;
  struct Entry;
  SessionLease(SessionManager& manager, std::shared_ptr<Entry> entry, const char* source);
  SessionManager& manager_;
  std::shared_ptr<Entry> entry_;
  int64_t acquired_version_;
  int64_t version_;
  int64_t tokens_seen_;
  int64_t persisted_version_ = -1;
  const char* source_;
};

class SessionManager {
 public:
  SessionManager(SessionManagerOptions options, Metrics* metrics);
  ~SessionManager();  // stops the reaper; states are freed
  SessionManager(const SessionManager&) = delete;
  SessionManager& operator=(const SessionManager&) = delete;

  // RESOURCE_EXHAUSTED when the session quota is reached or no device room can be made;
  // INVALID_ARGUMENT for a TTL above the maximum; FAILED_PRECONDITION for ASYNC or SYNC without
  // a store; UNAVAILABLE when a SYNC session's first version cannot be made durable.
  absl::StatusOr<SessionInfo> Create(LoadedModel& model, const SessionOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A new session holding `memory` (on the model's device) with `tokens_seen` document tokens
  // (ImportSession); errors as Create.
  absl::StatusOr<SessionInfo> CreateFrom(LoadedModel& model, const SessionOptions& options,
                                         SessionMemory memory, int64_t tokens_seen)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Lists the sessions the store holds (after a restart) as store-tier sessions, restored on
  // first use; sessions of models not loaded stay in the store untouched. Returns how many.
  absl::StatusOr<int> Recover(const ModelRegistry& models) ABSL_LOCKS_EXCLUDED(mu_);
  // The descriptive fields a snapshot of the leased session records (ExportSession).
  engine::api::SnapshotSession SnapshotFields(const SessionLease& lease) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until the store writes queued so far are done (shutdown, tests).
  void FlushStore();
  bool has_store() const { return options_.store != nullptr; }
  // In replica mode a session another replica holds is taken over (so is one for Delete, Fork
  // and Acquire).
  // `caller` (here and below): NOT_FOUND for a session of another tenant (an admin may Get,
  // List and Delete them).
  absl::StatusOr<SessionInfo> Get(const std::string& id, const Caller& caller = Caller())
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sessions created after `after_sequence` carrying every label of `label_filter`, oldest
  // first, at most `limit`; *more tells whether further ones exist.
  std::vector<SessionInfo> List(uint64_t after_sequence, int limit,
                                const std::map<std::string, std::string>& label_filter, bool* more,
                                const Caller& caller = Caller()) const ABSL_LOCKS_EXCLUDED(mu_);
  // ABORTED while a request runs on it or when `expected_version` (0 = any) differs. A SYNC
  // session's stored versions are gone when it returns (UNAVAILABLE if the store fails).
  absl::Status Delete(const std::string& id, int64_t expected_version,
                      const Caller& caller = Caller()) ABSL_LOCKS_EXCLUDED(mu_);
  // A new session holding a copy of `id`'s memory; `options` fields left empty come from it
  // (but the owner: options.tenant).
  absl::StatusOr<SessionInfo> Fork(const std::string& id, int64_t expected_version,
                                   const SessionOptions& options, const Caller& caller = Caller())
      ABSL_LOCKS_EXCLUDED(mu_);
  // Exclusive use of a session, its state on the device (promoted from host or restored from the
  // store if it was there). NOT_FOUND, ABORTED (busy, or version ≠ expected_version when that is
  // not 0), RESOURCE_EXHAUSTED (no device room), UNAVAILABLE (the store could not be read),
  // DATA_LOSS / FAILED_PRECONDITION / INVALID_ARGUMENT (its stored snapshot is unusable: the
  // session is quarantined).
  absl::StatusOr<std::unique_ptr<SessionLease>> Acquire(const std::string& id,
                                                        int64_t expected_version,
                                                        const Caller& caller = Caller())
      ABSL_LOCKS_EXCLUDED(mu_);
  // Replica mode: writes session `id` to the store (whatever its durability) once no request
  // runs on it (waiting until `deadline`) and lets go of it; returns the version written.
  // NOT_FOUND when this replica does not hold it, DEADLINE_EXCEEDED when a request still runs.
  absl::StatusOr<int64_t> HandOff(const std::string& id, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Replica mode: hands off every idle session (a drain); returns how many went.
  int ReleaseAll() ABSL_LOCKS_EXCLUDED(mu_);
  bool replica_mode() const { return options_.store != nullptr && !options_.replica_id.empty(); }
  // Whether a new session would be refused for the session quota (readiness).
  bool full() const ABSL_LOCKS_EXCLUDED(mu_);
  // Deletes idle sessions whose TTL ran out by `now`; returns how many.
  int ReapExpired(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes idle host states, least recently used first, to the store until the host tier fits
  // its budget (waiting for evictions other threads have started), or no idle host state is
  // left, or the store fails. The reaper runs it; tests may call it. Returns how many it moved.
  int EvictToStore() ABSL_LOCKS_EXCLUDED(mu_);
  int64_t device_bytes() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t host_bytes() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t store_count() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class SessionLease;
  using Entry = SessionLease::Entry;
  void Release(SessionLease& lease) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<SessionInfo> Insert(LoadedModel& model, const SessionOptions& options,
                                     std::optional<SessionMemory> memory, int64_t tokens_seen)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Restores a store-tier entry (marked moving by the caller) onto the device.
  absl::Status RestoreFromStore(const std::shared_ptr<Entry>& entry) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits while `entry` is being moved by another thread.
  void WaitNotMovingLocked(const Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  engine::api::SnapshotSession FieldsLocked(const Entry& entry, int64_t version,
                                            int64_t tokens_seen) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a snapshot of idle ASYNC sessions whose last write failed (once async_retry_interval
  // has passed) or that changed without one.
  void RetryAsyncWrites(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  void OnStoreWrite(const std::string& id, int64_t version, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Demotes idle device states, least recently used first, until `bytes` more fit the budget.
  absl::Status MakeRoomLocked(int64_t bytes, const Entry* keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DemoteLocked(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PromoteLocked(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo InfoLocked(const Entry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<Entry>> FindLocked(const std::string& id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry of `id` as `caller` may see it (the one place tenants are checked: NOT_FOUND, as
  // for no such session, when it is another tenant's, unless `admin_may` and caller.admin).
  absl::StatusOr<std::shared_ptr<Entry>> Locate(const std::string& id, const Caller& caller,
                                                bool admin_may) ABSL_LOCKS_EXCLUDED(mu_);
  // The entry of `id`: in the table (checking, in replica mode, that this replica still owns
  // it), or taken over from the store (replica mode).
  absl::StatusOr<std::shared_ptr<Entry>> LocateAny(const std::string& id, const Caller& caller,
                                                   bool admin_may) ABSL_LOCKS_EXCLUDED(mu_);
  // Counts a session (or its removal) in its tenant's usage.
  void AddUsageLocked(const std::string& tenant, int64_t sessions, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // (NOT_FOUND without taking anything over when the owner record names another tenant than
  // the caller's.)
  absl::StatusOr<std::shared_ptr<Entry>> TakeOver(const std::string& id, const Caller& caller,
                                                  bool admin_may) ABSL_LOCKS_EXCLUDED(mu_);
  // An entry for the stored session `v` (store tier; quarantined when its manifest is unusable).
  // UNAVAILABLE for an I/O failure; FAILED_PRECONDITION for a model this server has not loaded.
  absl::StatusOr<std::shared_ptr<Entry>> EntryFromStore(const StoredVersion& v,
                                                        const ModelRegistry& models)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets a session another replica claimed (its store state is that replica's now).
  void DropFencedLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the session; its stored versions are removed in the background unless `store_done`.
  void EraseLocked(const std::string& id, const char* reason, bool store_done = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<absl::Duration> TtlFor(absl::Duration requested) const;
  void ReaperLoop() ABSL_LOCKS_EXCLUDED(mu_);

  const SessionManagerOptions options_;
  Metrics* metrics_;
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t device_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t host_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t device_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t store_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evicting_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // host states being written to the store
  int64_t creating_ ABSL_GUARDED_BY(mu_) = 0;        // sessions being created (quota)
  std::set<std::string> taking_over_ ABSL_GUARDED_BY(mu_);  // TakeOver running (one per id)
  struct TenantUsage {
    int64_t sessions = 0;
    int64_t bytes = 0;
  };
  std::map<std::string, TenantUsage> usage_ ABSL_GUARDED_BY(mu_);  // sessions being made too
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  CondVar reaper_cv_;                    // wakes the reaper early (shutdown, host tier over budget)
  CondVar moved_cv_;                     // an entry stopped moving
  std::unique_ptr<StoreWriter> writer_;  // with a store
  std::thread reaper_;                   // last: starts once everything above exists
};

// 128 random bits from the kernel's CSPRNG as 32 lowercase hex digits.
std::string NewSessionId();

}  // namespace mnemo::server
