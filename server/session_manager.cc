#include "server/session_manager.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

#include <sys/random.h>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/error_reason.h"
#include "server/metrics.h"
#include "server/session_snapshot.h"
#include "server/store_writer.h"

namespace mnemo::server {

absl::StatusOr<SessionMemory> NewMemory(const LoadedModel& model) {
  SessionMemory memory;
  ASSIGN_OR_RETURN(memory.state, model.model->NewState());
  if (model.draft != nullptr) {
    ASSIGN_OR_RETURN(memory.draft_state, model.draft->model->NewState());
  }
  return memory;
}

namespace {

// `memory` with each state (the model's and, with a draft, the draft's) replaced by
// copy(its model, the state): a clone, or a move to host memory and back.
template <typename CopyFn>
absl::StatusOr<SessionMemory> MapMemory(const LoadedModel& model, const SessionMemory& memory,
                                        CopyFn copy) {
  SessionMemory out;
  ASSIGN_OR_RETURN(out.state, copy(*model.model, memory.state));
  if (model.draft != nullptr) {
    ASSIGN_OR_RETURN(out.draft_state, copy(*model.draft->model, memory.draft_state));
  }
  out.pending = memory.pending;
  return out;
}

}  // namespace

absl::StatusOr<SessionMemory> CopyMemory(const LoadedModel& model, const SessionMemory& memory) {
  return MapMemory(model, memory,
                   [](const engine::api::Model& m, const engine::api::SessionState& s) {
                     return m.CloneState(s);
                   });
}

struct SessionLease::Entry {
  std::string id;
  std::string tenant;  // the owner; set before the entry is shared, never changed
  LoadedModel* model = nullptr;
  uint64_t sequence = 0;
  absl::Time created;
  // Guarded by the manager's mu_ (not annotatable here: the mutex belongs to another object).
  std::map<std::string, std::string> labels;
  absl::Duration ttl;
  absl::Time last_use;
  bool busy = false;
  bool moving = false;
  Tier tier = Tier::kDevice;
  int64_t version = 0;
  int64_t tokens_seen = 0;
  std::optional<engine::api::SamplingParams> default_sampling;
  int64_t bytes = 0;
  Durability durability = Durability::kNone;
  int64_t durable_version = -1;
  int64_t stored_pending = 0;  // store tier: pending tokens of the stored snapshot
  bool write_queued = false;   // an ASYNC snapshot waits in the StoreWriter
  absl::Time retry_after;      // after a failed ASYNC write: when the reaper tries again
  absl::Status quarantine;     // not OK: the stored snapshot failed to restore
  bool fenced = false;         // replica mode: another replica claimed it (dropped when idle)
  // Guarded by `busy` / `moving`: only the lease holder or mover (or the manager, under its
  // mutex, while neither).
  SessionMemory memory;
};

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
    case Tier::kStore:
      return "store";
  }
  return "device";
}

std::string NewSessionId() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("getrandom");
      std::abort();  // no session may get a guessable id
    }
    got += static_cast<size_t>(n);
  }
  std::string id;
  id.reserve(32);
  constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char b : bytes) {
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 15]);
  }
  return id;
}

namespace {

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

// A store failure as the request that needed it sees it.
absl::Status StoreUnavailable(const absl::Status& status, int64_t version) {
  return absl::UnavailableError(
      absl::StrCat("the session store could not make this request durable (", status.message(),
                   "); the session stays at state version ", version));
}

void LogStore(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "mnemo-server: session store: %s: %s\n", what.c_str(),
               status.ToString().c_str());
}

// The answer for a session another replica owns now: nothing was done, retry.
absl::Status Moved(const std::string& id, absl::string_view why) {
  return WithReason(absl::AbortedError(absl::StrCat("session ", id, " moved to another replica (",
                                                    why, "); nothing was committed: retry")),
                    kReasonSessionMoved);
}

// The answer for a session that does not exist, or that the caller may not see: the same text.
absl::Status NoSession(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no session \"", id, "\" (unknown, deleted or expired)"));
}

bool IsSessionIdText(const std::string& id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

// --- SessionLease -------------------------------------------------------------------------------

SessionLease::SessionLease(SessionManager& manager, std::shared_ptr<Entry> entry,
                           const char* source)
    : manager_(manager),
      entry_(std::move(entry)),
      acquired_version_(entry_->version),
      version_(entry_->version),
      tokens_seen_(entry_->tokens_seen),
      source_(source) {}

SessionLease::~SessionLease() { manager_.Release(*this); }

const std::string& SessionLease::id() const { return entry_->id; }
LoadedModel& SessionLease::model() const { return *entry_->model; }
SessionMemory& SessionLease::memory() { return entry_->memory; }
const std::optional<engine::api::SamplingParams>& SessionLease::default_sampling() const {
  return entry_->default_sampling;
}

void SessionLease::Commit(int64_t tokens_added) {
  ++version_;
  tokens_seen_ += tokens_added;
}

absl::Status SessionLease::Persist(int64_t tokens_added) {
  if (manager_.replica_mode() && entry_->durability != Durability::kSync) {
    // The result is sent only while this replica still owns the session (a SYNC write is fenced
    // by the store itself).
    absl::Status owned = manager_.options_.store->CheckClaim(entry_->id);
    if (absl::IsAborted(owned)) {
      MutexLock lock(&manager_.mu_);
      entry_->fenced = true;  // dropped when the lease ends
      return Moved(entry_->id, owned.message());
    }
    if (!owned.ok()) return StoreUnavailable(owned, version_);
    return absl::OkStatus();
  }
  if (manager_.writer_ == nullptr || entry_->durability != Durability::kSync) {
    return absl::OkStatus();
  }
  const int64_t version = version_ + 1;
  engine::api::SnapshotSession fields;
  {
    MutexLock lock(&manager_.mu_);
    fields = manager_.FieldsLocked(*entry_, version, tokens_seen_ + tokens_added);
  }
  auto snapshot = EncodeSession(*entry_->model, entry_->memory, std::move(fields));
  absl::Status status = snapshot.status();
  if (status.ok()) {
    status = manager_.writer_->PutNow(entry_->id, version, *snapshot, "sync");  // logs failures
  } else {
    LogStore(absl::StrCat("encoding SYNC session ", entry_->id), status);
  }
  if (absl::IsAborted(status)) {
    MutexLock lock(&manager_.mu_);
    entry_->fenced = true;
    return Moved(entry_->id, status.message());
  }
  if (!status.ok()) return StoreUnavailable(status, version_);
  persisted_version_ = version;
  return absl::OkStatus();
}

// --- SessionManager -----------------------------------------------------------------------------

SessionManager::SessionManager(SessionManagerOptions options, Metrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      writer_(options_.store == nullptr
                  ? nullptr
                  : std::make_unique<StoreWriter>(
                        options_.store, metrics,
                        [this](const std::string& id, int64_t version, const absl::Status& s) {
                          OnStoreWrite(id, version, s);
                        })),
      reaper_([this] { ReaperLoop(); }) {}

SessionManager::~SessionManager() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    reaper_cv_.SignalAll();
  }
  reaper_.join();
  writer_.reset();  // finishes the queued writes (its callback takes mu_)
}

