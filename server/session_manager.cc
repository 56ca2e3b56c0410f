#include "server/session_manager.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include <sys/random.h>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/metrics.h"

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
  LoadedModel* model = nullptr;
  uint64_t sequence = 0;
  absl::Time created;
  // Guarded by the manager's mu_ (not annotatable here: the mutex belongs to another object).
  std::map<std::string, std::string> labels;
  absl::Duration ttl;
  absl::Time last_use;
  bool busy = false;
  Tier tier = Tier::kDevice;
  int64_t version = 0;
  int64_t tokens_seen = 0;
  std::optional<engine::api::SamplingParams> default_sampling;
  int64_t bytes = 0;
  // Guarded by `busy`: only the lease holder (or the manager, under its mutex, while idle).
  SessionMemory memory;
};

const char* TierName(Tier tier) { return tier == Tier::kDevice ? "device" : "host"; }

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

// --- SessionLease -------------------------------------------------------------------------------

SessionLease::SessionLease(SessionManager& manager, std::shared_ptr<Entry> entry, bool promoted)
    : manager_(manager),
      entry_(std::move(entry)),
      version_(entry_->version),
      tokens_seen_(entry_->tokens_seen),
      promoted_(promoted) {}

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

// --- SessionManager -----------------------------------------------------------------------------

SessionManager::SessionManager(SessionManagerOptions options, Metrics* metrics)
    : options_(options), metrics_(metrics), reaper_([this] { ReaperLoop(); }) {}

SessionManager::~SessionManager() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    reaper_cv_.SignalAll();
  }
  reaper_.join();
}

void SessionManager::ReaperLoop() {
  mu_.Lock();  // released around each reaping pass, which takes it itself
  while (!stopping_) {
    reaper_cv_.WaitFor(&mu_, absl::ToChronoMilliseconds(options_.reap_interval));
    if (stopping_) break;
    mu_.Unlock();
    ReapExpired(absl::Now());
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

absl::StatusOr<SessionInfo> SessionManager::Create(LoadedModel& model,
                                                   const SessionOptions& options) {
  ASSIGN_OR_RETURN(const absl::Duration ttl, TtlFor(options.ttl));
  const int64_t bytes = model.SessionBytes();
  MutexLock lock(&mu_);
  if (static_cast<int64_t>(sessions_.size()) >= options_.max_sessions) {
    if (metrics_ != nullptr) metrics_->Rejected("session_quota");
    return absl::ResourceExhaustedError(absl::StrCat(
        "session quota reached: ", options_.max_sessions, " sessions are open; delete some"));
  }
  if (absl::Status room = MakeRoomLocked(bytes, nullptr); !room.ok()) {
    if (metrics_ != nullptr) metrics_->Rejected("state_pool_full");
    return room;
  }
  auto memory = NewMemory(model);
  if (!memory.ok()) return memory.status();
  auto entry = std::make_shared<Entry>();
  entry->id = NewSessionId();
  entry->model = &model;
  entry->sequence = next_sequence_++;
  entry->created = entry->last_use = absl::Now();
  entry->labels = options.labels;
  entry->ttl = ttl;
  entry->default_sampling = options.default_sampling;
  entry->bytes = bytes;
  entry->memory = *std::move(memory);
  device_bytes_ += bytes;
  ++device_count_;
  sessions_[entry->id] = entry;
  PublishLocked();
  return InfoLocked(*entry);
}

absl::StatusOr<std::shared_ptr<SessionLease::Entry>> SessionManager::FindLocked(
    const std::string& id) const {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no session \"", id, "\" (unknown, deleted or expired)"));
  }
  return it->second;
}

absl::StatusOr<SessionInfo> SessionManager::Get(const std::string& id) const {
  MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto entry, FindLocked(id));
  return InfoLocked(*entry);
}

