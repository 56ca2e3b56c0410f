// FaultInjectingStoreEnv: the op and mode names of its fault spec, the per-op decision and the
// record of written and synced bytes a simulated crash cuts back to.
#include "server/fault_injecting_store_env.h"

#include <cstdio>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "base/status_macros.h"

namespace mnemo::server {
namespace {

// Abseil here is built with its own string_view (Debian's ABI), distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

// Names by enum value (StoreOp, StoreFaultMode).
constexpr std::array<std::string_view, kNumStoreOps> kOpNames = {
    "create", "append", "sync", "close", "rename",  "remove",
    "read",   "stat",   "list", "mkdir", "syncdir", "link"};
constexpr std::array<std::string_view, 4> kModeNames = {"fail", "full", "tear", "hang"};

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string NormalDir(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

}  // namespace

std::string_view StoreOpName(StoreOp op) { return kOpNames[static_cast<size_t>(op)]; }

absl::StatusOr<std::vector<StoreFaultRule>> ParseStoreFaultSpec(std::string_view spec) {
  return ParseTypedFaultRules<StoreOp, StoreFaultMode>("store fault spec", spec, kOpNames,
                                                       kModeNames);
}

// ---------------------------------------------------------------------------------------------

class FaultInjectingWritableFile final : public StoreWritableFile {
 public:
  FaultInjectingWritableFile(FaultInjectingStoreEnv* env, std::string path,
                             std::unique_ptr<StoreWritableFile> base)
      : env_(env), path_(std::move(path)), base_(std::move(base)) {}

  absl::Status Append(std::string_view data) override {
    absl::Status injected;
    switch (env_->Decide(StoreOp::kAppend, path_, &injected)) {
      case FaultInjectingStoreEnv::Fault::kNone:
        break;
      case FaultInjectingStoreEnv::Fault::kFail:
        return injected;
      case FaultInjectingStoreEnv::Fault::kTear: {
        const std::string_view prefix = data.substr(0, data.size() / 2);
        if (base_->Append(prefix).ok()) env_->Appended(path_, prefix.size());
        return injected;
      }
    }
    RETURN_IF_ERROR(base_->Append(data));
    env_->Appended(path_, data.size());
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    absl::Status injected;
    if (env_->Decide(StoreOp::kSync, path_, &injected) != FaultInjectingStoreEnv::Fault::kNone)
      return injected;
    RETURN_IF_ERROR(base_->Sync());
    env_->Synced(path_);
    return absl::OkStatus();
  }

  absl::Status Close() override {
    absl::Status injected;
    const bool fault =
        env_->Decide(StoreOp::kClose, path_, &injected) != FaultInjectingStoreEnv::Fault::kNone;
    const absl::Status closed = base_->Close();
    return fault ? injected : closed;
  }

