// AllocatorStats: the heap as the process's allocator counts it: the bytes the program holds
// (allocated and not yet freed) and the bytes the allocator has taken from the system for its
// heap. The difference is memory freed but kept for reuse (glibc's arenas, the sanitizer
// allocators' size classes), which the RSS includes and which is not the server's to hand back.
// Works with glibc malloc (mallinfo2) and under ASan/TSan (their allocator interface).
//
// Threading: may be called from any thread.
#pragma once

#include <cstdint>

namespace mnemo::server {

struct AllocatorStats {
  int64_t allocated_bytes = 0;  // in use by the program
  int64_t heap_bytes = 0;       // obtained from the system by the allocator for its heap
};

AllocatorStats ReadAllocatorStats();

}  // namespace mnemo::server
