// The keys/values an attention call reads, as runs of consecutive positions: a layer's ring
// buffer (at most two runs) followed by the segment's own rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/kinds.h"

namespace mnemo::kernels {

// A run of consecutive key positions (oldest first); k/v rows are `ld` elements apart and hold all
// heads of a position ([rows, H·d_h] with head h at columns h·d_h … h·d_h + d_h − 1).
// A 16-bit ring (type kBF16 or kF16: 16-bit session memory) has its rows at k16/v16 and null
// k/v.
struct KvSpan {
  const float* k;
  const float* v;
  int64_t ld;
  int64_t rows;
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
  WeightType type = WeightType::kF32;
};

// Rows [row, row + n) of head `head`'s keys (or values) in `span` as float32 rows `ld` apart: the
// span's own rows, or for a 16-bit ring its rows widened into this thread's buffer (exact: a
// kernel then computes on the stored values as it would on float32 rows holding them), valid until
// the thread's next call. Blocks of queries use it (their BLAS products reuse each widened row
// for many queries); a single query reads 16-bit rows directly (HeadDots and HeadRowSums, or
// HalfDotRows and HalfRowSum head by head).
struct HeadRows {
  const float* data;
  int64_t ld;
};
HeadRows HeadSlice(const KvSpan& span, bool values, int64_t row, int64_t n, int head, int head_dim);

// Calls fn(span, first row inside the span, first key index, count) for every span's share of
// the keys [begin, end), in key order.
template <typename Fn>
void ForEachKeyRange(const std::vector<KvSpan>& spans, int64_t begin, int64_t end, Fn&& fn) {
  int64_t base = 0;
  for (const KvSpan& span : spans) {
    const int64_t lo = std::max(base, begin), hi = std::min(base + span.rows, end);
    if (lo < hi) fn(span, lo - base, lo, hi - lo);
    base += span.rows;
  }
}

}  // namespace mnemo::kernels
