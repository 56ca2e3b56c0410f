#include <cmath>

#include "kernels/cuda/sparse_attention.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxDk = 4;  // d_h ≤ 128: up to 4 dimensions per lane

// A key's key and value rows, at the head's offset.
struct KeyValueRows {
  const float* k;
  const float* v;
};

// One warp's softmax attention of the scaled query `q` (d_h floats in shared memory) over
// `count` keys, key r's rows being rows_of(r): tiles of 32 keys, lane r scoring key r of each
// tile, an online softmax, and the output's dimensions d = lane + 32·k accumulated by every lane.
// Writes out[0 … d_h): zeros when there is no key.
template <typename RowsOf>
__device__ void WarpAttend(const float* q, int dh, int64_t count, RowsOf rows_of, float* out) {
  const int lane = threadIdx.x % 32;
  float m_run = -INFINITY, l_run = 0.0f, acc[kMaxDk] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t r0 = 0; r0 < count; r0 += 32) {
    const int64_t r = r0 + lane;
    const bool valid = r < count;
    float score = -INFINITY;
    if (valid) {
      const float* krow = rows_of(r).k;
      score = 0.0f;
      for (int d = 0; d < dh; ++d) score += krow[d] * q[d];
    }
    float tile_max = score;
    for (int o = 16; o > 0; o >>= 1) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, o));
    }
    const float m_new = fmaxf(m_run, tile_max);
    const float pr = valid ? expf(score - m_new) : 0.0f;
    float tile_sum = pr;
    for (int o = 16; o > 0; o >>= 1) tile_sum += __shfl_xor_sync(kFullMask, tile_sum, o);
    const float alpha = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
    l_run = l_run * alpha + tile_sum;
#pragma unroll
    for (int k = 0; k < kMaxDk; ++k) acc[k] *= alpha;
    m_run = m_new;
    const int rows = static_cast<int>(count - r0 < 32 ? count - r0 : 32);
    for (int jj = 0; jj < rows; ++jj) {
      const float pj = __shfl_sync(kFullMask, pr, jj);
      const float* vrow = rows_of(r0 + jj).v;
#pragma unroll
      for (int k = 0; k < kMaxDk; ++k) {
        const int d = lane + 32 * k;
        if (d < dh) acc[k] += pj * vrow[d];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxDk; ++k) {
    const int d = lane + 32 * k;
    if (d < dh) out[d] = l_run > 0.0f ? acc[k] / l_run : 0.0f;
  }
}

// The query row `qrow`, scaled by 1/sqrt(d_h), into shared memory `q`.
__device__ void LoadScaledQuery(const float* qrow, int dh, float* q) {
  const float scale = rsqrtf(static_cast<float>(dh));
  for (int d = threadIdx.x; d < dh; d += 32) q[d] = qrow[d] * scale;
  __syncwarp();
}

__device__ __forceinline__ const float* KeyRow(const SlidingWindowLaunch& p, int64_t j, int64_t w,
                                               bool value) {
  if (j < p.memory_len) {
    int64_t slot = p.ring_start + j;
    if (slot >= p.capacity) slot -= p.capacity;
    return (value ? p.mem_v : p.mem_k) + slot * w;
  }
  return p.qkv + (j - p.memory_len) * 3 * w + (value ? 2 * w : w);
}

// Grid (T, H), one warp per (query, head): keys self, self − dil, … (at most W, none before
// the first stored position).
__global__ void SlidingWindowKernel(SlidingWindowLaunch p) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int dh = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * dh, head = static_cast<int64_t>(h) * dh;
  const int64_t self = p.memory_len + i;
  const int64_t dil = p.dilations[h];
  __shared__ float q[32 * kMaxDk];
  LoadScaledQuery(p.qkv + i * 3 * w + head, dh, q);
  const int64_t reach = self / dil + 1;
  const int64_t count = p.window < reach ? p.window : reach;
  WarpAttend(
      q, dh, count,
      [&](int64_t r) {
        const int64_t j = self - r * dil;
        return KeyValueRows{KeyRow(p, j, w, false) + head, KeyRow(p, j, w, true) + head};
      },
      p.out + i * w + head);
}

// Grid (T, H), one warp per task h·T + i, over the rows listed for it.
__global__ void GatheredKernel(GatheredAttentionLaunch p) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int dh = p.head_dim;
  const int64_t head = static_cast<int64_t>(h) * dh;
  const int64_t task = static_cast<int64_t>(h) * p.query_len + i;
  const int64_t begin = p.offsets[task], count = p.offsets[task + 1] - begin;
  __shared__ float q[32 * kMaxDk];
  LoadScaledQuery(p.q + i * p.ldq + head, dh, q);
  WarpAttend(
      q, dh, count,
      [&](int64_t r) {
        return KeyValueRows{p.keys[begin + r] + head, p.values[begin + r] + head};
      },
      p.out + i * p.ldo + head);
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