void SessionManager::FlushStore() {
  if (writer_ != nullptr) writer_->Flush();
}

void SessionManager::ReaperLoop() {
  mu_.Lock();  // released around each pass, which takes it itself
  while (!stopping_) {
    reaper_cv_.WaitFor(&mu_, absl::ToChronoMilliseconds(options_.reap_interval));
    if (stopping_) break;
    mu_.Unlock();
    ReapExpired(absl::Now());
    RetryAsyncWrites(absl::Now());
    EvictToStore();
    mu_.Lock();
  }
  mu_.Unlock();
}

absl::StatusOr<absl::Duration> SessionManager::TtlFor(absl::Duration requested) const {
  if (requested == absl::ZeroDuration()) return options_.default_ttl;
  if (requested < absl::ZeroDuration() || requested > options_.max_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl must be in (0, ", absl::FormatDuration(options_.max_ttl), "]"));
  }
  return requested;
}

engine::api::SnapshotSession SessionManager::FieldsLocked(const Entry& e, int64_t version,
                                                          int64_t tokens_seen) const {
  engine::api::SnapshotSession f;
  f.id = e.id;
  f.model_name = e.model->name;
  f.state_version = version;
  f.tokens_seen = tokens_seen;
  f.labels = e.labels;
  f.ttl_ms = absl::ToInt64Milliseconds(e.ttl);
  f.create_time_unix_ms = UnixMillis(e.created);
  f.last_use_unix_ms = UnixMillis(e.last_use);
  f.default_sampling = e.default_sampling;
  f.durability = e.durability;
  f.tenant = e.tenant;
  return f;
}

engine::api::SnapshotSession SessionManager::SnapshotFields(const SessionLease& lease) const {
  MutexLock lock(&mu_);
  return FieldsLocked(*lease.entry_, lease.version_, lease.tokens_seen_);
}

absl::StatusOr<SessionInfo> SessionManager::Create(LoadedModel& model,
                                                   const SessionOptions& options) {
  return Insert(model, options, std::nullopt, 0);
}

absl::StatusOr<SessionInfo> SessionManager::CreateFrom(LoadedModel& model,
                                                       const SessionOptions& options,
                                                       SessionMemory memory, int64_t tokens_seen) {
  return Insert(model, options, std::move(memory), tokens_seen);
}

