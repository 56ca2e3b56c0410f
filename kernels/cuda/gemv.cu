#include "kernels/cuda/gemv.h"

#include <cstdint>

namespace mnemo::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;
constexpr int kMaxIn = 12288;  // x in shared memory: 48 KB

__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const float* __restrict__ w, const float* __restrict__ x,
               const float* __restrict__ bias, float* __restrict__ y, int64_t out, int64_t in) {
  extern __shared__ float4 xs[];  // in / 4
  const int64_t in4 = in / 4;
  for (int64_t i = threadIdx.x; i < in4; i += blockDim.x) xs[i] = reinterpret_cast<const float4*>(x)[i];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  float acc[kRowsPerWarp] = {};
  const float4* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = row0 + r < out ? row0 + r : out - 1;  // clamp: computed, not written
    rows[r] = reinterpret_cast<const float4*>(w + row * in);
  }
#pragma unroll 4
  for (int64_t k = lane; k < in4; k += 32) {
    const float4 xv = xs[k];
    float4 wv[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) wv[r] = __ldg(rows[r] + k);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      acc[r] += wv[r].x * xv.x + wv[r].y * xv.y + wv[r].z * xv.z + wv[r].w * xv.w;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    float v = acc[r];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && row0 + r < out) y[row0 + r] = v + (bias != nullptr ? bias[row0 + r] : 0.0f);
  }
}

}  // namespace

bool GemvSupported(const float* w, const float* x, int64_t in) {
  return in % 4 == 0 && in > 0 && in <= kMaxIn && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t Gemv(const float* w, const float* x, const float* bias, float* y, int64_t out,
                 int64_t in, cudaStream_t stream) {
  if (out == 0) return cudaSuccess;
  if (!GemvSupported(w, x, in)) return cudaErrorInvalidValue;
  constexpr int64_t kRowsPerBlock = kWarps * kRowsPerWarp;
  const unsigned blocks = static_cast<unsigned>((out + kRowsPerBlock - 1) / kRowsPerBlock);
  GemvKernel<<<blocks, kWarps * 32, static_cast<size_t>(in) * sizeof(float), stream>>>(
      w, x, bias, y, out, in);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
