// One warp's online softmax attention, fed tiles of up to 32 keys (lane r scores key r of the
// tile), shared by the attention kernels whose keys are found per query (sparse, LSH).
#pragma once

#include <cmath>

namespace mnemo::kernels::cuda {

constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kWarpSoftmaxMaxDk = 4;  // d_h ≤ 128: up to 4 output dimensions per lane

// Running max, sum and weighted value sum of one (query, head). Output dimension d = lane + 32·k
// is accumulated by lane `lane`. Every lane of the warp calls every method.
struct WarpSoftmax {
  float max = -INFINITY;
  float sum = 0.0f;
  float acc[kWarpSoftmaxMaxDk] = {0.0f, 0.0f, 0.0f, 0.0f};

  // Adds this lane's key (when `valid`): its logit and its value row (d_h floats).
  __device__ void AddTile(bool valid, float score, const float* vrow, int head_dim) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    if (!valid) score = -INFINITY;
    float tile_max = score;
    for (int o = 16; o > 0; o >>= 1) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarpMask, tile_max, o));
    }
    unsigned live = __ballot_sync(kFullWarpMask, valid);
    if (live == 0) return;
    const float m_new = fmaxf(max, tile_max);
    const float pr = valid ? expf(score - m_new) : 0.0f;
    float tile_sum = pr;
    for (int o = 16; o > 0; o >>= 1) tile_sum += __shfl_xor_sync(kFullWarpMask, tile_sum, o);
    const float alpha = max == -INFINITY ? 0.0f : expf(max - m_new);
    sum = sum * alpha + tile_sum;
#pragma unroll
    for (int k = 0; k < kWarpSoftmaxMaxDk; ++k) acc[k] *= alpha;
    max = m_new;
    const auto row = reinterpret_cast<unsigned long long>(vrow);
    while (live != 0) {
      const int jj = __ffs(static_cast<int>(live)) - 1;
      live &= live - 1;
      const float pj = __shfl_sync(kFullWarpMask, pr, jj);
      const auto* v = reinterpret_cast<const float*>(__shfl_sync(kFullWarpMask, row, jj));
#pragma unroll
      for (int k = 0; k < kWarpSoftmaxMaxDk; ++k) {
        const int d = lane + 32 * k;
        if (d < head_dim) acc[k] += pj * v[d];
      }
    }
  }

  // Whether any key was added.
  __device__ bool empty() const { return sum == 0.0f; }

  // out[0 … d_h): the attention output (zeros when no key was added).
  __device__ void Write(float* out, int head_dim) const {
    const int lane = static_cast<int>(threadIdx.x % 32);
#pragma unroll
    for (int k = 0; k < kWarpSoftmaxMaxDk; ++k) {
      const int d = lane + 32 * k;
      if (d < head_dim) out[d] = sum > 0.0f ? acc[k] / sum : 0.0f;
    }
  }
};

}  // namespace mnemo::kernels::cuda
