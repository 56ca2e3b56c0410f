// Transformer-XL relative-position attention over [memory | segment] on the CPU (MODEL-SPEC §1.1):
//   score[i,j] = ((q_i + u)·k_j + (q_i + v)·Rk[min(δ, clamp)]) / sqrt(d_h),  δ = (M + i) − j,
// causal (j ≤ M + i) and, with same_length, every query sees at most mem_len_max keys. The
// positional term indexes the distance table directly instead of materialising shifted matrices.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct RelativeAttentionShape {
  int num_heads;        // H
  int head_dim;         // d_h
  int64_t query_len;    // T: new positions; they are the last T keys
  int64_t memory_len;   // M: keys before the new positions
  int64_t mem_len_max;  // configured mem_len (same_length rule)
  int64_t clamp_len;    // 0 = no clamp
  bool same_length;
  // Optional (most_used compression): key_mass[j − mass_begin] += the attention probability key
  // j in [mass_begin, mass_end) receives, summed over heads and queries.
  float* key_mass = nullptr;
  int64_t mass_begin = 0;
  int64_t mass_end = 0;
  // Optional (RealFormer), [H, T, M + T] each: prev_scores are added to the scaled scores before
  // the softmax; out_scores receive the sums. Only the entries a query sees are read or written.
  const float* prev_scores = nullptr;
  float* out_scores = nullptr;
};

// Rows of the distance table that a call reads: distances 0 … min(M + T − 1, clamp).
int64_t RelativeTableRowsNeeded(const RelativeAttentionShape& shape);

// q:   [T, H·d_h], row stride ldq.
// keys: spans covering exactly M + T key positions, oldest first; memory spans may be 16-bit rings
//       (KvSpan::type), widened as they are read (exactly: the results are those of float32
//       rows holding the same values).
// table: the distance table as a span's keys (v unused): [rows ≥ RelativeTableRowsNeeded, H·d_h],
//       row p = W_r · sinusoid(p), row stride table.ld; float32, or 16-bit (KvSpan::type: 16-bit
//       session memory) and read as the 16-bit key rows are.
// r_w_bias, r_r_bias: [H, d_h] (u and v of the paper).
// out: [T, H·d_h], row stride ldo.
// Work is split over `pool`: multi-row calls by (head, block of 64 queries), each with
// single-threaded BLAS products; T = 1 (decode) by blocks of 64 key rows (every head's slice of a
// block at once, so the memory streams whole rows), with the softmax per head in between.
void RelativeAttention(const RelativeAttentionShape& shape, const float* q, int64_t ldq,
                       const std::vector<KvSpan>& keys, const KvSpan& table, const float* r_w_bias,
                       const float* r_r_bias, float* out, int64_t ldo, ThreadPool& pool);

// One decode step (T = 1) of several sequences of one layer, as RelativeAttention computes each,
// in one pass: the blocks of every sequence's keys share the pool, and the layer's distance table,
// the same for all of them, is read once instead of once per sequence.
struct RelativeDecodeQuery {
  RelativeAttentionShape shape;  // query_len must be 1
  const float* q;                // [H·d_h]
  const std::vector<KvSpan>* keys;
  const float* r_w_bias;
  const float* r_r_bias;
  float* out;  // [H·d_h]
};
void RelativeAttentionDecode(const std::vector<RelativeDecodeQuery>& queries, const KvSpan& table,
                             ThreadPool& pool);

}  // namespace mnemo::kernels
