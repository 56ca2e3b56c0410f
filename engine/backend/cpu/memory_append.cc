// The CPU backend's memory append: every sequence's new keys/values (the k and v blocks of its
// qkv rows) into its XL memory ring, in the ring's dtype.
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"

namespace mnemo::engine::cpu {

absl::Status CpuBackend::AppendToMemory(const std::vector<MemoryAppendArgs>& batch) {
  for (const MemoryAppendArgs& a : batch) {
    XlMemory& m = *a.memory;
    const int64_t width = m.width(), rows = a.qkv->dim(0);
    const int64_t q_width = a.q_width > 0 ? a.q_width : width, ld = q_width + 2 * width;
    const float* qkv = a.qkv->data<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t slot = m.SlotOfNewRow(r, rows);
      if (slot < 0) continue;
      m.WriteRow(slot, qkv + r * ld + q_width, qkv + r * ld + q_width + width);
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cpu