absl::StatusOr<SessionInfo> SessionManager::Insert(LoadedModel& model,
                                                   const SessionOptions& options,
                                                   std::optional<SessionMemory> memory,
                                                   int64_t tokens_seen) {
  ASSIGN_OR_RETURN(const absl::Duration ttl, TtlFor(options.ttl));
  const Durability durability = options.durability.value_or(options_.default_durability);
  if (durability != Durability::kNone && writer_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("durability ", std::string(engine::api::EnumName(durability)),
                     " needs a session store: start the server with --session-store DIR"));
  }
  const int64_t bytes = model.SessionBytes();
  auto entry = std::make_shared<Entry>();
  {
    MutexLock lock(&mu_);
    const TenantUsage& used = usage_[options.tenant];
    const TenantQuotas& quota = options.quotas;
    if (quota.sessions > 0 && used.sessions >= quota.sessions) {
      if (metrics_ != nullptr) metrics_->TenantQuotaRejected(options.tenant, "sessions");
      return QuotaExceeded("sessions",
                           absl::StrCat("tenant ", options.tenant, " has ", used.sessions,
                                        " sessions, its sessions "
                                        "quota; delete some"));
    }
    if (quota.state_bytes > 0 && used.bytes + bytes > quota.state_bytes) {
      if (metrics_ != nullptr) metrics_->TenantQuotaRejected(options.tenant, "state_bytes");
      return QuotaExceeded("state_bytes",
                           absl::StrCat("tenant ", options.tenant, "'s sessions hold ", used.bytes,
                                        " bytes of state; another ", bytes, " would pass its ",
                                        "state_bytes quota of ", quota.state_bytes));
    }
    if (static_cast<int64_t>(sessions_.size()) + creating_ >= options_.max_sessions) {
      if (metrics_ != nullptr) metrics_->Rejected("session_quota");
      return absl::ResourceExhaustedError(absl::StrCat(
          "session quota reached: ", options_.max_sessions, " sessions are open; delete some"));
    }
    if (absl::Status room = MakeRoomLocked(bytes, nullptr); !room.ok()) {
      if (metrics_ != nullptr) metrics_->Rejected("state_pool_full");
      return room;
    }
    if (!memory) {
      auto fresh = NewMemory(model);
      if (!fresh.ok()) return fresh.status();
      memory = *std::move(fresh);
    }
    entry->id = NewSessionId();
    entry->tenant = options.tenant;
    entry->model = &model;
    entry->created = entry->last_use = absl::Now();
    entry->labels = options.labels;
    entry->ttl = ttl;
    entry->default_sampling = options.default_sampling;
    entry->durability = durability;
    entry->bytes = bytes;
    entry->tokens_seen = tokens_seen;
    entry->memory = *std::move(memory);
    device_bytes_ += bytes;
    ++device_count_;
    ++creating_;
    AddUsageLocked(options.tenant, 1, bytes);  // reserved: concurrent creations see it
  }
  // The entry is nobody else's until it is in the table: persist its first version unlocked.
  absl::Status persisted;
  if (replica_mode()) {
    // Its owner record, so that another replica asked for it finds it (and asks for it).
    absl::StatusOr<int64_t> claimed = options_.store->Claim(
        entry->id, 0, SessionOwner{0, options_.replica_id, options_.advertise, entry->tenant});
    if (!claimed.ok()) {
      persisted = absl::UnavailableError(absl::StrCat(
          "the session store could not record the new session: ", claimed.status().message()));
    } else if (metrics_ != nullptr) {
      metrics_->Ownership("claimed");
    }
  }
  std::optional<std::string> async_snapshot;
  if (persisted.ok() && durability != Durability::kNone) {
    engine::api::SnapshotSession fields;
    {
      MutexLock lock(&mu_);
      fields = FieldsLocked(*entry, 0, tokens_seen);
    }
    auto snapshot = EncodeSession(model, entry->memory, std::move(fields));
    if (!snapshot.ok()) {
      persisted = snapshot.status();
    } else if (durability == Durability::kSync) {
      persisted = writer_->PutNow(entry->id, 0, *snapshot, "sync");
      if (!persisted.ok()) persisted = StoreUnavailable(persisted, 0);
    } else {
      async_snapshot = *std::move(snapshot);
    }
  }
  MutexLock lock(&mu_);
  --creating_;
  if (!persisted.ok()) {
    device_bytes_ -= bytes;
    --device_count_;
    AddUsageLocked(options.tenant, -1, -bytes);
    PublishLocked();
    if (replica_mode()) options_.store->Delete(entry->id).IgnoreError();  // its owner record
    return persisted;
  }
  if (durability == Durability::kSync) entry->durable_version = 0;
  entry->sequence = next_sequence_++;
  sessions_[entry->id] = entry;
  if (async_snapshot) {  // queued once the entry is in the table, where the writer reports
    writer_->Put(entry->id, 0, *std::move(async_snapshot), "async");
    entry->write_queued = true;
  }
  PublishLocked();
  return InfoLocked(*entry);
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::EntryFromStore(
    const StoredVersion& v, const ModelRegistry& models) {
  SessionStore& store = *options_.store;
  // The header gives the manifest's size; the manifest gives the session's fields.
  absl::StatusOr<engine::api::SnapshotManifest> manifest =
      [&]() -> absl::StatusOr<engine::api::SnapshotManifest> {
    ASSIGN_OR_RETURN(std::string header, store.Read(v, engine::api::kSnapshotHeaderBytes));
    ASSIGN_OR_RETURN(int64_t prefix, engine::api::SnapshotManifestPrefixBytes(header));
    ASSIGN_OR_RETURN(std::string bytes, store.Read(v, static_cast<size_t>(prefix)));
    return engine::api::ReadSnapshotManifest(bytes);
  }();
  auto entry = std::make_shared<Entry>();
  entry->id = v.id;
  entry->created = entry->last_use = absl::Now();
  entry->ttl = options_.default_ttl;
  entry->tier = Tier::kStore;
  entry->version = v.version;
  entry->durable_version = v.version;
  if (!manifest.ok()) {
    if (manifest.status().code() == absl::StatusCode::kUnavailable ||
        manifest.status().code() == absl::StatusCode::kNotFound) {
      // An I/O failure, or replaced meanwhile: the file may be fine; leave it for later.
      return absl::UnavailableError(
          absl::StrCat("reading session ", v.id, ": ", manifest.status().message()));
    }
    // Unreadable: served as quarantined under the default model so clients see why.
    ASSIGN_OR_RETURN(entry->model, models.Find(""));
    entry->quarantine = manifest.status();
    if (absl::Status q = store.Quarantine(v, manifest.status().ToString()); !q.ok()) {
      LogStore(absl::StrCat("quarantining session ", v.id), q);
    }
    if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(manifest.status()));
  } else {
    const engine::api::SnapshotSession& f = manifest->session;
    auto model = models.Find(f.model_name);
    if (!model.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("session ", v.id, " belongs to model \"",
                                                        f.model_name,
                                                        "\", which this server has not loaded"));
    }
    entry->model = *model;
    if (f.id != v.id || f.state_version != v.version) {
      entry->quarantine = absl::InvalidArgumentError(
          absl::StrCat("the stored snapshot names session ", f.id, " version ", f.state_version,
                       ", not the file's session ", v.id, " version ", v.version));
      (void)store.Quarantine(v, entry->quarantine.ToString());
      if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(entry->quarantine));
    }
    entry->labels = f.labels;
    if (f.ttl_ms > 0) {
      entry->ttl = std::min(absl::Milliseconds(f.ttl_ms), options_.max_ttl);
    }
    entry->tokens_seen = f.tokens_seen;
    entry->default_sampling = f.default_sampling;
    entry->durability = f.durability;
    entry->tenant = f.tenant;
    entry->stored_pending = static_cast<int64_t>(f.pending.size());
    entry->created = absl::FromUnixMillis(f.create_time_unix_ms);
  }
  entry->bytes = entry->model->SessionBytes();
  return entry;
}

absl::StatusOr<int> SessionManager::Recover(const ModelRegistry& models) {
  // Replicas take sessions over one by one, on the first request for each.
  if (options_.store == nullptr || replica_mode()) return 0;
  ASSIGN_OR_RETURN(std::vector<StoredVersion> stored, options_.store->List());
  std::vector<std::shared_ptr<Entry>> found;
  for (const StoredVersion& v : stored) {
    absl::StatusOr<std::shared_ptr<Entry>> entry = EntryFromStore(v, models);
    if (!entry.ok()) {
      // An I/O failure, or another model's session: left in the store for a later start.
      LogStore(absl::StrCat("session ", v.id, " left in the store"), entry.status());
      continue;
    }
    found.push_back(*std::move(entry));
  }
  std::sort(found.begin(), found.end(),
            [](const std::shared_ptr<Entry>& a, const std::shared_ptr<Entry>& b) {
              return absl::ToUnixMillis(a->created) < absl::ToUnixMillis(b->created);
            });
  MutexLock lock(&mu_);
  int added = 0;
  for (std::shared_ptr<Entry>& e : found) {
    if (sessions_.count(e->id) != 0) continue;
    e->sequence = next_sequence_++;
    sessions_[e->id] = e;
    ++store_count_;
    AddUsageLocked(e->tenant, 1, e->bytes);
    ++added;
  }
  PublishLocked();
  return added;
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::FindLocked(
    const std::string& id) const {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NoSession(id);
  return it->second;
}

void SessionManager::WaitNotMovingLocked(const Entry& entry) {
  while (entry.moving) moved_cv_.Wait(&mu_);
}

void SessionManager::DropFencedLocked(const std::string& id) {
  options_.store->Forget(id);
  if (metrics_ != nullptr) metrics_->Ownership("fenced");
  std::fprintf(stderr, "mnemo-server: session %s: claimed by another replica; dropped here\n",
               id.c_str());
  EraseLocked(id, "moved", /*store_done=*/true);
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::Locate(const std::string& id,
                                                                            const Caller& caller,
                                                                            bool admin_may) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, LocateAny(id, caller, admin_may));
  if (entry->tenant != caller.tenant && !(admin_may && caller.admin)) return NoSession(id);
  return entry;
}

