#include "server/store_writer.h"

#include <cstdio>
#include <utility>

#include "absl/time/clock.h"

#include "server/metrics.h"

namespace mnemo::server {

const char* StoreErrorKind(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return "full";
    case absl::StatusCode::kDataLoss:
      return "data_loss";
    case absl::StatusCode::kFailedPrecondition:
      return "other_model";
    case absl::StatusCode::kInvalidArgument:
      return "malformed";
    default:
      return "unavailable";
  }
}

StoreWriter::StoreWriter(SessionStore* store, Metrics* metrics, PutDone on_done)
    : store_(store), metrics_(metrics), on_done_(std::move(on_done)), thread_([this] { Loop(); }) {}

StoreWriter::~StoreWriter() {
  Flush();
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  thread_.join();
}

void StoreWriter::Put(const std::string& id, int64_t version, std::string snapshot,
                      const char* reason) {
  MutexLock lock(&mu_);
  auto [it, inserted] = queued_.try_emplace(id);
  if (!inserted) ++finished_;  // the queued job is superseded
  it->second = Job{false, version, std::move(snapshot), reason};
  ++enqueued_;
  cv_.SignalAll();
}

void StoreWriter::Delete(const std::string& id) {
  MutexLock lock(&mu_);
  auto [it, inserted] = queued_.try_emplace(id);
  if (!inserted) ++finished_;
  it->second = Job{true, 0, {}, ""};
  ++enqueued_;
  cv_.SignalAll();
}

absl::Status StoreWriter::PutNow(const std::string& id, int64_t version, std::string_view snapshot,
                                 const char* reason) {
  {
    MutexLock lock(&mu_);
    while (queued_.count(id) != 0 || running_.count(id) != 0) cv_.Wait(&mu_);
    running_[id] = true;
  }
  absl::Status status = Write(id, version, snapshot, reason);
  {
    MutexLock lock(&mu_);
    running_.erase(id);
    cv_.SignalAll();
  }
  return status;
}

absl::Status StoreWriter::DeleteNow(const std::string& id) {
  {
    MutexLock lock(&mu_);
    if (auto it = queued_.find(id); it != queued_.end()) {  // superseded by the removal
      queued_.erase(it);
      ++finished_;
      cv_.SignalAll();
    }
    while (running_.count(id) != 0) cv_.Wait(&mu_);
    running_[id] = true;
  }
  absl::Status status = Run(id, Job{true, 0, {}, ""});
  MutexLock lock(&mu_);
  running_.erase(id);
  cv_.SignalAll();
  return status;
}

void StoreWriter::Flush() {
  MutexLock lock(&mu_);
  const uint64_t target = enqueued_;
  while (finished_ < target) cv_.Wait(&mu_);
}

absl::Status StoreWriter::Run(const std::string& id, const Job& job) {
  if (job.remove) {
    absl::Status status = store_->Delete(id);
    if (!status.ok()) {
      std::fprintf(stderr, "mnemo-server: session store: deleting session %s: %s\n", id.c_str(),
                   status.ToString().c_str());
      if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(status));
    }
    return status;
  }
  absl::Status status = Write(id, job.version, job.snapshot, job.reason);
  if (on_done_) on_done_(id, job.version, status);
  return status;
}

absl::Status StoreWriter::Write(const std::string& id, int64_t version, std::string_view snapshot,
                                const char* reason) {
  const absl::Time start = absl::Now();
  absl::Status status = store_->Put(id, version, snapshot);
  if (status.ok()) {
    if (metrics_ != nullptr) {
      metrics_->SnapshotWritten(reason, static_cast<int64_t>(snapshot.size()),
                                absl::ToDoubleSeconds(absl::Now() - start));
    }
  } else {
    std::fprintf(stderr, "mnemo-server: session store: writing version %lld of session %s: %s\n",
                 static_cast<long long>(version), id.c_str(), status.ToString().c_str());
    if (metrics_ != nullptr) metrics_->StoreError(StoreErrorKind(status));
  }
  return status;
}

void StoreWriter::Loop() {
  mu_.Lock();
  while (true) {
    auto next = queued_.end();
    for (auto it = queued_.begin(); it != queued_.end(); ++it) {
      if (running_.count(it->first) == 0) {
        next = it;
        break;
      }
    }
    if (next == queued_.end()) {
      if (stopping_) break;
      cv_.Wait(&mu_);
      continue;
    }
    const std::string id = next->first;
    const Job job = std::move(next->second);
    queued_.erase(next);
    running_[id] = true;
    mu_.Unlock();
    (void)Run(id, job);
    mu_.Lock();
    running_.erase(id);
    ++finished_;
    cv_.SignalAll();
  }
  mu_.Unlock();
}

}  // namespace mnemo::server
