// PosixStoreEnv (the file operations on the real file system) and FileSessionStore: one directory
// per session, versions published by write, fsync, rename and directory fsync, the others
// removed only once the new one is durable. session_store.h has the layout and the contract.
#include "server/session_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <utility>

#include <sys/stat.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

#include "base/mutex.h"
#include "base/status_macros.h"

namespace mnemo::server {
namespace {

// ---------------------------------------------------------------------------------------------
// PosixStoreEnv

// errno as a Status: a full disk or quota is RESOURCE_EXHAUSTED, a missing path NOT_FOUND, a path
// of the wrong kind (a file where a directory is expected, a link where a file is) or a directory
// that is not empty FAILED_PRECONDITION, anything else UNAVAILABLE.
absl::Status ErrnoStatus(absl::string_view what, const std::string& path, int err) {
  const std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
    case ENOTEMPTY:
      return absl::FailedPreconditionError(message);
    default:
      return absl::UnavailableError(message);
  }
}

// open(2) retried on EINTR; -1 with errno set on failure.
int OpenRetrying(const std::string& path, int flags, mode_t mode = 0) {
  int fd = -1;
  do {
    fd = ::open(path.c_str(), flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

int FsyncRetrying(int fd) {
  int rc = 0;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

class PosixWritableFile final : public StoreWritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  PosixWritableFile(const PosixWritableFile&) = delete;
  PosixWritableFile& operator=(const PosixWritableFile&) = delete;

  absl::Status Append(std::string_view data) override {
    if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("writing ", path_, ": closed"));
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("writing", path_, errno);
      }
      data.remove_prefix(static_cast<size_t>(n));  // a short write: the rest goes next
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("syncing ", path_, ": closed"));
    if (FsyncRetrying(fd_) != 0) return ErrnoStatus("syncing", path_, errno);
    return absl::OkStatus();
  }

  // close(2) is not retried on EINTR: Linux releases the descriptor whatever it returns.
  absl::Status Close() override {
    if (fd_ < 0) return absl::OkStatus();
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0 && errno != EINTR) return ErrnoStatus("closing", path_, errno);
    return absl::OkStatus();
  }

 private:
  const std::string path_;
  int fd_;
};

// Never follows a symbolic link in the last component of a path it opens, reads or lists, so
// nothing planted in the store's directory can send a read or a write elsewhere.
class PosixEnv final : public StoreEnv {
 public:
  absl::StatusOr<std::unique_ptr<StoreWritableFile>> NewWritableFile(
      const std::string& path) override {
    const int fd = OpenRetrying(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                                S_IRUSR | S_IWUSR);
    if (fd < 0) return ErrnoStatus("creating", path, errno);
    return std::make_unique<PosixWritableFile>(path, fd);
  }

  absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) override {
    const int fd = OpenRetrying(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return ErrnoStatus("opening", path, errno);
    absl::StatusOr<std::string> result = ReadOpen(path, fd, max_bytes);
    ::close(fd);
    return result;
  }

  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      return ErrnoStatus("renaming", absl::StrCat(from, " to ", to), errno);
    return absl::OkStatus();
  }

  absl::Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus("removing", path, errno);
    return absl::OkStatus();
  }

  absl::Status CreateDir(const std::string& path) override {
    if (::mkdir(path.c_str(), S_IRWXU) == 0) return absl::OkStatus();
    const int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(path.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return absl::OkStatus();
      return absl::FailedPreconditionError(
          absl::StrCat("creating directory ", path, ": exists and is not a directory"));
    }
    return ErrnoStatus("creating directory", path, err);
  }

  absl::Status RemoveDir(const std::string& path) override {
    if (::rmdir(path.c_str()) != 0) return ErrnoStatus("removing directory", path, errno);
    return absl::OkStatus();
  }

  absl::Status SyncDir(const std::string& path) override {
    const int fd = OpenRetrying(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("opening directory", path, errno);
    const int rc = FsyncRetrying(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus("syncing directory", path, err);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> GetFileSize(const std::string& path) override {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return ErrnoStatus("examining", path, errno);
    if (!S_ISREG(st.st_mode))
      return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
    return static_cast<uint64_t>(st.st_size);
  }

  absl::Status LinkFile(const std::string& from, const std::string& to) override {
    if (::link(from.c_str(), to.c_str()) == 0) return absl::OkStatus();
    if (errno == EEXIST) return absl::AlreadyExistsError(absl::StrCat(to, " exists"));
    return ErrnoStatus("linking", absl::StrCat(from, " as ", to), errno);
  }

  absl::StatusOr<std::vector<std::string>> GetChildren(const std::string& dir) override {
    const int fd = OpenRetrying(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return ErrnoStatus("opening directory", dir, errno);
    DIR* const d = ::fdopendir(fd);
    if (d == nullptr) {
      const int err = errno;
      ::close(fd);
      return ErrnoStatus("opening directory", dir, err);
    }
    std::vector<std::string> names;
    while (true) {
      errno = 0;
      const dirent* entry = ::readdir(d);
      if (entry == nullptr) break;
      const absl::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int err = errno;
    ::closedir(d);
    if (err != 0) return ErrnoStatus("listing", dir, err);
    return names;
  }

 private:
  // The first min(size, max_bytes) bytes of the open regular file `fd`; the size is taken once,
  // so a file growing meanwhile is not read past it.
  static absl::StatusOr<std::string> ReadOpen(const std::string& path, int fd, size_t max_bytes) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return ErrnoStatus("examining", path, errno);
    if (!S_ISREG(st.st_mode))
      return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
    const size_t want = std::min(static_cast<size_t>(st.st_size), max_bytes);
    std::string data(want, '\0');
    size_t got = 0;
    while (got < want) {
      const ssize_t n = ::read(fd, data.data() + got, want - got);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("reading", path, errno);
      }
      if (n == 0) break;  // shrank since fstat
      got += static_cast<size_t>(n);
    }
    data.resize(got);
    return data;
  }
};

// ---------------------------------------------------------------------------------------------
// FileSessionStore

// Snapshots are written in pieces of this size, so no single write(2) is huge.
constexpr size_t kAppendChunkBytes = size_t{1} << 20;
constexpr absl::string_view kTempPrefix = ".tmp-";
constexpr absl::string_view kSnapSuffix = ".snap";
constexpr size_t kVersionDigits = 20;
constexpr absl::string_view kOwnerPrefix = "owner-";
// Owner records are a few short lines; anything longer is not one.
constexpr size_t kMaxOwnerRecordBytes = 4096;

bool IsSessionId(absl::string_view s) {
  return s.size() == 32 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A name from the disk or a caller, safe to print: escaped and cut short.
std::string Printable(absl::string_view s) {
  constexpr size_t kMax = 80;
  std::string out = absl::CHexEscape(s.substr(0, kMax));
  if (s.size() > kMax) absl::StrAppend(&out, "...");
  return out;
}

absl::Status CheckId(const std::string& id) {
  if (IsSessionId(id)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("session id \"", Printable(id), "\" is not 32 lowercase hex digits"));
}

absl::Status CheckVersion(int64_t version) {
  if (version >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("session version ", version, " is negative"));
}

// A published snapshot: its version and the owner epoch it was written under. Newer means a
// later epoch, then a higher version.
struct FileVersion {
  int64_t version = 0;
  int64_t epoch = 0;
  bool operator==(const FileVersion& o) const { return version == o.version && epoch == o.epoch; }
  bool operator<(const FileVersion& o) const {
    return epoch != o.epoch ? epoch < o.epoch : version < o.version;
  }
};

std::string VersionFileName(FileVersion v) {
  if (v.epoch == 0) return absl::StrCat(absl::StrFormat("%020d", v.version), kSnapSuffix);
  return absl::StrCat(absl::StrFormat("%020d-%020d", v.version, v.epoch), kSnapSuffix);
}

// 20 decimal digits as a non-negative int64.
std::optional<int64_t> ParseDigits(absl::string_view digits) {
  if (digits.size() != kVersionDigits) return std::nullopt;
  int64_t value = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    const int digit = c - '0';
    if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

// What a published snapshot's file name holds: 20 digits (the version), optionally "-" and 20
// more (the epoch), then ".snap".
std::optional<FileVersion> ParseVersionFileName(absl::string_view name) {
  if (!absl::EndsWith(name, kSnapSuffix)) return std::nullopt;
  name.remove_suffix(kSnapSuffix.size());
  FileVersion v;
  if (name.size() == 2 * kVersionDigits + 1 && name[kVersionDigits] == '-') {
    const std::optional<int64_t> epoch = ParseDigits(name.substr(kVersionDigits + 1));
    if (!epoch.has_value() || *epoch == 0) return std::nullopt;
    v.epoch = *epoch;
    name = name.substr(0, kVersionDigits);
  }
  const std::optional<int64_t> version = ParseDigits(name);
  if (!version.has_value()) return std::nullopt;
  v.version = *version;
  return v;
}

std::string OwnerFileName(int64_t epoch) {
  return absl::StrCat(kOwnerPrefix, absl::StrFormat("%020d", epoch));
}

// The epoch of an owner record's file name.
std::optional<int64_t> ParseOwnerFileName(absl::string_view name) {
  if (!absl::StartsWith(name, kOwnerPrefix)) return std::nullopt;
  const std::optional<int64_t> epoch = ParseDigits(name.substr(kOwnerPrefix.size()));
  if (!epoch.has_value() || *epoch == 0) return std::nullopt;
  return epoch;
}

// An owner record's text: the replica, then its address, then (when there is one) the session's
// tenant, one per line.
std::string OwnerRecordText(const SessionOwner& owner) {
  if (owner.tenant.empty()) return absl::StrCat(owner.replica, "\n", owner.address, "\n");
  return absl::StrCat(owner.replica, "\n", owner.address, "\n", owner.tenant, "\n");
}

bool PrintableLine(absl::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

absl::StatusOr<SessionOwner> ParseOwnerRecord(absl::string_view text, int64_t epoch) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (lines.size() < 3 || lines.size() > 4 || !lines.back().empty() ||
      !std::all_of(lines.begin(), lines.end(), PrintableLine)) {
    return absl::FailedPreconditionError(
        absl::StrCat("owner record ", epoch, " is not two or three printable lines"));
  }
  SessionOwner owner;
  owner.epoch = epoch;
  owner.replica = std::string(lines[0]);
  owner.address = std::string(lines[1]);
  if (lines.size() == 4) owner.tenant = std::string(lines[2]);
  return owner;
}

absl::Status Fenced(const std::string& id, int64_t mine, int64_t newest) {
  return absl::AbortedError(absl::StrCat("session ", id, " was claimed by another replica (epoch ",
                                         newest, " after this replica's ", mine, ")"));
}

// `status` with `context` in front of its message, same code.
absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

class FileSessionStore final : public SessionStore {
 public:
  FileSessionStore(std::string dir, StoreEnv* env)
      : dir_(std::move(dir)),
        sessions_(absl::StrCat(dir_, "/sessions")),
        quarantine_(absl::StrCat(dir_, "/quarantine")),
        env_(env),
        temp_salt_(std::random_device{}() * uint64_t{0x100000001b3} ^ std::random_device{}()) {}

  // Creates the directories and clears what a crash left behind: temporary files, and session
  // directories they leave empty. Entries the store does not know are logged and left alone.
  absl::Status Recover() {
    // The directory and any of its parents that are missing, as mkdir -p.
    for (size_t slash = dir_.find('/', 1); slash != std::string::npos;
         slash = dir_.find('/', slash + 1)) {
      RETURN_IF_ERROR(env_->CreateDir(dir_.substr(0, slash)));
    }
    RETURN_IF_ERROR(env_->CreateDir(dir_));
    RETURN_IF_ERROR(env_->CreateDir(sessions_));
    RETURN_IF_ERROR(env_->CreateDir(quarantine_));
    RETURN_IF_ERROR(env_->SyncDir(dir_));
    ASSIGN_OR_RETURN(std::vector<std::string> names, env_->GetChildren(sessions_));
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      if (!IsSessionId(name)) {
        Log(absl::StrCat("ignoring sessions/", Printable(name), ": not a session id"));
        continue;
      }
      const std::string session_dir = SessionDir(name);
      absl::StatusOr<std::vector<std::string>> children = env_->GetChildren(session_dir);
      if (absl::IsFailedPrecondition(children.status())) {
        Log(absl::StrCat("ignoring sessions/", name, ": ", children.status().message()));
        continue;
      }
      if (absl::IsNotFound(children.status())) continue;
      RETURN_IF_ERROR(children.status());
      size_t kept = 0;
      for (const std::string& child : *children) {
        if (absl::StartsWith(child, kTempPrefix)) {
          absl::Status removed = env_->RemoveFile(absl::StrCat(session_dir, "/", child));
          if (absl::IsFailedPrecondition(removed)) {  // not a file: not ours
            Log(absl::StrCat("ignoring sessions/", name, "/", Printable(child), ": ",
                             removed.message()));
            ++kept;
            continue;
          }
          if (!removed.ok() && !absl::IsNotFound(removed)) return removed;
          continue;
        }
        ++kept;
        if (!ParseVersionFileName(child).has_value() && !ParseOwnerFileName(child).has_value())
          Log(absl::StrCat("ignoring sessions/", name, "/", Printable(child), ": not a version"));
      }
      if (kept == 0) {
        absl::Status removed = env_->RemoveDir(session_dir);
        if (!removed.ok() && !absl::IsNotFound(removed)) return removed;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Put(const std::string& id, int64_t version, std::string_view snapshot) override {
    RETURN_IF_ERROR(CheckId(id));
    RETURN_IF_ERROR(CheckVersion(version));
    const std::string context = absl::StrCat("storing session ", id, " version ", version);
    const std::string session_dir = SessionDir(id);
    const FileVersion mine{version, ClaimOf(id)};
    std::vector<FileVersion> existing;
    absl::StatusOr<std::vector<FileVersion>> versions = Versions(id);
    if (versions.ok()) {
      existing = *std::move(versions);
    } else if (absl::IsNotFound(versions.status())) {
      // A new session: its directory entry must be durable before the version inside it is.
      RETURN_IF_ERROR(Annotate(env_->CreateDir(session_dir), context));
      RETURN_IF_ERROR(Annotate(env_->SyncDir(sessions_), context));
    } else {
      return Annotate(versions.status(), context);
    }

    const std::string temp = absl::StrCat(session_dir, "/", TempFileName(version));
    absl::Status status = WriteDurably(temp, snapshot);
    // Fenced: a replica that lost the session publishes nothing.
    if (status.ok()) status = CheckEpoch(id, mine.epoch);
    if (!status.ok()) {
      env_->RemoveFile(temp).IgnoreError();  // else removed at the next open
      return Annotate(status, context);
    }
    const std::string path = VersionPath(id, mine);
    status = env_->RenameFile(temp, path);
    if (!status.ok()) {
      env_->RemoveFile(temp).IgnoreError();
      return Annotate(status, context);
    }
    status = env_->SyncDir(session_dir);
    if (!status.ok()) {
      // Not known to be durable, so not published: take it back so that the previous version
      // stays the newest. (A put of a version already present replaced it: nothing to go back to.)
      if (std::find(existing.begin(), existing.end(), mine) == existing.end())
        env_->RemoveFile(path).IgnoreError();
      return Annotate(status, context);
    }
    if (absl::Status still = CheckEpoch(id, mine.epoch); !still.ok()) {
      // Claimed by another replica while this version was being published: that replica may or
      // may not have seen it, so this write's outcome is unknown to the caller.
      return absl::UnavailableError(absl::StrCat(
          context, ": another replica claimed the session while this version was published (",
          still.message(), "); whether it took this version is unknown"));
    }
    // Published: every other version goes. An older one left behind is harmless (Newest ignores
    // it, the next Put or Delete removes it), so failing to remove one does not fail the Put; a
    // newer one (a Put that takes a session back to an earlier version) would stay the newest.
    for (const FileVersion& other : existing) {
      if (other == mine) continue;
      const absl::Status removed = env_->RemoveFile(VersionPath(id, other));
      if (removed.ok() || absl::IsNotFound(removed)) continue;
      if (mine < other) {
        return Annotate(removed,
                        absl::StrCat(context, ": removing the newer version ", other.version));
      }
      Log(absl::StrCat(context, ": keeping version ", other.version, ": ", removed.message()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Read(const StoredVersion& version, size_t max_bytes) override {
    RETURN_IF_ERROR(CheckId(version.id));
    RETURN_IF_ERROR(CheckVersion(version.version));
    absl::StatusOr<std::string> data =
        env_->ReadFile(VersionPath(version.id, {version.version, version.epoch}), max_bytes);
    if (absl::IsNotFound(data.status())) {
      return absl::NotFoundError(
          absl::StrCat("session ", version.id, " has no version ", version.version));
    }
    if (!data.ok()) {
      return Annotate(data.status(),
                      absl::StrCat("reading session ", version.id, " version ", version.version));
    }
    return data;
  }

  absl::StatusOr<StoredVersion> Newest(const std::string& id) override {
    RETURN_IF_ERROR(CheckId(id));
    absl::StatusOr<std::vector<FileVersion>> versions = Versions(id);
    if (absl::IsNotFound(versions.status()) || absl::IsFailedPrecondition(versions.status()))
      return absl::NotFoundError(absl::StrCat("session ", id, " has no published version"));
    if (!versions.ok()) return versions.status();
    return NewestOf(id, *versions);
  }

  absl::StatusOr<std::vector<StoredVersion>> List() override {
    ASSIGN_OR_RETURN(std::vector<std::string> names, env_->GetChildren(sessions_));
    std::sort(names.begin(), names.end());
    std::vector<StoredVersion> out;
    for (const std::string& name : names) {
      if (!IsSessionId(name)) continue;
      absl::StatusOr<std::vector<FileVersion>> versions = Versions(name);
      // Gone meanwhile (a Delete), or not a directory: not a session.
      if (absl::IsNotFound(versions.status()) || absl::IsFailedPrecondition(versions.status()))
        continue;
      if (!versions.ok()) return versions.status();
      absl::StatusOr<StoredVersion> newest = NewestOf(name, *versions);
      if (absl::IsNotFound(newest.status())) continue;
      if (!newest.ok()) return newest.status();
      out.push_back(*std::move(newest));
    }
    return out;
  }

  absl::Status Delete(const std::string& id) override {
    RETURN_IF_ERROR(CheckId(id));
    const std::string context = absl::StrCat("deleting session ", id);
    const std::string session_dir = SessionDir(id);
    RETURN_IF_ERROR(Annotate(CheckEpoch(id, ClaimOf(id)), context));
    Forget(id);
    absl::StatusOr<std::vector<std::string>> children = env_->GetChildren(session_dir);
    if (absl::IsNotFound(children.status())) return absl::OkStatus();
    RETURN_IF_ERROR(Annotate(children.status(), context));
    bool foreign = false;
    for (const std::string& child : *children) {
      if (!ParseVersionFileName(child).has_value() && !ParseOwnerFileName(child).has_value() &&
          !absl::StartsWith(child, kTempPrefix)) {
        foreign = true;
        continue;
      }
      const absl::Status removed = env_->RemoveFile(absl::StrCat(session_dir, "/", child));
      if (absl::IsFailedPrecondition(removed)) {  // a directory by a version's name: not ours
        foreign = true;
        continue;
      }
      if (!removed.ok() && !absl::IsNotFound(removed)) return Annotate(removed, context);
    }
    const absl::Status removed = env_->RemoveDir(session_dir);
    if (!removed.ok() && !absl::IsNotFound(removed)) {
      // Every version is gone, which is what Delete promises; what else is there is not ours.
      if (!foreign) return Annotate(removed, context);
      Log(absl::StrCat(context, ": left its directory holding other files: ", removed.message()));
    }
    // So that a deleted session does not come back after a crash.
    return Annotate(env_->SyncDir(sessions_), context);
  }

  absl::Status Quarantine(const StoredVersion& version, std::string_view why) override {
    RETURN_IF_ERROR(CheckId(version.id));
    RETURN_IF_ERROR(CheckVersion(version.version));
    const std::string& id = version.id;
    const std::string context =
        absl::StrCat("quarantining session ", id, " version ", version.version);
    const std::string session_dir = SessionDir(id);
    const FileVersion quarantined{version.version, version.epoch};
    std::string base =
        absl::StrCat(quarantine_, "/", id, "-", absl::StrFormat("%020d", version.version));
    if (version.epoch != 0) absl::StrAppend(&base, absl::StrFormat("-%020d", version.epoch));
    const absl::Status moved =
        env_->RenameFile(VersionPath(id, quarantined), absl::StrCat(base, kSnapSuffix));
    if (absl::IsNotFound(moved)) {
      return absl::NotFoundError(
          absl::StrCat(context, ": session ", id, " has no version ", version.version));
    }
    RETURN_IF_ERROR(Annotate(moved, context));
    RETURN_IF_ERROR(Annotate(env_->SyncDir(quarantine_), context));
    // The reason is for people; the session leaves List whether or not it could be written.
    std::string reason(why);
    if (reason.empty() || reason.back() != '\n') reason.push_back('\n');
    const absl::Status written = WriteDurably(absl::StrCat(base, ".why"), reason);

    // Older versions go too (the session no longer appears in List); a newer one stays.
    absl::StatusOr<std::vector<std::string>> children = env_->GetChildren(session_dir);
    RETURN_IF_ERROR(Annotate(children.status(), context));
    size_t left = 0;
    for (const std::string& child : *children) {
      const std::optional<FileVersion> v = ParseVersionFileName(child);
      if (!v.has_value() || quarantined < *v) {
        ++left;
        continue;
      }
      const absl::Status removed = env_->RemoveFile(absl::StrCat(session_dir, "/", child));
      if (absl::IsFailedPrecondition(removed)) {
        ++left;
        continue;
      }
      if (!removed.ok() && !absl::IsNotFound(removed)) return Annotate(removed, context);
    }
    if (left == 0) {
      const absl::Status removed = env_->RemoveDir(session_dir);
      if (!removed.ok() && !absl::IsNotFound(removed)) return Annotate(removed, context);
      RETURN_IF_ERROR(Annotate(env_->SyncDir(sessions_), context));
    } else {
      RETURN_IF_ERROR(Annotate(env_->SyncDir(session_dir), context));
    }
    return Annotate(written, absl::StrCat(context, ": writing the reason"));
  }

  std::string Describe() const override { return absl::StrCat("file session store at ", dir_); }

  absl::StatusOr<SessionOwner> Owner(const std::string& id) override {
    RETURN_IF_ERROR(CheckId(id));
    // A newer claim removes older records: a record that vanished while read means look again.
    for (int attempt = 0; attempt < 16; ++attempt) {
      ASSIGN_OR_RETURN(const int64_t epoch, NewestEpoch(id));
      if (epoch == 0) return SessionOwner{};
      absl::StatusOr<std::string> text = env_->ReadFile(OwnerPath(id, epoch), kMaxOwnerRecordBytes);
      if (absl::IsNotFound(text.status())) continue;
      RETURN_IF_ERROR(Annotate(text.status(), absl::StrCat("reading the owner of session ", id)));
      return ParseOwnerRecord(*text, epoch);
    }
    return absl::UnavailableError(
        absl::StrCat("the owner of session ", id, " changed faster than it could be read"));
  }

  absl::StatusOr<int64_t> Claim(const std::string& id, int64_t seen_epoch,
                                const SessionOwner& owner) override {
    RETURN_IF_ERROR(CheckId(id));
    if (seen_epoch < 0 || seen_epoch == std::numeric_limits<int64_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("owner epoch ", seen_epoch, " out of range"));
    }
    if (!PrintableLine(owner.replica) || !PrintableLine(owner.address) ||
        !PrintableLine(owner.tenant)) {
      return absl::InvalidArgumentError(
          "a replica name, address or tenant with unprintable characters");
    }
    const int64_t epoch = seen_epoch + 1;
    const std::string context = absl::StrCat("claiming session ", id, " (epoch ", epoch, ")");
    RETURN_IF_ERROR(Annotate(WriteOwnerRecord(id, epoch, owner), context));
    // The record of an epoch a later claim has already passed (and cleaned up) can be created
    // too: the claim holds only if it is the newest.
    ASSIGN_OR_RETURN(const int64_t newest, NewestEpoch(id));
    if (newest != epoch) {
      env_->RemoveFile(OwnerPath(id, epoch)).IgnoreError();
      return absl::AbortedError(
          absl::StrCat("session ", id, " was claimed by another replica (epoch ", newest, ")"));
    }
    {
      MutexLock lock(&claims_mu_);
      claims_[id] = epoch;
    }
    RemoveOwnerRecordsBefore(id, epoch);
    return epoch;
  }

  absl::Status CheckClaim(const std::string& id) override {
    RETURN_IF_ERROR(CheckId(id));
    return CheckEpoch(id, ClaimOf(id));
  }

  absl::Status Release(const std::string& id) override {
    RETURN_IF_ERROR(CheckId(id));
    const int64_t mine = ClaimOf(id);
    Forget(id);
    if (mine == 0 || !CheckEpoch(id, mine).ok()) return absl::OkStatus();
    const std::string context = absl::StrCat("releasing session ", id);
    // The released record keeps the session's tenant (the one this replica's claim recorded).
    SessionOwner released;
    absl::StatusOr<std::string> text = env_->ReadFile(OwnerPath(id, mine), kMaxOwnerRecordBytes);
    if (text.ok()) {
      if (absl::StatusOr<SessionOwner> current = ParseOwnerRecord(*text, mine); current.ok()) {
        released.tenant = current->tenant;
      }
    }
    absl::Status written = WriteOwnerRecord(id, mine + 1, released);
    if (absl::IsAborted(written)) return absl::OkStatus();  // claimed meanwhile: not ours anyway
    RETURN_IF_ERROR(Annotate(written, context));
    RemoveOwnerRecordsBefore(id, mine + 1);
    return absl::OkStatus();
  }

  void Forget(const std::string& id) override {
    MutexLock lock(&claims_mu_);
    claims_.erase(id);
  }

 private:
  std::string SessionDir(const std::string& id) const { return absl::StrCat(sessions_, "/", id); }
  std::string VersionPath(const std::string& id, FileVersion version) const {
    return absl::StrCat(sessions_, "/", id, "/", VersionFileName(version));
  }

  std::string OwnerPath(const std::string& id, int64_t epoch) const {
    return absl::StrCat(sessions_, "/", id, "/", OwnerFileName(epoch));
  }

  // The epoch of this store's claim on `id` (0: none).
  int64_t ClaimOf(const std::string& id) const {
    MutexLock lock(&claims_mu_);
    auto it = claims_.find(id);
    return it == claims_.end() ? 0 : it->second;
  }

  // The newest owner epoch recorded for `id` (0: none, or no directory).
  absl::StatusOr<int64_t> NewestEpoch(const std::string& id) {
    absl::StatusOr<std::vector<std::string>> children = env_->GetChildren(SessionDir(id));
    if (absl::IsNotFound(children.status())) return 0;
    RETURN_IF_ERROR(Annotate(children.status(), absl::StrCat("listing session ", id)));
    int64_t newest = 0;
    for (const std::string& child : *children) {
      if (const std::optional<int64_t> e = ParseOwnerFileName(child)) newest = std::max(newest, *e);
    }
    return newest;
  }

  // OK when `mine` is 0 (no claim) or still the newest epoch of `id`; ABORTED otherwise.
  absl::Status CheckEpoch(const std::string& id, int64_t mine) {
    if (mine == 0) return absl::OkStatus();
    ASSIGN_OR_RETURN(const int64_t newest, NewestEpoch(id));
    if (newest == mine) return absl::OkStatus();
    return Fenced(id, mine, newest);
  }

  // Creates the owner record `epoch` of `id` (and the session's directory): written to a
  // temporary file, synced, then linked under its name, which fails when that record exists
  // (ABORTED: another claim took the epoch).
  absl::Status WriteOwnerRecord(const std::string& id, int64_t epoch, const SessionOwner& owner) {
    const std::string session_dir = SessionDir(id);
    RETURN_IF_ERROR(env_->CreateDir(session_dir));
    RETURN_IF_ERROR(env_->SyncDir(sessions_));
    const std::string temp = absl::StrCat(session_dir, "/", TempFileName(epoch));
    absl::Status status = WriteDurably(temp, OwnerRecordText(owner));
    if (status.ok()) status = env_->LinkFile(temp, OwnerPath(id, epoch));
    env_->RemoveFile(temp).IgnoreError();
    if (absl::IsAlreadyExists(status)) {
      return absl::AbortedError(
          absl::StrCat("session ", id, " was claimed by another replica (epoch ", epoch, ")"));
    }
    RETURN_IF_ERROR(status);
    return env_->SyncDir(session_dir);
  }

  // Best effort: owner records older than `epoch` are history.
  void RemoveOwnerRecordsBefore(const std::string& id, int64_t epoch) {
    absl::StatusOr<std::vector<std::string>> children = env_->GetChildren(SessionDir(id));
    if (!children.ok()) return;
    for (const std::string& child : *children) {
      const std::optional<int64_t> e = ParseOwnerFileName(child);
      if (e.has_value() && *e < epoch) env_->RemoveFile(OwnerPath(id, *e)).IgnoreError();
    }
  }

  // Unique within this store (the counter) and, on a volume several replicas share, across
  // stores (the random salt).
  std::string TempFileName(int64_t version) {
    const uint64_t n = next_temp_.fetch_add(1, std::memory_order_relaxed);
    return absl::StrFormat("%s%d-%016x", kTempPrefix, version,
                           temp_salt_ ^ (n * uint64_t{0x9e3779b97f4a7c15}));
  }

  // The published versions of `id`, oldest first; NOT_FOUND when it has no directory.
  absl::StatusOr<std::vector<FileVersion>> Versions(const std::string& id) {
    ASSIGN_OR_RETURN(const std::vector<std::string> children, env_->GetChildren(SessionDir(id)));
    std::vector<FileVersion> versions;
    for (const std::string& child : children) {
      if (const std::optional<FileVersion> v = ParseVersionFileName(child)) versions.push_back(*v);
    }
    std::sort(versions.begin(), versions.end());
    return versions;
  }

  // The newest of `versions` that is a regular file (a link or a directory by a version's name is
  // skipped); NOT_FOUND when there is none.
  absl::StatusOr<StoredVersion> NewestOf(const std::string& id,
                                         const std::vector<FileVersion>& versions) {
    for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
      absl::StatusOr<uint64_t> size = env_->GetFileSize(VersionPath(id, *it));
      if (absl::IsNotFound(size.status()) || absl::IsFailedPrecondition(size.status())) continue;
      if (!size.ok()) return size.status();
      return StoredVersion{id, it->version, static_cast<int64_t>(*size), it->epoch};
    }
    return absl::NotFoundError(absl::StrCat("session ", id, " has no published version"));
  }

  // Writes `data` to a new file at `path` and syncs it.
  absl::Status WriteDurably(const std::string& path, std::string_view data) {
    ASSIGN_OR_RETURN(std::unique_ptr<StoreWritableFile> file, env_->NewWritableFile(path));
    for (size_t at = 0; at < data.size(); at += kAppendChunkBytes)
      RETURN_IF_ERROR(file->Append(data.substr(at, kAppendChunkBytes)));
    RETURN_IF_ERROR(file->Sync());
    return file->Close();
  }

  void Log(const std::string& message) const {
    std::fprintf(stderr, "mnemo-server: session store %s: %s\n", dir_.c_str(), message.c_str());
  }

  const std::string dir_;
  const std::string sessions_;
  const std::string quarantine_;
  StoreEnv* const env_;
  const uint64_t temp_salt_;
  std::atomic<uint64_t> next_temp_{0};
  mutable Mutex claims_mu_;
  // The sessions this store claimed and the epoch of each claim.
  std::map<std::string, int64_t> claims_ ABSL_GUARDED_BY(claims_mu_);
};

}  // namespace

StoreEnv* PosixStoreEnv() {
  static PosixEnv* const env = new PosixEnv;
  return env;
}

absl::StatusOr<std::unique_ptr<SessionStore>> OpenFileSessionStore(const std::string& dir,
                                                                   StoreEnv* env) {
  if (dir.empty()) return absl::InvalidArgumentError("session store: no directory given");
  std::string root = dir;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  auto store = std::make_unique<FileSessionStore>(std::move(root), env);
  RETURN_IF_ERROR(Annotate(store->Recover(), absl::StrCat("opening session store at ", dir)));
  return store;
}

}  // namespace mnemo::server
