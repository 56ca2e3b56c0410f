// CompressionPlan: which rows a compressive layer compresses when a segment joins its memory
// (MODEL-SPEC §2.2), as positions rather than data, so that every backend does the same
// bookkeeping and only moves and combines rows its own way. The append evicts the oldest stored
// positions (and, for a segment longer than the memory, some of its own rows, which pass straight
// through); after the rows still pending from earlier segments they fall into groups of
// compression_rate, each group one compressed row; an incomplete last group waits in the pending
// buffer for the next segment.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/memory/xl_memory.h"

namespace mnemo::engine {

// One row a compression reads: a row of the pending buffer, a slot of the layer's hidden-row ring
// (parallel to its XL memory ring) or a row of the new segment.
struct CompressionRow {
  enum class Source : uint8_t { kPending, kRing, kSegment };
  Source source;
  int64_t index;
};

struct CompressionPlan {
  int64_t rate = 1;
  std::vector<CompressionRow> groups;   // every complete group's rows, oldest first, rate each
  std::vector<CompressionRow> pending;  // the incomplete group: pending rows 0 … size − 1 after
  int64_t num_groups() const { return static_cast<int64_t>(groups.size()) / rate; }
};

// Where row `r` lives, given the three places rows of width `d` come from (device or host
// addresses alike).
inline const float* RowAddress(const CompressionRow& r, const float* pending, const float* ring,
                               const float* segment, int64_t d) {
  const float* base = r.source == CompressionRow::Source::kPending ? pending
                      : r.source == CompressionRow::Source::kRing  ? ring
                                                                   : segment;
  return base + r.index * d;
}

// The plan for appending `segment_rows` positions to `memory`, with `pending_rows` rows already
// waiting; rate ≥ 1.
CompressionPlan PlanCompression(const XlMemory& memory, int64_t pending_rows, int64_t segment_rows,
                                int64_t rate);

}  // namespace mnemo::engine
