// StoreWriter: the one thread that changes the session store in the background, so a session's
// store operations (asynchronous snapshots, evictions, deletions) happen in the order they were
// asked for. Jobs are queued per session: a newer snapshot replaces a queued older one (only the
// newest version matters) and a deletion replaces a queued snapshot.
//
// Threading: every method is safe from any thread; `on_done` runs on the writer thread with no
// lock of the writer held.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"

#include "base/mutex.h"
#include "server/session_store.h"

namespace mnemo::server {

class Metrics;

class StoreWriter {
 public:
  // Called after each snapshot job with the store's answer.
  using PutDone =
      std::function<void(const std::string& id, int64_t version, const absl::Status& status)>;

  StoreWriter(SessionStore* store, Metrics* metrics, PutDone on_done);
  ~StoreWriter();  // finishes the queued jobs, then stops
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Queues `snapshot` as `version` of session `id` (`reason` labels the metrics).
  void Put(const std::string& id, int64_t version, std::string snapshot, const char* reason)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Writes now, after whatever is queued for `id`, and returns the store's answer.
  absl::Status PutNow(const std::string& id, int64_t version, std::string_view snapshot,
                      const char* reason) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues the removal of every stored version of `id`.
  void Delete(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes them now, after whatever is queued for `id` (a queued snapshot is dropped), and
  // returns the store's answer.
  absl::Status DeleteNow(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until every job queued before the call has run.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Job {
    bool remove = false;
    int64_t version = 0;
    std::string snapshot;
    const char* reason = "";
  };
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Run(const std::string& id, const Job& job);
  // Puts one snapshot, counting it (or its error) in the metrics and logging a failure.
  absl::Status Write(const std::string& id, int64_t version, std::string_view snapshot,
                     const char* reason);

  SessionStore* const store_;
  Metrics* const metrics_;
  const PutDone on_done_;
  mutable Mutex mu_;
  std::map<std::string, Job> queued_ ABSL_GUARDED_BY(mu_);
  // Sessions whose job is running now (a second job for one waits until it finishes).
  std::map<std::string, bool> running_ ABSL_GUARDED_BY(mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t finished_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  CondVar cv_;
  std::thread thread_;  // last: starts once everything above exists
};

// The metrics label of a store error ("unavailable", "full", …).
const char* StoreErrorKind(const absl::Status& status);

}  // namespace mnemo::server
