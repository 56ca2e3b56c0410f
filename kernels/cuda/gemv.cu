#include <cstdint>

#include "kernels/cuda/gemv.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRows = 4;  // rows per block: out / 4 blocks, enough to fill the GPU for out ≥ 512

// A block computes kRows outputs; its 256 threads split the `in` dimension (16-byte loads,
// consecutive threads on consecutive addresses), then reduce through shared memory.
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const float* __restrict__ w, const float* __restrict__ x,
               const float* __restrict__ bias, int act, float* __restrict__ y, int64_t out,
               int64_t in) {
  __shared__ float partial[kWarps][kRows];
  const int64_t in4 = in / 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const float4* x4 = reinterpret_cast<const float4*>(x);
  const float4* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r < out ? row0 + r : out - 1;  // clamp: computed, not written
    rows[r] = reinterpret_cast<const float4*>(w + row * in);
  }
  float acc[kRows] = {};
#pragma unroll 4
  for (int64_t k = threadIdx.x; k < in4; k += kWarps * 32) {
    const float4 xv = __ldg(x4 + k);
    float4 wv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) wv[r] = __ldg(rows[r] + k);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      acc[r] += wv[r].x * xv.x + wv[r].y * xv.y + wv[r].z * xv.z + wv[r].w * xv.w;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float v = acc[r];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp][r] = v;
  }
  __syncthreads();
  if (threadIdx.x < kRows && row0 + threadIdx.x < out) {
    float v = 0.0f;
    for (int wi = 0; wi < kWarps; ++wi) v += partial[wi][threadIdx.x];
    v += bias != nullptr ? bias[row0 + threadIdx.x] : 0.0f;
    if (act == 0) v = fmaxf(v, 0.0f);
    if (act == 1) v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    y[row0 + threadIdx.x] = v;
  }
}

}  // namespace

bool GemvSupported(const float* w, const float* x, int64_t in) {
  return in % 4 == 0 && in > 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t Gemv(const float* w, const float* x, const float* bias, int act, float* y, int64_t out,
                 int64_t in, cudaStream_t stream) {
  if (out == 0) return cudaSuccess;
  if (!GemvSupported(w, x, in)) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>((out + kRows - 1) / kRows);
  GemvKernel<<<blocks, kWarps * 32, 0, stream>>>(w, x, bias, act, y, out, in);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
