// FaultInjectingStoreEnv: the fault spec's parser, the per-op decision, the spec file's reload and
// the record of written and synced bytes a simulated crash cuts back to.
#include "server/fault_injecting_store_env.h"

#include <cstdio>
#include <iterator>
#include <utility>

#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

#include "base/read_file.h"
#include "base/status_macros.h"

namespace mnemo::server {
namespace {

// Abseil here is built with its own string_view (Debian's ABI), distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

constexpr std::array<StoreOp, kNumStoreOps> kAllOps = {
    StoreOp::kCreate, StoreOp::kAppend, StoreOp::kSync,    StoreOp::kClose,
    StoreOp::kRename, StoreOp::kRemove, StoreOp::kRead,    StoreOp::kStat,
    StoreOp::kList,   StoreOp::kMkdir,  StoreOp::kSyncDir, StoreOp::kLink};

absl::string_view ModeName(StoreFaultMode mode) {
  switch (mode) {
    case StoreFaultMode::kFail:
      return "fail";
    case StoreFaultMode::kFull:
      return "full";
    case StoreFaultMode::kTear:
      return "tear";
    case StoreFaultMode::kHang:
      return "hang";
  }
  return "?";
}

absl::Status BadRule(absl::string_view rule, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("store fault spec: bad rule \"", rule, "\": ", why));
}

absl::StatusOr<StoreFaultRule> ParseRule(absl::string_view text) {
  StoreFaultRule rule;
  absl::string_view rest = text;
  const size_t colon = rest.find(':');
  if (colon == absl::string_view::npos) return BadRule(text, "expected op:mode");
  const absl::string_view op = rest.substr(0, colon);
  rest.remove_prefix(colon + 1);
  if (op != "any") {
    for (const StoreOp o : kAllOps) {
      if (AbslView(StoreOpName(o)) == op) rule.op = o;
    }
    if (!rule.op.has_value()) {
      return BadRule(text,
                     "op must be create, append, sync, close, rename, remove, read, stat, list, "
                     "mkdir, syncdir, link or any");
    }
  }
  const size_t mode_end = rest.find_first_of("@%");
  const absl::string_view mode = rest.substr(0, mode_end);
  if (mode == "fail") {
    rule.mode = StoreFaultMode::kFail;
  } else if (mode == "full") {
    rule.mode = StoreFaultMode::kFull;
  } else if (mode == "tear") {
    rule.mode = StoreFaultMode::kTear;
  } else if (mode == "hang") {
    rule.mode = StoreFaultMode::kHang;
  } else {
    return BadRule(text, "mode must be fail, full, tear or hang");
  }
  rest.remove_prefix(mode_end == absl::string_view::npos ? rest.size() : mode_end);
  if (!rest.empty() && rest.front() == '@') {
    rest.remove_prefix(1);
    absl::string_view n = rest.substr(0, rest.find('%'));
    rest.remove_prefix(n.size());
    if (!n.empty() && n.back() == '+') {
      rule.and_later = true;
      n.remove_suffix(1);
    }
    if (!absl::SimpleAtoi(n, &rule.nth) || rule.nth < 1)
      return BadRule(text, "@N needs a whole number N >= 1");
  }
  if (!rest.empty() && rest.front() == '%') {
    rest.remove_prefix(1);
    if (!absl::SimpleAtod(rest, &rule.probability) || !(rule.probability >= 0) ||
        rule.probability > 1)
      return BadRule(text, "%P needs a probability P in [0, 1]");
    rest = {};
  }
  if (!rest.empty()) return BadRule(text, "expected op:mode[@N[+]][%P]");
  return rule;
}

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

std::string_view StoreOpName(StoreOp op) {
  switch (op) {
    case StoreOp::kCreate:
      return "create";
    case StoreOp::kAppend:
      return "append";
    case StoreOp::kSync:
      return "sync";
    case StoreOp::kClose:
      return "close";
    case StoreOp::kRename:
      return "rename";
    case StoreOp::kRemove:
      return "remove";
    case StoreOp::kRead:
      return "read";
    case StoreOp::kStat:
      return "stat";
    case StoreOp::kList:
      return "list";
    case StoreOp::kMkdir:
      return "mkdir";
    case StoreOp::kSyncDir:
      return "syncdir";
    case StoreOp::kLink:
      return "link";
  }
  return "?";
}

absl::StatusOr<std::vector<StoreFaultRule>> ParseStoreFaultSpec(std::string_view spec) {
  std::vector<StoreFaultRule> rules;
  for (const absl::string_view piece : absl::StrSplit(AbslView(spec), absl::ByAnyChar(",\n"))) {
    const absl::string_view text = absl::StripAsciiWhitespace(piece);
    if (text.empty()) continue;
    ASSIGN_OR_RETURN(StoreFaultRule rule, ParseRule(text));
    rules.push_back(rule);
  }
  return rules;
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

FaultInjectingStoreEnv::FaultInjectingStoreEnv(StoreEnv* base, uint64_t seed)
    : base_(base), rng_(seed) {}

FaultInjectingStoreEnv::~FaultInjectingStoreEnv() = default;

absl::Status FaultInjectingStoreEnv::SetSpec(std::string_view spec) {
  const absl::string_view text = absl::StripAsciiWhitespace(AbslView(spec));
  if (!text.empty() && text.front() == '@') {
    const std::string path(absl::StripAsciiWhitespace(text.substr(1)));
    if (path.empty()) return absl::InvalidArgumentError("store fault spec: @ needs a file path");
    MutexLock lock(&mu_);
    spec_path_ = path;
    spec_stamp_ = SpecFileStamp{};
    SetRulesLocked({});
    ReloadSpecFileLocked();
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::vector<StoreFaultRule> rules,
                   ParseStoreFaultSpec(std::string_view(text.data(), text.size())));
  MutexLock lock(&mu_);
  spec_path_.clear();
  SetRulesLocked(std::move(rules));
  return absl::OkStatus();
}

void FaultInjectingStoreEnv::SetRulesLocked(std::vector<StoreFaultRule> rules) {
  rules_ = std::move(rules);
  matched_.assign(rules_.size(), 0);
}

void FaultInjectingStoreEnv::ReloadSpecFileLocked() {
  SpecFileStamp stamp;
  struct stat st {};
  if (::stat(spec_path_.c_str(), &st) == 0) {
    stamp.exists = true;
    stamp.size = st.st_size;
    stamp.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    stamp.inode = st.st_ino;
  }
  if (stamp == spec_stamp_) return;
  spec_stamp_ = stamp;
  if (!stamp.exists) {
    SetRulesLocked({});
    return;
  }
  absl::StatusOr<std::string> text = mnemo::ReadFile(spec_path_);
  absl::StatusOr<std::vector<StoreFaultRule>> rules =
      text.ok() ? ParseStoreFaultSpec(*text) : text.status();
  if (!rules.ok()) {
    std::fprintf(stderr, "mnemo-server: store fault spec %s: %s (no faults)\n", spec_path_.c_str(),
                 std::string(rules.status().message()).c_str());
    SetRulesLocked({});
    return;
  }
  SetRulesLocked(*std::move(rules));
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
  if (!spec_path_.empty()) ReloadSpecFileLocked();
  const StoreFaultRule* fired = nullptr;
  for (size_t i = 0; i < rules_.size(); ++i) {
    const StoreFaultRule& rule = rules_[i];
    if (rule.op.has_value() && *rule.op != op) continue;
    const int64_t n = ++matched_[i];
    bool pick = rule.nth == 0 || n == rule.nth || (rule.and_later && n > rule.nth);
    if (pick && rule.probability < 1) {
      pick = std::uniform_real_distribution<double>(0, 1)(rng_) < rule.probability;
    }
    if (pick && fired == nullptr) fired = &rule;
  }
  if (fired == nullptr) return Fault::kNone;
  ++injected_[static_cast<size_t>(op)];
  const std::string where = absl::StrCat("injected fault (", AbslView(StoreOpName(op)), ":",
                                         ModeName(fired->mode), ") on ", path);
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