void SessionManager::AddUsageLocked(const std::string& tenant, int64_t sessions, int64_t bytes) {
  TenantUsage& u = usage_[tenant];
  u.sessions += sessions;
  u.bytes += bytes;
  if (metrics_ != nullptr) metrics_->SetTenantSessions(tenant, u.sessions, u.bytes);
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::LocateAny(
    const std::string& id, const Caller& caller, bool admin_may) {
  std::shared_ptr<Entry> held;
  {
    MutexLock lock(&mu_);
    if (!replica_mode()) return FindLocked(id);
    while (taking_over_.count(id) != 0) moved_cv_.Wait(&mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) held = it->second;
  }
  if (held != nullptr) {
    // Still ours? (A replica that was unreachable for a while may have been fenced.)
    absl::Status owned = held->fenced ? Moved(id, "fenced") : options_.store->CheckClaim(id);
    if (!absl::IsAborted(owned)) {
      if (!owned.ok()) {
        return absl::UnavailableError(
            absl::StrCat("the session store could not confirm this replica owns session ", id, ": ",
                         owned.message(), "; retry"));
      }
      return held;
    }
    MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end() && it->second == held) {
      held->fenced = true;
      if (held->busy || held->moving) return Moved(id, "another replica claimed it");
      DropFencedLocked(id);
    }
  }
  return TakeOver(id, caller, admin_may);
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::TakeOver(const std::string& id,
                                                                              const Caller& caller,
                                                                              bool admin_may) {
  const absl::Status not_found = NoSession(id);
  if (!IsSessionIdText(id)) return not_found;
  {
    MutexLock lock(&mu_);
    while (taking_over_.count(id) != 0) moved_cv_.Wait(&mu_);
    if (auto it = sessions_.find(id); it != sessions_.end() && !it->second->fenced) {
      return it->second;  // another request of this replica took it over meanwhile
    }
    taking_over_.insert(id);
  }
  auto run = [&]() -> absl::StatusOr<std::shared_ptr<Entry>> {
    SessionStore& store = *options_.store;
    auto unavailable = [&](const absl::Status& s) {
      return absl::UnavailableError(
          absl::StrCat("session ", id, " could not be taken over: ", s.message(), "; retry"));
    };
    // The claim follows the owner record it saw: a live owner is asked to let go first (and the
    // record read again: it may have released it, or another replica may own it by then, which
    // is asked in turn); an owner that cannot be reached, or says it does not hold the session,
    // is claimed over as it stands (the claim fences it; its newest durable version moves).
    absl::StatusOr<SessionOwner> owner;
    int64_t asked_epoch = -1;
    for (int round = 0;; ++round) {
      owner = store.Owner(id);
      if (!owner.ok()) return unavailable(owner.status());
      if (owner->epoch == 0) return not_found;
      // Another tenant's session stays where it is (a record without a tenant is checked once
      // the session's snapshot is read, in Locate).
      if (!owner->tenant.empty() && owner->tenant != caller.tenant &&
          !(admin_may && caller.admin)) {
        return not_found;
      }
      const bool live = !owner->replica.empty() && owner->replica != options_.replica_id &&
                        !owner->address.empty() && options_.hand_off;
      if (!live || owner->epoch == asked_epoch) break;
      if (round == 4) {
        return unavailable(absl::UnavailableError("its owner changed while it was being asked"));
      }
      const absl::Status handed = options_.hand_off(owner->address, id);
      const bool unreachable = absl::IsUnavailable(handed) || absl::IsDeadlineExceeded(handed);
      if (metrics_ != nullptr) {
        metrics_->HandOff("in", handed.ok() || absl::IsNotFound(handed) ? "ok"
                                : unreachable                           ? "unreachable"
                                                                        : "error");
      }
      if (unreachable) break;  // claimed over the record as read
      if (!handed.ok() && !absl::IsNotFound(handed)) {
        return unavailable(absl::Status(
            handed.code(), absl::StrCat("replica ", owner->replica, " did not hand it off (",
                                        handed.message(), ")")));
      }
      asked_epoch = owner->epoch;
    }
    absl::StatusOr<int64_t> claimed = store.Claim(
        id, owner->epoch, SessionOwner{0, options_.replica_id, options_.advertise, owner->tenant});
    if (absl::IsAborted(claimed.status())) {
      if (metrics_ != nullptr) metrics_->Ownership("lost_race");
      return Moved(id, "another replica claimed it at the same time");
    }
    if (!claimed.ok()) return unavailable(claimed.status());
    if (metrics_ != nullptr) metrics_->Ownership("claimed");
    absl::StatusOr<StoredVersion> newest = store.Newest(id);
    if (absl::IsNotFound(newest.status())) {
      // A memory-only session whose replica stopped without writing it: gone.
      store.Delete(id).IgnoreError();
      return absl::NotFoundError(
          absl::StrCat("session ", id,
                       " was lost: the replica that held it stopped without writing it to "
                       "the session store (durability NONE)"));
    }
    absl::StatusOr<std::shared_ptr<Entry>> entry =
        newest.ok() ? EntryFromStore(*newest, *options_.models) : newest.status();
    if (!entry.ok()) {
      store.Release(id).IgnoreError();
      if (absl::IsFailedPrecondition(entry.status())) return entry.status();  // model not here
      return unavailable(entry.status());
    }
    // Claimed by another replica while this one was reading the store (or stopped)? Then the
    // session is that replica's.
    if (absl::Status still = store.CheckClaim(id); !still.ok()) {
      store.Forget(id);
      if (absl::IsAborted(still)) {
        if (metrics_ != nullptr) metrics_->Ownership("fenced");
        return Moved(id, still.message());
      }
      return unavailable(still);
    }
    MutexLock lock(&mu_);
    if (auto it = sessions_.find(id); it != sessions_.end()) EraseLocked(id, "moved", true);
    (*entry)->sequence = next_sequence_++;
    sessions_[id] = *entry;
    ++store_count_;
    AddUsageLocked((*entry)->tenant, 1, (*entry)->bytes);
    PublishLocked();
    return entry;
  };
  absl::StatusOr<std::shared_ptr<Entry>> result = run();
  MutexLock lock(&mu_);
  taking_over_.erase(id);
  moved_cv_.SignalAll();
  return result;
}

absl::StatusOr<SessionInfo> SessionManager::Get(const std::string& id, const Caller& caller) {
  ASSIGN_OR_RETURN(auto entry, Locate(id, caller, /*admin_may=*/true));
  MutexLock lock(&mu_);
  return InfoLocked(*entry);
}

std::vector<SessionInfo> SessionManager::List(
    uint64_t after_sequence, int limit, const std::map<std::string, std::string>& label_filter,
    bool* more, const Caller& caller) const {
  MutexLock lock(&mu_);
  std::vector<const Entry*> matching;
  for (const auto& [id, e] : sessions_) {
    if (e->sequence <= after_sequence) continue;
    if (e->tenant != caller.tenant && !caller.admin) continue;
    bool ok = true;
    for (const auto& [k, v] : label_filter) {
      auto it = e->labels.find(k);
      ok = ok && it != e->labels.end() && it->second == v;
    }
    if (ok) matching.push_back(e.get());
  }
  std::sort(matching.begin(), matching.end(),
            [](const Entry* a, const Entry* b) { return a->sequence < b->sequence; });
  *more = static_cast<int>(matching.size()) > limit;
  if (*more) matching.resize(static_cast<size_t>(limit));
  std::vector<SessionInfo> out;
  out.reserve(matching.size());
  for (const Entry* e : matching) out.push_back(InfoLocked(*e));
  return out;
}

absl::Status SessionManager::Delete(const std::string& id, int64_t expected_version,
                                    const Caller& caller) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Locate(id, caller, /*admin_may=*/true));
  {
    MutexLock lock(&mu_);
    WaitNotMovingLocked(*entry);
    if (sessions_.count(id) == 0 || sessions_[id] != entry) {
      return absl::NotFoundError(absl::StrCat("no session \"", id, "\""));
    }
    if (entry->busy) {
      return absl::AbortedError("a request is running on this session; delete it afterwards");
    }
    if (expected_version != 0 && expected_version != entry->version) {
      return absl::AbortedError(absl::StrCat("the session is at state version ", entry->version,
                                             ", not the expected ", expected_version));
    }
    if ((entry->durability != Durability::kSync && !replica_mode()) || writer_ == nullptr) {
      EraseLocked(id, "deleted");
      return absl::OkStatus();
    }
    entry->moving = true;  // others wait until the store has forgotten it
  }
  // An acknowledged deletion of a SYNC session must not come back after a crash either, nor
  // any deleted session through another replica taking it over from the store.
  absl::Status removed = writer_->DeleteNow(id);
  MutexLock lock(&mu_);
  entry->moving = false;
  moved_cv_.SignalAll();
  if (!removed.ok()) {
    LogStore(absl::StrCat("deleting session ", id), removed);
    return absl::UnavailableError(absl::StrCat("the session store could not delete the session (",
                                               removed.message(), "); it still exists"));
  }
  EraseLocked(id, "deleted", /*store_done=*/true);
  return absl::OkStatus();
}

