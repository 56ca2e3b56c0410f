#include "server/memory_releaser.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdio>

#include "server/allocator_stats.h"

// The sanitizer runtimes' allocator interface (sanitizer/allocator_interface.h); weak, so it is
// null in a build without a sanitizer. The name is the runtime's, reserved identifier or not.
// NOLINTNEXTLINE(bugprone-reserved-identifier)
extern "C" void __sanitizer_purge_allocator() __attribute__((weak));

namespace mnemo::server {
namespace {

// The resident set in bytes (/proc/self/statm's second field, in pages), or 0 if unreadable.
int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "re");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return read == 2 ? resident * ::sysconf(_SC_PAGESIZE) : 0;
}

}  // namespace

int64_t ReleaseFreeHeapMemory() {
  const int64_t before = ResidentBytes();
  if (__sanitizer_purge_allocator != nullptr) {
    __sanitizer_purge_allocator();
  } else {
    ::malloc_trim(0);
  }
  const int64_t after = ResidentBytes();
  return before > after ? before - after : 0;
}

MemoryReleaser::MemoryReleaser(absl::Duration interval, int64_t min_free_bytes, Metrics* metrics)
    : interval_(interval), min_free_bytes_(min_free_bytes), metrics_(metrics) {
  thread_ = std::thread([this] { Run(); });
}

MemoryReleaser::~MemoryReleaser() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void MemoryReleaser::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, absl::ToChronoNanoseconds(interval_), [this] { return stop_; })) {
    const AllocatorStats stats = ReadAllocatorStats();
    if (stats.heap_bytes - stats.allocated_bytes < min_free_bytes_) continue;
    lock.unlock();  // a release takes milliseconds; the destructor must not wait for it
    metrics_->HeapReleased(ReleaseFreeHeapMemory());
    lock.lock();
  }
}

}  // namespace mnemo::server
