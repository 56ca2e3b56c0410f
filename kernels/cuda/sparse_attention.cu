// Sparse attention on the GPU (sparse_attention.h): the warp-per-query window kernel and the
// listed-keys kernel; twin of kernels/cpu/sparse_attention and sparse_pattern.
#include <cmath>

#include "kernels/cuda/ring_slot.cuh"
#include "kernels/cuda/sparse_attention.h"
#include "kernels/cuda/warp_softmax.cuh"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kMaxDk = kWarpSoftmaxMaxDk;

// A key's key and value rows, at the head's offset, and its index over [ring | segment].
struct KeyValueRows {
  const float* k;
  const float* v;
  int64_t key;
};

// RealFormer for one (query, head): the row of its [H, T, M + T] scores, `prev` added to each
// scaled score and the sums written to `out` (either may be null).
struct ResidualRow {
  const float* prev;
  float* out;
  int64_t at;  // (h·T + i)·(M + T)

  __device__ float Apply(int64_t key, float score) const {
    if (prev != nullptr) score += prev[at + key];
    if (out != nullptr) out[at + key] = score;
    return score;
  }
};

__device__ ResidualRow ResidualRowOf(const float* prev, float* out, int h, int64_t i,
                                     int64_t query_len, int64_t keys) {
  return {prev, out, (h * query_len + i) * keys};
}

// One warp's softmax attention of the scaled query `q` (d_h floats in shared memory) over
// `count` keys, key r's rows being rows_of(r): tiles of 32 keys, lane r scoring key r of each
// tile. Writes out[0 … d_h): zeros when there is no key.
template <typename RowsOf>
__device__ void WarpAttend(const float* q, int head_dim, int64_t count, RowsOf rows_of,
                           const ResidualRow& residual, float* out, float softcap = 0.0f) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  WarpSoftmax softmax;
  for (int64_t r0 = 0; r0 < count; r0 += 32) {
    const int64_t r = r0 + lane;
    const bool valid = r < count;
    float score = 0.0f;
    const float* vrow = nullptr;
    if (valid) {
      const KeyValueRows rows = rows_of(r);
      for (int d = 0; d < head_dim; ++d) score += rows.k[d] * q[d];
      if (softcap > 0.0f) score = softcap * tanhf(score / softcap);  // Gemma-2
      score = residual.Apply(rows.key, score);
      vrow = rows.v;
    }
    softmax.AddTile(valid, score, vrow, head_dim);
  }
  softmax.Write(out, head_dim);
}

// The query row `qrow`, scaled by `scale` (0: 1/sqrt(d_h)), into shared memory `q`.
__device__ void LoadScaledQuery(const float* qrow, int head_dim, float* q, float scale = 0.0f) {
  if (scale <= 0.0f) scale = rsqrtf(static_cast<float>(head_dim));
  for (int d = threadIdx.x; d < head_dim; d += 32) q[d] = qrow[d] * scale;
  __syncwarp();
}

__device__ __forceinline__ const float* KeyRow(const SlidingWindowLaunch& p, int64_t j, int64_t w,
                                               bool value) {
  if (j < p.memory_len) {
    return (value ? p.mem_v : p.mem_k) + RingSlot(p.ring_start, j, p.capacity) * w;
  }
  return p.qkv + (j - p.memory_len) * 3 * w + (value ? 2 * w : w);
}

// Grid (T, H), one warp per (query, head): keys self, self − dil, … (at most W, none before
// the first stored position).
__global__ void SlidingWindowKernel(SlidingWindowLaunch p) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int head_dim = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim,
                head = static_cast<int64_t>(h) * head_dim;
  const int64_t self = p.memory_len + i;
  const int64_t dil = p.dilations[h];
  __shared__ float q[32 * kMaxDk];
  LoadScaledQuery(p.qkv + i * 3 * w + head, head_dim, q);
  const int64_t reach = self / dil + 1;
  const int64_t count = p.window < reach ? p.window : reach;
  WarpAttend(
      q, head_dim, count,
      [&](int64_t r) {
        const int64_t j = self - r * dil;
        return KeyValueRows{KeyRow(p, j, w, false) + head, KeyRow(p, j, w, true) + head, j};
      },
      ResidualRowOf(p.prev_scores, p.scores, h, i, p.query_len, p.memory_len + p.query_len),
      p.out + i * w + head);
}

// Grid (T, H), one warp per task h·T + i, over the rows listed for it.
__global__ void GatheredKernel(GatheredAttentionLaunch p) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int head_dim = p.head_dim;
  const int64_t head = static_cast<int64_t>(h) * head_dim;
  const int64_t kv_head = static_cast<int64_t>(h / p.kv_group) * head_dim;
  const int64_t task = static_cast<int64_t>(h) * p.query_len + i;
  const int64_t begin = p.offsets[task], count = p.offsets[task + 1] - begin;
  __shared__ float q[32 * kMaxDk];
  LoadScaledQuery(p.q + i * p.ldq + head, head_dim, q, p.scale);
  WarpAttend(
      q, head_dim, count,
      [&](int64_t r) {
        const int64_t key = p.key_index != nullptr ? p.key_index[begin + r] : 0;
        return KeyValueRows{p.keys[begin + r] + kv_head, p.values[begin + r] + kv_head, key};
      },
      ResidualRowOf(p.prev_scores, p.scores, h, i, p.query_len, p.key_count),
      p.out + i * p.ldo + head, p.softcap);
}

}  // namespace

cudaError_t GatheredAttention(const GatheredAttentionLaunch& p, cudaStream_t stream) {
  if (p.query_len <= 0) return cudaSuccess;
  if (p.head_dim <= 0 || p.head_dim > 32 * kMaxDk || p.num_heads > 65535 ||
      p.query_len > 2147483647) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(p.query_len), static_cast<unsigned>(p.num_heads));
  GatheredKernel<<<grid, 32, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t SlidingWindowAttention(const SlidingWindowLaunch& p, cudaStream_t stream) {
  if (p.query_len <= 0) return cudaSuccess;
  if (p.head_dim <= 0 || p.head_dim > 32 * kMaxDk || p.window <= 0 || p.num_heads > 65535 ||
      p.query_len > 2147483647) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(p.query_len), static_cast<unsigned>(p.num_heads));
  SlidingWindowKernel<<<grid, 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