void SessionManager::EraseLocked(const std::string& id, const char* reason, bool store_done) {
  auto it = sessions_.find(id);
  Entry& e = *it->second;
  switch (e.tier) {
    case Tier::kDevice:
      device_bytes_ -= e.bytes;
      --device_count_;
      break;
    case Tier::kHost:
      host_bytes_ -= e.bytes;
      break;
    case Tier::kStore:
      --store_count_;
      break;
  }
  AddUsageLocked(e.tenant, -1, -e.bytes);
  if (writer_ != nullptr && !store_done) writer_->Delete(id);
  sessions_.erase(it);
  if (metrics_ != nullptr) metrics_->SessionClosed(reason);
  PublishLocked();
}

absl::StatusOr<SessionInfo> SessionManager::Fork(const std::string& id, int64_t expected_version,
                                                 const SessionOptions& options,
                                                 const Caller& caller) {
  ASSIGN_OR_RETURN(std::unique_ptr<SessionLease> source, Acquire(id, expected_version, caller));
  LoadedModel& model = source->model();
  std::shared_ptr<Entry> src = source->entry_;
  SessionOptions copy = options;
  {
    MutexLock lock(&mu_);
    if (copy.labels.empty()) copy.labels = src->labels;
    if (copy.ttl == absl::ZeroDuration()) copy.ttl = src->ttl;
    if (!copy.default_sampling) copy.default_sampling = src->default_sampling;
    if (!copy.durability) copy.durability = src->durability;
  }
  ASSIGN_OR_RETURN(SessionMemory memory, CopyMemory(model, src->memory));
  return Insert(model, copy, std::move(memory), source->tokens_seen());
}

