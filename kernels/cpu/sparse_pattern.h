// Sparse attention patterns (docs/checkpoint-format.md "Sparse patterns", MODEL-SPEC §3) and
// the CPU attention that evaluates them key by key: work is proportional to the keys a pattern
// names, so a decode step costs O(nonzeros) whatever the document's length.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kinds.h"

namespace mnemo::kernels {

struct SparsePattern {
  SparsePatternKind kind = SparsePatternKind::kWindow;
  int64_t span = 0;                          // S: no key more than S positions back (but globals)
  int64_t window = 0;                        // window: W
  const int64_t* dilations = nullptr;        // window: [H]
  int64_t stride = 0;                        // strided: l
  int64_t block = 0;                         // fixed: l; bigbird: b
  int64_t summary = 0;                       // fixed: c
  int64_t window_blocks = 0;                 // bigbird: w
  int64_t random_blocks = 0;                 // bigbird: r
  uint64_t seed = 0;                         // bigbird
  const uint8_t* head_components = nullptr;  // strided / fixed: [H], bit 0 first, bit 1 second
};

// Appends the positions head h of the query at stream position p sees under `pattern` (global
// positions aside), ascending, each once, all in [max(0, p − span), p].
void AppendAllowedPositions(const SparsePattern& pattern, int h, int64_t p,
                            std::vector<int64_t>& out);

// BigBird's random blocks of query block q in head h (docs/checkpoint-format.md), in pick order.
std::vector<int64_t> BigBirdRandomBlocks(const SparsePattern& pattern, int h, int64_t q);

// The global positions kept before a call: keys/values `ld` floats apart, ascending positions.
struct GlobalKeys {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t ld = 0;
  std::vector<int64_t> positions;  // ascending, all < first_position + memory_len
  std::vector<int64_t> rows;       // row of each in k/v
};

struct SparsePatternShape {
  int num_heads;
  int head_dim;
  int64_t query_len;       // T new positions: key indices M … M + T − 1
  int64_t memory_len;      // M stored positions before them
  int64_t first_position;  // stream position of key index 0
  int64_t max_global;      // K(p) keeps at most this many global positions
  // Optional (RealFormer; no globals), [H, T, M + T] each: prev_scores are added to the scaled
  // scores before the softmax; out_scores receive the sums, for the keys a query sees.
  const float* prev_scores = nullptr;
  float* out_scores = nullptr;
};

// The positions each new query of a segment sees: its pattern's own (the whole span for a
// global query) merged with K(p), the last max_global global positions before it (the stored
// ones, then the segment's). Shared by the CPU attention below and the CUDA backend, which turns
// positions into device rows.
class SparseQueryKeys {
 public:
  // `stored_globals`: the kept global positions before the call, ascending; `segment_global`:
  // per new position, whether it is global (empty: none is). Both must outlive this object.
  SparseQueryKeys(const SparsePattern& pattern, const SparsePatternShape& shape,
                  const std::vector<int64_t>& stored_globals,
                  const std::vector<uint8_t>& segment_global);
  // Positions head h's query i (0-based in the segment) sees, ascending, each once, into *out
  // (cleared first).
  void Positions(int h, int64_t i, std::vector<int64_t>* out) const;

 private:
  const SparsePattern& pattern_;
  const SparsePatternShape& shape_;
  const std::vector<int64_t>& stored_;
  const std::vector<uint8_t>& segment_global_;
  int64_t segment_start_;
  std::vector<int64_t> seg_globals_;     // the segment's global positions, ascending
  std::vector<int64_t> globals_before_;  // per new position: segment globals before it
};

// out[i] for the T new positions. keys: spans over the M + T positions, oldest first. globals:
// the kept global positions before the call; segment_global: per new position, whether it is
// global (empty: none is).
void SparsePatternAttention(const SparsePattern& pattern, const SparsePatternShape& shape,
                            const float* q, int64_t ldq, const std::vector<KvSpan>& keys,
                            const GlobalKeys& globals, const std::vector<uint8_t>& segment_global,
                            float* out, int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
