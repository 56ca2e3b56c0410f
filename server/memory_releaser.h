// MemoryReleaser: now and then hands the memory the allocator keeps after frees back to the
// system, so the process's RSS (what a container's memory limit and the OOM killer count) follows
// what the server holds instead of its peak. glibc keeps freed chunks in per-thread arenas and
// returns on its own only the top of the main heap; after a burst of sessions is deleted the RSS
// stayed up to 13% above its earlier level. malloc_trim(0) gives back every free page of every
// arena (madvise, so nothing moves); under the sanitizers __sanitizer_purge_allocator does the
// same for their allocator.
//
// Threading: the releaser runs its own thread; construction and destruction from one thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "absl/time/time.h"

#include "server/metrics.h"

namespace mnemo::server {

// Gives free heap memory back to the system now; returns the bytes the RSS fell by (0 when it did
// not fall).
int64_t ReleaseFreeHeapMemory();

class MemoryReleaser {
 public:
  // Every `interval`, when the allocator keeps at least `min_free_bytes` free (heap bytes less
  // allocated bytes, server/allocator_stats.h), releases them and counts it in `metrics`.
  MemoryReleaser(absl::Duration interval, int64_t min_free_bytes, Metrics* metrics);
  ~MemoryReleaser();  // stops the thread
  MemoryReleaser(const MemoryReleaser&) = delete;
  MemoryReleaser& operator=(const MemoryReleaser&) = delete;

 private:
  void Run();

  const absl::Duration interval_;
  const int64_t min_free_bytes_;
  Metrics* const metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace mnemo::server