absl::StatusOr<std::unique_ptr<SessionLease>> SessionManager::Acquire(const std::string& id,
                                                                      int64_t expected_version,
                                                                      const Caller& caller) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Locate(id, caller, /*admin_may=*/false));
  {
    MutexLock lock(&mu_);
    WaitNotMovingLocked(*entry);
    if (sessions_.count(id) == 0 || sessions_[id] != entry) {
      if (entry->fenced) return Moved(id, "another replica claimed it");
      return absl::NotFoundError(absl::StrCat("no session \"", id, "\" (deleted or expired)"));
    }
    if (!entry->quarantine.ok()) {
      return absl::Status(entry->quarantine.code(),
                          absl::StrCat("session ", id, " is quarantined: its stored snapshot ",
                                       "could not be restored: ", entry->quarantine.message()));
    }
    if (entry->busy) {
      return absl::AbortedError(
          "another request is running on this session (one at a time); retry when it finishes");
    }
    if (expected_version != 0 && expected_version != entry->version) {
      return absl::AbortedError(absl::StrCat("the session is at state version ", entry->version,
                                             ", not the expected ", expected_version));
    }
    const char* source = "resident";
    if (entry->tier == Tier::kHost) {
      if (absl::Status room = MakeRoomLocked(entry->bytes, entry.get()); !room.ok()) {
        if (metrics_ != nullptr) metrics_->Rejected("state_pool_full");
        return room;
      }
      RETURN_IF_ERROR(PromoteLocked(*entry));
      source = "promoted";
    }
    if (entry->tier != Tier::kStore) {
      entry->busy = true;
      entry->last_use = absl::Now();
      return std::unique_ptr<SessionLease>(new SessionLease(*this, entry, source));
    }
    entry->moving = true;  // others wait for the restore rather than see the session busy
  }
  absl::Status restored = RestoreFromStore(entry);
  MutexLock lock(&mu_);
  entry->moving = false;
  moved_cv_.SignalAll();
  RETURN_IF_ERROR(restored);
  entry->busy = true;
  entry->last_use = absl::Now();
  return std::unique_ptr<SessionLease>(new SessionLease(*this, entry, "store"));
}

absl::Status SessionManager::RestoreFromStore(const std::shared_ptr<Entry>& entry) {
  SessionStore& store = *options_.store;
  const absl::Time start = absl::Now();
  absl::StatusOr<StoredVersion> stored = store.Newest(entry->id);
  absl::StatusOr<std::string> bytes =
      stored.ok() ? store.Read(*stored) : absl::StatusOr<std::string>(stored.status());
  if (!bytes.ok()) {
    if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(bytes.status()));
    if (bytes.status().code() == absl::StatusCode::kNotFound) {
      // The store lost the file: nothing to restore from.
      absl::Status lost = absl::DataLossError(absl::StrCat(
          "the session store no longer holds session ", entry->id, ": ", bytes.status().message()));
      MutexLock lock(&mu_);
      entry->quarantine = lost;
      return lost;
    }
    return absl::UnavailableError(absl::StrCat("the session store could not be read (",
                                               bytes.status().message(), "); retry"));
  }
  auto decoded = DecodeSession(*entry->model, *bytes);
  if (decoded.ok()) {
    const engine::api::SnapshotSession& f = decoded->manifest.session;
    MutexLock lock(&mu_);
    if (f.id != entry->id || f.state_version != entry->version) {
      decoded = absl::InvalidArgumentError(
          absl::StrCat("the stored snapshot holds session ", f.id, " version ", f.state_version,
                       ", not session ", entry->id, " version ", entry->version));
    }
  }
  if (!decoded.ok()) {
    const absl::Status& why = decoded.status();
    if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(why));
    if (why.code() == absl::StatusCode::kResourceExhausted ||
        why.code() == absl::StatusCode::kUnavailable) {
      return why;  // the device, not the snapshot: try again later
    }
    if (WrittenWithOtherSessionMemory(*entry->model, *bytes)) {
      // This model's sound snapshot under another --session-memory: a setting of this server,
      // not damage. It stays in the store for a server with that setting.
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", entry->id, " cannot be restored by this server: ", why.message()));
    }
    LogStore(absl::StrCat("quarantining session ", entry->id, " version ", stored->version), why);
    if (absl::Status q = store.Quarantine(*stored, why.ToString()); !q.ok()) {
      LogStore(absl::StrCat("quarantining session ", entry->id), q);
    }
    MutexLock lock(&mu_);
    entry->quarantine = why;
    return absl::Status(why.code(), absl::StrCat("session ", entry->id,
                                                 " is quarantined: its stored snapshot could not "
                                                 "be restored: ",
                                                 why.message()));
  }
  MutexLock lock(&mu_);
  if (absl::Status room = MakeRoomLocked(entry->bytes, entry.get()); !room.ok()) {
    if (metrics_ != nullptr) metrics_->Rejected("state_pool_full");
    return room;
  }
  entry->memory = std::move(decoded->memory);
  entry->tier = Tier::kDevice;
  --store_count_;
  device_bytes_ += entry->bytes;
  ++device_count_;
  if (entry->durability == Durability::kNone && !replica_mode()) {
    // The store held it only as the lowest tier: a NONE session is memory-only again. (Replicas
    // keep it: its owner record lives there, and the snapshot goes with its next hand-off.)
    entry->durable_version = -1;
    writer_->Delete(entry->id);
  }
  if (metrics_ != nullptr) {
    metrics_->TierMove("store", "device");
    metrics_->SnapshotRestored("store", static_cast<int64_t>(bytes->size()),
                               absl::ToDoubleSeconds(absl::Now() - start));
  }
  PublishLocked();
  return absl::OkStatus();
}

void SessionManager::Release(SessionLease& lease) {
  std::shared_ptr<Entry> entry = lease.entry_;
  Entry& e = *entry;
  const bool committed = lease.version_ != lease.acquired_version_;
  engine::api::SnapshotSession fields;
  {
    MutexLock lock(&mu_);
    if (lease.persisted_version_ > lease.version_) {
      // Persist ran but the request did not commit: the store is ahead of the memory. Rewrite it
      // below so a restart does not bring back a version nobody was given.
      std::fprintf(stderr, "mnemo-server: session %s: persisted version %lld was not committed\n",
                   e.id.c_str(), static_cast<long long>(lease.persisted_version_));
      e.durable_version = -1;
    }
    e.version = lease.version_;
    e.tokens_seen = lease.tokens_seen_;
    e.last_use = absl::Now();
    if (committed && lease.persisted_version_ == lease.version_) {
      e.durable_version = lease.version_;
    }
    e.busy = false;
    moved_cv_.SignalAll();  // a hand-off may wait for the request to end
    if (e.fenced) {         // another replica owns it now: this copy goes
      auto it = sessions_.find(e.id);
      if (it != sessions_.end() && it->second == entry) DropFencedLocked(e.id);
      return;
    }
    const bool write_async = writer_ != nullptr && e.durability != Durability::kNone &&
                             e.tier == Tier::kDevice && e.durable_version != e.version &&
                             (committed || lease.persisted_version_ > lease.version_);
    if (!write_async) return;
    // Encode while others wait (moving), then queue the write: the request already answered.
    e.moving = true;
    fields = FieldsLocked(e, e.version, e.tokens_seen);
  }
  const int64_t version = fields.state_version;
  auto snapshot = EncodeSession(*e.model, e.memory, std::move(fields));
  MutexLock lock(&mu_);
  e.moving = false;
  moved_cv_.SignalAll();
  if (!snapshot.ok()) {
    LogStore(absl::StrCat("encoding session ", e.id), snapshot.status());
    if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(snapshot.status()));
    return;
  }
  writer_->Put(e.id, version, *std::move(snapshot), "async");
  e.write_queued = true;
}

