// Reformer LSH attention on the CPU, as docs/checkpoint-format.md ("lsh") defines it: shared
// query/key vectors hashed by stored random rotations into `n_buckets` buckets per round; the
// query at stream position p sorts its window U(p) = the last `history` positions (itself
// included) by (bucket, position) in every round and looks at its own and the previous chunk of
// `chunk_len` ranks; the rounds' candidates are merged (each position once) and softmax-attended,
// itself only when nothing else is there. Work per query is O(n_hashes · chunk_len · (d_h +
// log N)) after one O(N log N) sort per round and head, never O(N²).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/lsh_bucket_factors.h"

namespace mnemo::kernels {

struct LshShape {
  int num_heads;                  // H
  int head_dim;                   // d_h
  int n_hashes;                   // R rounds
  int n_buckets;                  // nb (even)
  int64_t chunk_len;              // c
  int64_t history;                // Hh: positions a query's window spans, itself included
  int64_t query_len;              // T: the new positions, the last T of the M + T keys
  int64_t memory_len;             // M: stored positions immediately before them (M ≤ Hh − 1)
  LshBucketFactors factors = {};  // nb as factors (none: one factor, nb)
};

// A run of consecutive positions' buckets, oldest first: `rows` rows of H·R int32 each, `ld`
// ints apart; bucket of head h in round r is row[h·R + r].
struct BucketSpan {
  const int32_t* buckets;
  int64_t ld;
  int64_t rows;
};

// buckets[i·ldb + h·R + r] = bucket of row i of x ([rows, H·d_h], `ldx` floats apart) in round
// r of head h, under rotations [H, d_h, R, C] (row-major, C = LshRotationColumns): with
// y = x_hᵀ·rotations[h, :, r, :], argmax of [y, −y] (the first maximum on ties), or with several
// factors that argmax per factor's run of columns, combined as digits (lsh_bucket_factors.h).
// The products are summed in d order, each rounded before it is added, exactly as
// kernels/cuda/lsh_attention.cu does.
void LshHash(const LshShape& shape, int64_t rows, const float* x, int64_t ldx,
             const float* rotations, int32_t* buckets, int64_t ldb);

// k = x / sqrt(mean(x²) + 1e-6) / sqrt(d_h), per head, for `rows` rows (k may alias x).
void LshNormalizeKeys(int num_heads, int head_dim, int64_t rows, const float* x, int64_t ldx,
                      float* k, int64_t ldk);

// out[i] for the T new positions (key indices M … M + T − 1). x: their raw shared query/key
// rows; keys: spans of normalised keys and values over the M + T positions, oldest first;
// buckets: spans of bucket rows over the same M + T positions. out: [T, H·d_h], `ldo` apart.
void LshAttention(const LshShape& shape, const float* x, int64_t ldx,
                  const std::vector<KvSpan>& keys, const std::vector<BucketSpan>& buckets,
                  float* out, int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
