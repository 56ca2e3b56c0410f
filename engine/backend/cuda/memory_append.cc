// The CUDA backend's memory append: every sequence's new keys/values (the k and v blocks of
// its qkv rows) into its XL memory ring, one indirect row copy for the whole batch.
#include <vector>

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"

namespace mnemo::engine::cuda {

absl::Status CudaBackend::AppendToMemory(const std::vector<MemoryAppendArgs>& batch) {
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  // (source row, destination slot) pointer pairs for keys and values of every kept row.
  std::vector<const float*> src;
  std::vector<float*> dst;
  int64_t width = 0;
  for (const MemoryAppendArgs& a : batch) {
    XlMemory& m = *a.memory;
    width = m.width();
    const int64_t rows = a.qkv->dim(0);
    const int64_t q_width = a.q_width > 0 ? a.q_width : width, ld = q_width + 2 * width;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t slot = m.SlotOfNewRow(r, rows);
      if (slot < 0) continue;
      const float* row = a.qkv->data<float>() + r * ld;
      src.push_back(row + q_width);
      dst.push_back(m.keys().data<float>() + slot * width);
      src.push_back(row + q_width + width);
      dst.push_back(m.values().data<float>() + slot * width);
    }
  }
  return CopyRowPairs(src, dst, width);
}

}  // namespace mnemo::engine::cuda