 private:
  FaultInjectingStoreEnv* const env_;
  const std::string path_;
  const std::unique_ptr<StoreWritableFile> base_;
};

// The spec file is looked at on every op: store ops are few and slow.
FaultInjectingStoreEnv::FaultInjectingStoreEnv(StoreEnv* base, uint64_t seed)
    : base_(base), rules_("store fault spec", &ParseStoreFaultSpec, seed, {}) {}

FaultInjectingStoreEnv::~FaultInjectingStoreEnv() = default;

absl::Status FaultInjectingStoreEnv::SetSpec(std::string_view spec) {
  MutexLock lock(&mu_);
  return rules_.Set(spec);
}

FaultInjectingStoreEnv::Fault FaultInjectingStoreEnv::Decide(StoreOp op, const std::string& path,
                                                             absl::Status* status) {
  bool hang = false;
  const Fault fault = DecideOnce(op, path, status, &hang);
  if (hang) {
    std::fprintf(stderr, "mnemo-server: %s\n", std::string(status->message()).c_str());
    while (true) absl::SleepFor(absl::Hours(1));
  }
  return fault;
}

FaultInjectingStoreEnv::Fault FaultInjectingStoreEnv::DecideOnce(StoreOp op,
                                                                 const std::string& path,
                                                                 absl::Status* status, bool* hang) {
  MutexLock lock(&mu_);
  const StoreFaultRule* fired = rules_.Pick(op);
  if (fired == nullptr) return Fault::kNone;
  ++injected_[static_cast<size_t>(op)];
  const std::string where =
      absl::StrCat("injected fault (", AbslView(StoreOpName(op)), ":",
                   AbslView(kModeNames[static_cast<size_t>(fired->mode)]), ") on ", path);
  switch (fired->mode) {
    case StoreFaultMode::kFail:
      *status = absl::UnavailableError(absl::StrCat(where, ": Input/output error"));
      return Fault::kFail;
    case StoreFaultMode::kFull:
      *status = absl::ResourceExhaustedError(absl::StrCat(where, ": No space left on device"));
      return Fault::kFail;
    case StoreFaultMode::kTear:
      *status = absl::UnavailableError(absl::StrCat(where, ": Input/output error"));
      return op == StoreOp::kAppend ? Fault::kTear : Fault::kFail;
    case StoreFaultMode::kHang:
      *status = absl::UnavailableError(absl::StrCat(where, ": the op never returns"));
      *hang = true;
      return Fault::kFail;
  }
  return Fault::kFail;
}

int64_t FaultInjectingStoreEnv::injected(StoreOp op) const {
  MutexLock lock(&mu_);
  return injected_[static_cast<size_t>(op)];
}

int64_t FaultInjectingStoreEnv::injected_total() const {
  MutexLock lock(&mu_);
  int64_t total = 0;
  for (const int64_t n : injected_) total += n;
  return total;
}

void FaultInjectingStoreEnv::Appended(const std::string& path, uint64_t bytes) {
  MutexLock lock(&mu_);
  auto it = files_.find(path);
  if (it != files_.end()) it->second.size += bytes;
}

void FaultInjectingStoreEnv::Synced(const std::string& path) {
  MutexLock lock(&mu_);
  auto it = files_.find(path);
  if (it != files_.end()) it->second.synced = it->second.size;
}

absl::Status FaultInjectingStoreEnv::DropUnsyncedData() {
  MutexLock lock(&mu_);
  for (const std::string& path : undurable_names_) {
    absl::Status removed = base_->RemoveFile(path);
    if (!removed.ok() && !absl::IsNotFound(removed)) return removed;
    files_.erase(path);
  }
  undurable_names_.clear();
  for (auto& [path, state] : files_) {
    if (state.synced >= state.size) continue;
    // Cut back to the synced prefix by rewriting it: StoreEnv has no truncate.
    absl::StatusOr<std::string> kept = base_->ReadFile(path, state.synced);
    if (absl::IsNotFound(kept.status())) continue;
    RETURN_IF_ERROR(kept.status());
    ASSIGN_OR_RETURN(std::unique_ptr<StoreWritableFile> file, base_->NewWritableFile(path));
    RETURN_IF_ERROR(file->Append(*kept));
    RETURN_IF_ERROR(file->Sync());
    RETURN_IF_ERROR(file->Close());
    state.size = state.synced = kept->size();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StoreWritableFile>> FaultInjectingStoreEnv::NewWritableFile(
    const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kCreate, path, &injected) != Fault::kNone) return injected;
  ASSIGN_OR_RETURN(std::unique_ptr<StoreWritableFile> file, base_->NewWritableFile(path));
  {
    MutexLock lock(&mu_);
    files_[path] = FileState{};
    undurable_names_.insert(path);
  }
  return std::make_unique<FaultInjectingWritableFile>(this, path, std::move(file));
}

absl::StatusOr<std::string> FaultInjectingStoreEnv::ReadFile(const std::string& path,
                                                             size_t max_bytes) {
  absl::Status injected;
  if (Decide(StoreOp::kRead, path, &injected) != Fault::kNone) return injected;
  return base_->ReadFile(path, max_bytes);
}

absl::Status FaultInjectingStoreEnv::RenameFile(const std::string& from, const std::string& to) {
  absl::Status injected;
  if (Decide(StoreOp::kRename, absl::StrCat(from, " to ", to), &injected) != Fault::kNone)
    return injected;
  RETURN_IF_ERROR(base_->RenameFile(from, to));
  MutexLock lock(&mu_);
  files_.erase(to);
  auto node = files_.extract(from);
  if (!node.empty()) {
    node.key() = to;
    files_.insert(std::move(node));
  }
  undurable_names_.erase(from);
  undurable_names_.insert(to);  // the new name is durable once its directory is synced
  return absl::OkStatus();
}

absl::Status FaultInjectingStoreEnv::LinkFile(const std::string& from, const std::string& to) {
  absl::Status injected;
  if (Decide(StoreOp::kLink, absl::StrCat(from, " as ", to), &injected) != Fault::kNone)
    return injected;
  RETURN_IF_ERROR(base_->LinkFile(from, to));
  MutexLock lock(&mu_);
  if (auto it = files_.find(from); it != files_.end()) files_[to] = it->second;
  undurable_names_.insert(to);  // durable once its directory is synced
  return absl::OkStatus();
}

absl::Status FaultInjectingStoreEnv::RemoveFile(const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kRemove, path, &injected) != Fault::kNone) return injected;
  RETURN_IF_ERROR(base_->RemoveFile(path));
  MutexLock lock(&mu_);
  files_.erase(path);
  undurable_names_.erase(path);
  return absl::OkStatus();
}

absl::Status FaultInjectingStoreEnv::CreateDir(const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kMkdir, path, &injected) != Fault::kNone) return injected;
  return base_->CreateDir(path);
}

absl::Status FaultInjectingStoreEnv::RemoveDir(const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kRemove, path, &injected) != Fault::kNone) return injected;
  return base_->RemoveDir(path);
}

absl::Status FaultInjectingStoreEnv::SyncDir(const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kSyncDir, path, &injected) != Fault::kNone) return injected;
  RETURN_IF_ERROR(base_->SyncDir(path));
  const std::string dir = NormalDir(path);
  MutexLock lock(&mu_);
  for (auto it = undurable_names_.begin(); it != undurable_names_.end();) {
    it = Dirname(*it) == dir ? undurable_names_.erase(it) : std::next(it);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FaultInjectingStoreEnv::GetFileSize(const std::string& path) {
  absl::Status injected;
  if (Decide(StoreOp::kStat, path, &injected) != Fault::kNone) return injected;
  return base_->GetFileSize(path);
}

absl::StatusOr<std::vector<std::string>> FaultInjectingStoreEnv::GetChildren(
    const std::string& dir) {
  absl::Status injected;
  if (Decide(StoreOp::kList, dir, &injected) != Fault::kNone) return injected;
  return base_->GetChildren(dir);
}

}  // namespace mnemo::server
