// Routing attention on the CPU (Roy et al.'s Routing Transformer in causal form;
// docs/checkpoint-format.md "routing"): every head's queries and keys are routed to the nearest
// of K centroids on the unit sphere, r(x) = argmax_c μ̂_c·x (μ̂_c = μ_c / ‖μ_c‖, the first maximum
// on ties), and the query at stream position p sees the keys j of the last `history` positions
// (p − history < j ≤ p) with r(k_j) = r(q_p), and itself always; score = q·k / sqrt(d_h).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::kernels {

struct RoutingShape {
  int num_heads;       // H
  int head_dim;        // d_h
  int n_clusters;      // K
  int64_t history;     // positions a query's window spans, itself included
  int64_t query_len;   // T: the new positions, the last T of the M + T keys
  int64_t memory_len;  // M: stored positions immediately before them (M ≤ history − 1)
};

// clusters[i·ldc + h] = r(row i's head h) for rows of x ([rows, H·d_h], `ldx` floats apart),
// under unit centroids [H, K, d_h].
void RoutingClusters(const RoutingShape& shape, int64_t rows, const float* x, int64_t ldx,
                     const float* unit_centroids, int32_t* clusters, int64_t ldc);

// q: [T, H·d_h] rows `ldq` apart; keys: spans covering exactly M + T positions, oldest first;
// key_clusters: [M + T, H] their clusters; query_clusters: [T, H]; out: [T, H·d_h] rows `ldo`
// apart. Work is split over (query, head) on `pool`.
void RoutingAttention(const RoutingShape& shape, const float* q, int64_t ldq,
                      const std::vector<KvSpan>& keys, const int32_t* key_clusters,
                      const int32_t* query_clusters, float* out, int64_t ldo, ThreadPool& pool);

}  // namespace mnemo::kernels
