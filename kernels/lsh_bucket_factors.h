// The bucket count of a Reformer LSH layer as factors (docs/checkpoint-format.md "lsh"). Hugging
// Face hashes with a list `num_buckets` [f_0, f_1, …] by cutting each round's rotation columns
// into runs of f_i / 2, taking argmax([y_i, −y_i]) = b_i ∈ [0, f_i) in each run and combining the
// runs as digits, bucket = b_0 + f_0·(b_1 + f_1·(b_2 + …)). One factor is the plain hash.
// Plain C++ shared by the CPU and CUDA kernels and the engine's configuration.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MNEMO_LSH_HOST_DEVICE __host__ __device__
#else
#define MNEMO_LSH_HOST_DEVICE
#endif

namespace mnemo::kernels {

struct LshBucketFactors {
  static constexpr int kMaxFactors = 8;
  int count = 0;                // 0 ⇒ one factor, the layer's n_buckets
  int sizes[kMaxFactors] = {};  // each even, ≥ 2; their product is n_buckets
};

// `f` with count 0 read as its one factor, n_buckets: what every kernel iterates over.
inline MNEMO_LSH_HOST_DEVICE LshBucketFactors LshResolvedFactors(LshBucketFactors f,
                                                                 int n_buckets) {
  if (f.count == 0) {
    f.count = 1;
    f.sizes[0] = n_buckets;
  }
  return f;
}

// Rotation columns per round: Σ f_i / 2 (n_buckets / 2 for one factor).
inline MNEMO_LSH_HOST_DEVICE int LshRotationColumns(const LshBucketFactors& f, int n_buckets) {
  const LshBucketFactors resolved = LshResolvedFactors(f, n_buckets);
  int columns = 0;
  for (int i = 0; i < resolved.count; ++i) columns += resolved.sizes[i] / 2;
  return columns;
}

}  // namespace mnemo::kernels
