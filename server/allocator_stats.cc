#include "server/allocator_stats.h"

#include <malloc.h>

#include <cstddef>

// The sanitizer runtimes' allocator interface (sanitizer/allocator_interface.h); weak, so they
// are null in a build without a sanitizer and the glibc figures are used instead. The names are
// the runtime's, reserved identifiers or not.
// NOLINTNEXTLINE(bugprone-reserved-identifier)
extern "C" size_t __sanitizer_get_current_allocated_bytes() __attribute__((weak));
// NOLINTNEXTLINE(bugprone-reserved-identifier)
extern "C" size_t __sanitizer_get_heap_size() __attribute__((weak));

namespace mnemo::server {

AllocatorStats ReadAllocatorStats() {
  AllocatorStats stats;
  if (__sanitizer_get_current_allocated_bytes != nullptr && __sanitizer_get_heap_size != nullptr) {
    stats.allocated_bytes = static_cast<int64_t>(__sanitizer_get_current_allocated_bytes());
    stats.heap_bytes = static_cast<int64_t>(__sanitizer_get_heap_size());
    return stats;
  }
  // uordblks: bytes in use from the arenas; hblkhd: blocks mmapped on their own (large ones,
  // returned to the system when freed); arena: bytes the arenas took with sbrk/mmap.
  const struct mallinfo2 info = mallinfo2();
  stats.allocated_bytes = static_cast<int64_t>(info.uordblks + info.hblkhd);
  stats.heap_bytes = static_cast<int64_t>(info.arena + info.hblkhd);
  return stats;
}

}  // namespace mnemo::server