void SessionManager::RetryAsyncWrites(absl::Time now) {
  std::vector<std::shared_ptr<Entry>> due;
  {
    MutexLock lock(&mu_);
    if (writer_ == nullptr) return;
    for (auto& [id, e] : sessions_) {
      if (e->durability == Durability::kAsync && e->tier != Tier::kStore && !e->busy &&
          !e->moving && !e->write_queued && e->quarantine.ok() && !e->fenced &&
          e->durable_version != e->version && now >= e->retry_after) {
        e->moving = true;
        due.push_back(e);
      }
    }
  }
  for (const std::shared_ptr<Entry>& e : due) {
    engine::api::SnapshotSession fields;
    {
      MutexLock lock(&mu_);
      fields = FieldsLocked(*e, e->version, e->tokens_seen);
    }
    const int64_t version = fields.state_version;
    auto snapshot = EncodeSession(*e->model, e->memory, std::move(fields));
    MutexLock lock(&mu_);
    e->moving = false;
    moved_cv_.SignalAll();
    if (!snapshot.ok()) {
      e->retry_after = now + options_.async_retry_interval;
      continue;
    }
    writer_->Put(e->id, version, *std::move(snapshot), "async");
    e->write_queued = true;
  }
}

void SessionManager::OnStoreWrite(const std::string& id, int64_t version,
                                  const absl::Status& status) {
  MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Entry& e = *it->second;
  e.write_queued = false;
  if (absl::IsAborted(status) && replica_mode()) {
    e.fenced = true;  // another replica claimed it: dropped on its next request here
    return;
  }
  if (!status.ok()) {  // counted and logged by the writer; the reaper tries again
    e.retry_after = absl::Now() + options_.async_retry_interval;
    return;
  }
  if (version <= e.version && version > e.durable_version) e.durable_version = version;
}

int SessionManager::EvictToStore() {
  int moved = 0;
  while (true) {
    std::shared_ptr<Entry> victim;
    engine::api::SnapshotSession fields;
    bool write = false;
    {
      MutexLock lock(&mu_);
      if (writer_ == nullptr || options_.host_budget_bytes <= 0 || stopping_) break;
      // States another thread is evicting count as gone: wait for them rather than evict more.
      while (host_bytes_ > options_.host_budget_bytes &&
             host_bytes_ - evicting_bytes_ <= options_.host_budget_bytes) {
        moved_cv_.Wait(&mu_);
      }
      if (host_bytes_ <= options_.host_budget_bytes) break;
      for (auto& [id, e] : sessions_) {
        if (e->busy || e->moving || e->tier != Tier::kHost) continue;
        if (victim == nullptr || e->last_use < victim->last_use) victim = e;
      }
      if (victim == nullptr) break;
      victim->moving = true;
      evicting_bytes_ += victim->bytes;
      write = victim->durable_version != victim->version;
      fields = FieldsLocked(*victim, victim->version, victim->tokens_seen);
    }
    absl::Status status;
    if (write) {
      auto snapshot = EncodeSession(*victim->model, victim->memory, std::move(fields));
      status = snapshot.status();
      if (status.ok()) status = writer_->PutNow(victim->id, victim->version, *snapshot, "evict");
    }
    MutexLock lock(&mu_);
    victim->moving = false;
    evicting_bytes_ -= victim->bytes;
    moved_cv_.SignalAll();
    if (!status.ok()) {
      LogStore(absl::StrCat("evicting session ", victim->id), status);
      break;  // the host tier stays over budget until the store recovers
    }
    if (sessions_.count(victim->id) == 0) continue;
    victim->stored_pending = static_cast<int64_t>(victim->memory.pending.size());
    victim->memory = SessionMemory();
    victim->tier = Tier::kStore;
    victim->durable_version = victim->version;
    host_bytes_ -= victim->bytes;
    ++store_count_;
    if (metrics_ != nullptr) metrics_->TierMove("host", "store");
    PublishLocked();
    ++moved;
  }
  return moved;
}

absl::Status SessionManager::MakeRoomLocked(int64_t bytes, const Entry* keep) {
  while (device_bytes_ + bytes > options_.device_budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [id, e] : sessions_) {
      if (e.get() == keep || e->busy || e->moving || e->tier != Tier::kDevice) continue;
      if (victim == nullptr || e->last_use < victim->last_use) victim = e.get();
    }
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "no room for another session state on the device: ", device_bytes_, " of ",
          options_.device_budget_bytes, " budget bytes belong to sessions with running requests"));
    }
    RETURN_IF_ERROR(DemoteLocked(*victim));
  }
  return absl::OkStatus();
}

absl::Status SessionManager::DemoteLocked(Entry& e) {
  ASSIGN_OR_RETURN(e.memory,
                   MapMemory(*e.model, e.memory,
                             [](const engine::api::Model& m, const engine::api::SessionState& s) {
                               return m.StateToHost(s);
                             }));
  e.tier = Tier::kHost;
  device_bytes_ -= e.bytes;
  host_bytes_ += e.bytes;
  --device_count_;
  if (metrics_ != nullptr) metrics_->TierMove("device", "host");
  if (options_.host_budget_bytes > 0 && host_bytes_ > options_.host_budget_bytes) {
    reaper_cv_.SignalAll();  // the reaper evicts to the store
  }
  PublishLocked();
  return absl::OkStatus();
}