std::vector<SessionInfo> SessionManager::List(
    uint64_t after_sequence, int limit, const std::map<std::string, std::string>& label_filter,
    bool* more) const {
  MutexLock lock(&mu_);
  std::vector<const Entry*> matching;
  for (const auto& [id, e] : sessions_) {
    if (e->sequence <= after_sequence) continue;
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

absl::Status SessionManager::Delete(const std::string& id, int64_t expected_version) {
  MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto entry, FindLocked(id));
  if (entry->busy) {
    return absl::AbortedError("a request is running on this session; delete it afterwards");
  }
  if (expected_version != 0 && expected_version != entry->version) {
    return absl::AbortedError(absl::StrCat("the session is at state version ", entry->version,
                                           ", not the expected ", expected_version));
  }
  EraseLocked(id, "deleted");
  return absl::OkStatus();
}

void SessionManager::EraseLocked(const std::string& id, const char* reason) {
  auto it = sessions_.find(id);
  Entry& e = *it->second;
  if (e.tier == Tier::kDevice) {
    device_bytes_ -= e.bytes;
    --device_count_;
  } else {
    host_bytes_ -= e.bytes;
  }
  sessions_.erase(it);
  if (metrics_ != nullptr) metrics_->SessionClosed(reason);
  PublishLocked();
}

absl::StatusOr<SessionInfo> SessionManager::Fork(const std::string& id, int64_t expected_version,
                                                 const SessionOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<SessionLease> source, Acquire(id, expected_version));
  LoadedModel& model = source->model();
  std::shared_ptr<Entry> src = source->entry_;
  SessionOptions copy = options;
  {
    MutexLock lock(&mu_);
    if (copy.labels.empty()) copy.labels = src->labels;
    if (copy.ttl == absl::ZeroDuration()) copy.ttl = src->ttl;
    if (!copy.default_sampling) copy.default_sampling = src->default_sampling;
  }
  ASSIGN_OR_RETURN(SessionInfo info, Create(model, copy));
  // The new session is not visible to anyone else until its id is returned: fill it in place.
  MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto dst, FindLocked(info.id));
  auto memory = CopyMemory(model, src->memory);
  if (!memory.ok()) {
    EraseLocked(info.id, "deleted");
    return memory.status();
  }
  dst->memory = *std::move(memory);
  dst->tokens_seen = src->tokens_seen;
  return InfoLocked(*dst);
}

absl::StatusOr<std::unique_ptr<SessionLease>> SessionManager::Acquire(const std::string& id,
                                                                      int64_t expected_version) {
  MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto entry, FindLocked(id));
  if (entry->busy) {
    return absl::AbortedError(
        "another request is running on this session (one at a time); retry when it finishes");
  }
  if (expected_version != 0 && expected_version != entry->version) {
    return absl::AbortedError(absl::StrCat("the session is at state version ", entry->version,
                                           ", not the expected ", expected_version));
  }
  const bool promote = entry->tier == Tier::kHost;
  if (promote) {
    if (absl::Status room = MakeRoomLocked(entry->bytes, entry.get()); !room.ok()) {
      if (metrics_ != nullptr) metrics_->Rejected("state_pool_full");
      return room;
    }
    RETURN_IF_ERROR(PromoteLocked(*entry));
  }
  entry->busy = true;
  entry->last_use = absl::Now();
  return std::unique_ptr<SessionLease>(new SessionLease(*this, entry, promote));
}

void SessionManager::Release(SessionLease& lease) {
  MutexLock lock(&mu_);
  Entry& e = *lease.entry_;
  e.version = lease.version_;
  e.tokens_seen = lease.tokens_seen_;
  e.last_use = absl::Now();
  e.busy = false;
}

absl::Status SessionManager::MakeRoomLocked(int64_t bytes, const Entry* keep) {
  while (device_bytes_ + bytes > options_.device_budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [id, e] : sessions_) {
      if (e.get() == keep || e->busy || e->tier != Tier::kDevice) continue;
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

int SessionManager::ReapExpired(absl::Time now) {
  MutexLock lock(&mu_);
  std::vector<std::string> expired;
  for (const auto& [id, e] : sessions_) {
    if (!e->busy && e->last_use + e->ttl <= now) expired.push_back(id);
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
  info.pending_tokens = e.busy ? 0 : static_cast<int64_t>(e.memory.pending.size());
  info.default_sampling = e.default_sampling;
  info.sequence = e.sequence;
  return info;
}

void SessionManager::PublishLocked() const {
  if (metrics_ == nullptr) return;
  const auto total = static_cast<int64_t>(sessions_.size());
  metrics_->SetSessions("device", device_count_, device_bytes_);
  metrics_->SetSessions("host", total - device_count_, host_bytes_);
}

int64_t SessionManager::device_bytes() const {
  MutexLock lock(&mu_);
  return device_bytes_;
}

int64_t SessionManager::host_bytes() const {
  MutexLock lock(&mu_);
  return host_bytes_;
}

int64_t SessionManager::size() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

}  // namespace mnemo::server
