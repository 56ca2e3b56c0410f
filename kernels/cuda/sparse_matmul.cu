// Pruned-weight products on the GPU (sparse_matmul.h): CSR and 2:4 forms, one warp per output
// row; twin of kernels/cpu/sparse_matmul.
#include <cstdint>

#include "kernels/cuda/sparse_matmul.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kTile = 8;  // input rows accumulated together

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Writes the warp's sums of the tile's `count` rows for output row o (lane 0).
__device__ __forceinline__ void Store(float (&acc)[kTile], int count, int64_t o, int64_t tile,
                                      const float* __restrict__ bias, float* __restrict__ y,
                                      int64_t ldy) {
  const float b = bias != nullptr ? bias[o] : 0.0f;
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const float s = WarpSum(acc[r]);
    if (threadIdx.x % 32 == 0 && r < count) y[(tile + r) * ldy + o] = s + b;
  }
}

template <typename Col>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    CsrKernel(const int64_t* __restrict__ row_start, const Col* __restrict__ cols,
              const float* __restrict__ values, int64_t rows, const float* __restrict__ x,
              int64_t n, int64_t ldx, const float* __restrict__ bias, float* __restrict__ y,
              int64_t ldy) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (o >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t begin = row_start[o], end = row_start[o + 1];
  for (int64_t tile = 0; tile < n; tile += kTile) {
    const int count = static_cast<int>(n - tile < kTile ? n - tile : kTile);
    float acc[kTile] = {};
    for (int64_t k = begin + lane; k < end; k += 32) {
      const float v = values[k];
      const int64_t c = static_cast<int64_t>(cols[k]);
#pragma unroll
      for (int r = 0; r < kTile; ++r) {
        if (r < count) acc[r] += v * x[(tile + r) * ldx + c];
      }
    }
    Store(acc, count, o, tile, bias, y, ldy);
  }
}

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    Sparse24Kernel(const float* __restrict__ values, const uint8_t* __restrict__ meta, int64_t rows,
                   int64_t cols, const float* __restrict__ x, int64_t n, int64_t ldx,
                   const float* __restrict__ bias, float* __restrict__ y, int64_t ldy) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (o >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t groups = cols / 4;
  const float* v = values + o * (cols / 2);
  const uint8_t* m = meta + o * groups;
  for (int64_t tile = 0; tile < n; tile += kTile) {
    const int count = static_cast<int>(n - tile < kTile ? n - tile : kTile);
    float acc[kTile] = {};
    for (int64_t g = lane; g < groups; g += 32) {
      const float2 pair = *reinterpret_cast<const float2*>(v + 2 * g);
      const int bits = m[g];
      const int64_t c0 = 4 * g + (bits & 3), c1 = 4 * g + ((bits >> 2) & 3);
#pragma unroll
      for (int r = 0; r < kTile; ++r) {
        if (r < count) {
          const float* xr = x + (tile + r) * ldx;
          acc[r] += pair.x * xr[c0] + pair.y * xr[c1];
        }
      }
    }
    Store(acc, count, o, tile, bias, y, ldy);
  }
}

unsigned Blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

cudaError_t CsrMatmul(const int64_t* row_start, const uint16_t* col16, const int32_t* col32,
                      const float* values, int64_t rows, const float* x, int64_t n, int64_t ldx,
                      const float* bias, float* y, int64_t ldy, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  if (col16 != nullptr) {
    CsrKernel<uint16_t><<<Blocks(rows), kWarpsPerBlock * 32, 0, stream>>>(
        row_start, col16, values, rows, x, n, ldx, bias, y, ldy);
  } else {
    CsrKernel<int32_t><<<Blocks(rows), kWarpsPerBlock * 32, 0, stream>>>(
        row_start, col32, values, rows, x, n, ldx, bias, y, ldy);
  }
  return cudaGetLastError();
}

cudaError_t Sparse24Matmul(const float* values, const uint8_t* meta, int64_t rows, int64_t cols,
                           const float* x, int64_t n, int64_t ldx, const float* bias, float* y,
                           int64_t ldy, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  Sparse24Kernel<<<Blocks(rows), kWarpsPerBlock * 32, 0, stream>>>(values, meta, rows, cols, x, n,
                                                                   ldx, bias, y, ldy);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
