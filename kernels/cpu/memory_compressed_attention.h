// Memory-compressed attention on the CPU (Liu et al. 2018, causal form; docs/checkpoint-format.md
// "memory_compressed"): positions fall into blocks of c; block j = [j·c, j·c + c) is compressed
// into one key and one value row by a strided convolution once it is complete. The query at
// stream position i (block b = ⌊i/c⌋) sees
//   the compressed rows of blocks max(0, b − S) … b − 1, and
//   the uncompressed keys of its own block up to itself, positions b·c … i;
// score = q·k / sqrt(d_h), one softmax over both. A decode step reads at most S + c rows per
// head however long the document.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct MemoryCompressedShape {
  int num_heads;
  int head_dim;
  int64_t query_len;         // T: new positions
  int64_t position;          // p: stream position of the first new position
  int64_t compression_rate;  // c
  int64_t cmem_len;          // S
};

// The compressed blocks a sequence holds before a call at `position`: min(⌊position/c⌋, S), and
// the uncompressed positions of its block in progress: position mod c.
int64_t CompressedBlocksBefore(const MemoryCompressedShape& shape);
int64_t OpenBlockRows(const MemoryCompressedShape& shape);
// Blocks the call completes: ⌊(position mod c + T) / c⌋.
int64_t BlocksCompleted(const MemoryCompressedShape& shape);

// q: [T, H·d_h] rows `ldq` apart.
// compressed: spans of exactly CompressedBlocksBefore + BlocksCompleted rows: the stored
//   compressed blocks, oldest first, then those of the blocks this call completes.
// raw: spans of exactly OpenBlockRows + T rows: the open block's stored positions, then the new
//   ones (index 0 is position p − OpenBlockRows).
// out: [T, H·d_h] rows `ldo` apart. Work is split over (query, head) on `pool`.
void MemoryCompressedAttention(const MemoryCompressedShape& shape, const float* q, int64_t ldq,
                               const std::vector<KvSpan>& compressed,
                               const std::vector<KvSpan>& raw, float* out, int64_t ldo,
                               ThreadPool& pool);

}  // namespace mnemo::kernels
