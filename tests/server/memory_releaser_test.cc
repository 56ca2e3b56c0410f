// The allocator's free memory handed back to the system (server/memory_releaser.h).
#include "server/memory_releaser.h"

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "prometheus/registry.h"
#include "server/metrics.h"

namespace mnemo::server {
namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

constexpr size_t kBlock = 16 << 10;  // below glibc's mmap threshold: from an arena
constexpr int kBlocks = 4096;        // 64 MiB

// 64 MiB of small blocks allocated and written on another thread (its own glibc arena), all
// freed but the last, which keeps the arena's top in use: glibc gives none of it back by itself.
// Returns the block left.
char* FreedBehindALiveBlock() {
  std::vector<char*> blocks;
  std::thread([&] {
    for (int i = 0; i < kBlocks; ++i) {
      blocks.push_back(new char[kBlock]);
      std::memset(blocks.back(), 1, kBlock);
    }
  }).join();
  for (int i = 0; i + 1 < kBlocks; ++i) delete[] blocks[i];
  return blocks.back();
}

double Counter(Metrics& metrics, const std::string& name) {
  for (const prometheus::MetricFamily& family : metrics.registry()->Collect()) {
    if (family.name == name) return family.metric.at(0).counter.value;
  }
  ADD_FAILURE() << "no metric " << name;
  return 0;
}

TEST(MemoryReleaserTest, ReleasingGivesFreedPagesBack) {
  if (kThreadSanitizer) GTEST_SKIP() << "TSan's allocator has no purge";
  char* live = FreedBehindALiveBlock();
  EXPECT_GE(ReleaseFreeHeapMemory(), int64_t{32} << 20);
  delete[] live;
}

TEST(MemoryReleaserTest, TheReleaserRunsWhenEnoughIsFreeAndStops) {
  if (kThreadSanitizer) GTEST_SKIP() << "TSan's allocator has no purge";
  Metrics metrics;
  char* live = FreedBehindALiveBlock();
  {
    MemoryReleaser releaser(absl::Milliseconds(20), int64_t{8} << 20, &metrics);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Counter(metrics, "mnemo_heap_releases_total") < 1 &&
           std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }  // stops promptly: the test would time out otherwise
  EXPECT_GE(Counter(metrics, "mnemo_heap_releases_total"), 1);
  EXPECT_GE(Counter(metrics, "mnemo_heap_released_bytes_total"), 32 << 20);
  delete[] live;
  // With little free, a long interval and a quick stop: nothing is released.
  Metrics idle;
  { MemoryReleaser releaser(absl::Hours(1), int64_t{1} << 40, &idle); }
  EXPECT_EQ(Counter(idle, "mnemo_heap_releases_total"), 0);
}

}  // namespace
}  // namespace mnemo::server
