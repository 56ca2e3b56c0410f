#include "engine/memory/compression_plan.h"

#include <algorithm>

namespace mnemo::engine {

CompressionPlan PlanCompression(const XlMemory& memory, int64_t pending_rows, int64_t segment_rows,
                                int64_t rate) {
  CompressionPlan plan;
  plan.rate = rate;
  const int64_t cap = memory.capacity(), size = memory.size();
  // Rows the append evicts, oldest first: stored ones, then new ones that pass straight through.
  const int64_t evicted = size + segment_rows - std::min(cap, size + segment_rows);
  std::vector<CompressionRow>& open = plan.pending;
  for (int64_t r = 0; r < pending_rows; ++r) open.push_back({CompressionRow::Source::kPending, r});
  for (int64_t e = 0; e < evicted; ++e) {
    open.push_back(e < size
                       ? CompressionRow{CompressionRow::Source::kRing, (memory.start() + e) % cap}
                       : CompressionRow{CompressionRow::Source::kSegment, e - size});
    if (static_cast<int64_t>(open.size()) < rate) continue;
    plan.groups.insert(plan.groups.end(), open.begin(), open.end());
    open.clear();
  }
  return plan;
}

}  // namespace mnemo::engine