absl::Status SessionManager::PromoteLocked(Entry& e) {
  ASSIGN_OR_RETURN(e.memory,
                   MapMemory(*e.model, e.memory,
                             [](const engine::api::Model& m, const engine::api::SessionState& s) {
                               return m.StateFromHost(s);
                             }));
  e.tier = Tier::kDevice;
  device_bytes_ += e.bytes;
  host_bytes_ -= e.bytes;
  ++device_count_;
  if (metrics_ != nullptr) metrics_->TierMove("host", "device");
  PublishLocked();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SessionManager::HandOff(const std::string& id, absl::Time deadline) {
  if (!replica_mode()) return absl::FailedPreconditionError("this server is not a replica");
  std::shared_ptr<Entry> entry;
  engine::api::SnapshotSession fields;
  bool write = false;
  {
    MutexLock lock(&mu_);
    // A take-over of the session running here ends first: answering NOT_FOUND meanwhile would
    // let the caller claim it while this replica goes on to serve it.
    while (taking_over_.count(id) != 0 && absl::Now() < deadline) {
      moved_cv_.WaitFor(&mu_, absl::ToChronoNanoseconds(deadline - absl::Now()));
    }
    if (taking_over_.count(id) != 0) {
      return absl::DeadlineExceededError(absl::StrCat("session ", id, " is being taken over"));
    }
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->fenced) {
      return absl::NotFoundError(absl::StrCat("this replica does not hold session ", id));
    }
    entry = it->second;
    while ((entry->busy || entry->moving) && absl::Now() < deadline) {
      moved_cv_.WaitFor(&mu_, absl::ToChronoNanoseconds(deadline - absl::Now()));
    }
    it = sessions_.find(id);
    if (it == sessions_.end() || it->second != entry) {
      return absl::NotFoundError(absl::StrCat("this replica does not hold session ", id));
    }
    if (entry->busy || entry->moving) {
      return absl::DeadlineExceededError(
          absl::StrCat("a request is still running on session ", id));
    }
    entry->moving = true;
    write = entry->tier != Tier::kStore && entry->quarantine.ok() &&
            entry->durable_version != entry->version;
    fields = FieldsLocked(*entry, entry->version, entry->tokens_seen);
  }
  const int64_t version = fields.state_version;
  absl::Status status;
  if (write) {
    auto snapshot = EncodeSession(*entry->model, entry->memory, std::move(fields));
    status = snapshot.status();
    if (status.ok()) status = writer_->PutNow(id, version, *snapshot, "handoff");
  }
  if (status.ok()) status = options_.store->Release(id);
  MutexLock lock(&mu_);
  entry->moving = false;
  moved_cv_.SignalAll();
  if (absl::IsAborted(status)) {  // fenced meanwhile: the session is another replica's already
    entry->fenced = true;
    DropFencedLocked(id);
    return absl::NotFoundError(absl::StrCat("session ", id, " had moved already"));
  }
  if (!status.ok()) {
    LogStore(absl::StrCat("handing off session ", id), status);
    return absl::UnavailableError(absl::StrCat("session ", id,
                                               " could not be written to the "
                                               "store: ",
                                               status.message()));
  }
  if (metrics_ != nullptr) metrics_->Ownership("released");
  EraseLocked(id, "moved", /*store_done=*/true);
  return version;
}

int SessionManager::ReleaseAll() {
  if (!replica_mode()) return 0;
  std::vector<std::string> ids;
  {
    MutexLock lock(&mu_);
    for (const auto& [id, e] : sessions_) ids.push_back(id);
  }
  int released = 0;
  for (const std::string& id : ids) {
    absl::StatusOr<int64_t> v = HandOff(id, absl::Now());
    if (v.ok()) {
      ++released;
    } else if (!absl::IsNotFound(v.status())) {
      LogStore(absl::StrCat("releasing session ", id), v.status());
    }
  }
  return released;
}

bool SessionManager::full() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size()) + creating_ >= options_.max_sessions;
}

int SessionManager::ReapExpired(absl::Time now) {
  MutexLock lock(&mu_);
  std::vector<std::string> expired;
  for (const auto& [id, e] : sessions_) {
    if (!e->busy && !e->moving && e->last_use + e->ttl <= now) expired.push_back(id);
  }
  for (const std::string& id : expired) EraseLocked(id, "expired");
  return static_cast<int>(expired.size());
}

SessionInfo SessionManager::InfoLocked(const Entry& e) const {
  SessionInfo info;
  info.id = e.id;
  info.model = e.model->name;
  info.labels = e.labels;
  info.create_time = e.created;
  info.last_use_time = e.last_use;
  info.ttl = e.ttl;
  info.tokens_seen = e.tokens_seen;
  info.state_bytes = e.bytes;
  info.tier = e.tier;
  info.state_version = e.version;
  info.memory_tokens = e.model->model->config().mem_len;
  // The pending tail belongs to the lease holder while busy; report it only when idle.
  if (e.tier == Tier::kStore) {
    info.pending_tokens = e.stored_pending;
  } else {
    info.pending_tokens = e.busy || e.moving ? 0 : static_cast<int64_t>(e.memory.pending.size());
  }
  info.default_sampling = e.default_sampling;
  info.sequence = e.sequence;
  info.durability = e.durability;
  info.durable_version = e.durable_version;
  info.tenant = e.tenant;
  return info;
}

void SessionManager::PublishLocked() const {
  if (metrics_ == nullptr) return;
  const auto total = static_cast<int64_t>(sessions_.size());
  metrics_->SetSessions("device", device_count_, device_bytes_);
  metrics_->SetSessions("host", total - device_count_ - store_count_, host_bytes_);
  metrics_->SetSessions("store", store_count_, 0);
}

int64_t SessionManager::device_bytes() const {
  MutexLock lock(&mu_);
  return device_bytes_;
}

int64_t SessionManager::host_bytes() const {
  MutexLock lock(&mu_);
  return host_bytes_;
}

int64_t SessionManager::store_count() const {
  MutexLock lock(&mu_);
  return store_count_;
}

int64_t SessionManager::size() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

}  // namespace mnemo::server
