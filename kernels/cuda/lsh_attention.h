// Reformer LSH attention on the GPU (docs/checkpoint-format.md "lsh"), the same functions as
// kernels/cpu/lsh_attention.h ("sort": "window") and kernels/cpu/lsh_call_attention.h ("sort":
// "call", Hugging Face's per-call sort; step 4 then walks the query's chunk and the one before
// in the rounds' orders laid end to end, with one online softmax over every round's slots). Keys
// are numbered over [ring (M stored positions) | call (T new ones)], n = M + T. One launch sequence
// per call:
//   1. hash + normalise: per (new row, head, round) a block takes the argmax of [y, −y] over the
//      stored rotations (the products summed in d order without fused multiply-add, as the CPU
//      does, so both backends pick the same buckets), and round 0's block writes the normalised
//      key;
//   2. gather: every (head, round)'s buckets of the n keys into one row;
//   3. index: per (head, round) one block builds the wavelet matrix of that row level by level
//      (ballot, prefix counts, stable partition), then the keys' (bucket, index) order
//      (lsh_window_index.h);
//   4. attend: one warp per (query, head) finds, per round, its rank in its window and the ranks
//      of its chunk and the one before, resolves them to keys, drops a key an earlier round
//      already took (a rank test against that round), and runs an online softmax over the rest;
//      a query with no other key takes its own value.
// Work per query is O(R · c · (d_h + R · log nb)); the index costs O(n · log nb) per (head,
// round), memory O(n · R · H). No L × L matrix and no per-query sort.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/lsh_bucket_factors.h"

namespace mnemo::kernels::cuda {

struct LshAttentionLaunch {
  const float* x;  // [T, ldx]: the new positions' shared query/key rows (head h at h·d_h) …
  int64_t ldx;
  const float* new_v;         // … and their value rows, ldx apart
  const float* rotations;     // [H, d_h, R, C], C = LshRotationColumns(factors, n_buckets)
  const float* mem_k;         // ring [capacity, W]: normalised keys, W = H·d_h
  const float* mem_v;         // ring [capacity, W]: values
  const int32_t* mem_bucket;  // ring [capacity, H·R]: buckets
  int64_t memory_len;         // M, oldest at ring_start
  int64_t capacity;
  int64_t ring_start;
  float* new_k;         // [T, W] written: the new positions' normalised keys
  int32_t* new_bucket;  // [T, H·R] written: their buckets
  void* scratch;        // LshAttentionScratchBytes(capacity + T, …) bytes, 256-aligned
  float* out;           // [T, W]
  int64_t query_len;    // T
  int num_heads;
  int head_dim;  // ≤ 128
  int n_hashes;  // R ≤ 64
  int n_buckets;
  LshBucketFactors factors;  // n_buckets as factors (none: one factor, n_buckets)
  int64_t chunk_len;
  int64_t history;
  bool call_sort;  // Hugging Face's per-call sort ("sort": "call") instead of per-query windows
};

// Scratch for an index over at most `max_keys` keys.
size_t LshAttentionScratchBytes(int64_t max_keys, int num_heads, int n_hashes, int n_buckets);

cudaError_t LshAttention(const LshAttentionLaunch& launch, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
