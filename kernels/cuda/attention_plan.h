// Work planning for the CUDA relative-attention kernel (relative_attention.cu): which block runs
// which queries against which keys. Plain C++ (no CUDA headers), so it is tested on machines
// without a GPU; the structs are the kernel's device-side inputs, copied to the GPU as they are.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define MNEMO_HOST_DEVICE __host__ __device__
#else
#define MNEMO_HOST_DEVICE
#endif

namespace mnemo::kernels::cuda {

// Queries one block handles: 1 for decode batches (every sequence has one new token), else 8.
constexpr int kDecodeQueryTile = 1;
constexpr int kPrefillQueryTile = 8;
// Keys one warp scores at a time, and warps per block.
constexpr int kKeyTile = 32;
constexpr int kWarpsPerBlock = 4;
// Most chunks one query tile's keys are split into (the combine kernel's shared arrays).
constexpr int kMaxSplits = 64;
// Decode blocks run 2 warps, so decode chunks are whole multiples of 2 key tiles.
constexpr int kDecodeWarps = 2;
constexpr int kDecodeChunkUnit = kDecodeWarps * kKeyTile;

// First key position query i (0-based among the T new ones) may see; keys are numbered
// 0 … M + T − 1 over [memory | segment]. With same_length (Hugging Face's rule) and more keys
// than mem_len_max, query i sees at most mem_len_max keys; otherwise everything up to itself.
MNEMO_HOST_DEVICE inline int64_t FirstVisibleKey(int64_t i, int64_t memory_len, int64_t query_len,
                                                 int64_t mem_len_max, bool same_length) {
  if (!same_length) return 0;
  const int64_t keys = memory_len + query_len;
  const int64_t shift = keys > mem_len_max ? mem_len_max - memory_len : query_len;
  const int64_t first = i - shift + 1;
  return first > 0 ? first : 0;
}

// One sequence of a batch, as the kernel reads it. Keys are numbered over
// [compressed memory | XL memory | segment]: a compressive layer's compressed slots come first,
// one relative position each, as on the CPU.
struct AttentionSequence {
  const float* qkv;    // [T, 3·W]: q | k | v, W = H·d_h
  const float* mem_k;  // memory ring [capacity, W]
  const float* mem_v;
  float* out;  // [T, W]
  int64_t query_len;
  int64_t memory_len;  // keys before the segment: cmem_len + the XL ring's stored positions
  int64_t capacity;    // the XL ring's (oldest stored position at ring_start)
  int64_t ring_start;
  const float* cmem_k = nullptr;  // compressed-memory ring [cmem_capacity, W] (none: len 0)
  const float* cmem_v = nullptr;
  int64_t cmem_len = 0;  // stored compressed slots, oldest at cmem_start
  int64_t cmem_capacity = 1;
  int64_t cmem_start = 0;
  // most_used compression: usage[ring slot] += the attention probability each XL-memory key
  // receives, summed over heads and queries (AttentionMass); null otherwise.
  float* usage = nullptr;
  // RealFormer, [H, T, memory_len + T] each (null when unused): prev_scores are added to the
  // scaled scores before the softmax and `scores` receive the sums; only visible entries are
  // read or written, as on the CPU.
  const float* prev_scores = nullptr;
  float* scores = nullptr;
};

// One block row of the grid (all heads run as grid.y): queries [q_begin, q_begin + q_count) of
// sequence `seq` against keys [k_begin, k_end). A split item writes partial softmax statistics
// (rows partial … partial + q_count − 1) that a combine item merges; otherwise partial = −1 and
// it writes the output.
struct AttentionWorkItem {
  int32_t seq;
  int32_t q_begin;
  int32_t q_count;
  int32_t pad_ = 0;
  int64_t k_begin;
  int64_t k_end;
  int64_t partial;
};

// Merges `splits` partial results of one query tile: split s, query q is partial row
// partial + s · q_count + q.
struct AttentionCombineItem {
  int32_t seq;
  int32_t q_begin;
  int32_t q_count;
  int32_t splits;
  int64_t partial;
};

struct AttentionShapeInput {
  int64_t query_len;
  int64_t memory_len;
};

struct AttentionPlan {
  int query_tile = kPrefillQueryTile;
  std::vector<AttentionWorkItem> items;
  std::vector<AttentionCombineItem> combines;
  int64_t partial_rows = 0;  // rows of [H, d_h + 2] partial records the items write
};

// Plans one layer's attention for a ragged batch. Query tiles whose key range is long are split
// into chunks (flash-decoding) until the grid has at least `min_blocks` blocks (items × heads),
// with no chunk shorter than `min_split_keys` keys. A decode batch (every T = 1) gets a grid that
// depends only on the batch size and mem_len_max + cmem_len_max (some chunks may be empty), so
// that its launches can be recorded once and replayed. `memory_len` counts compressed slots too;
// `cmem_len_max` is the most compressed slots a memory of the batch can hold.
AttentionPlan PlanRelativeAttention(const std::vector<AttentionShapeInput>& seqs, int num_heads,
                                    int64_t mem_len_max, bool same_length, int min_blocks,
                                    int64_t min_split_keys = 128, int64_t cmem_len_max = 0);

}  // namespace mnemo::kernels::cuda
