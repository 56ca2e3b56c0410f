// The decode matrix-vector product (gemv.h): float32 or 16-bit weights read once with 16-byte
// loads, bias and activation fused.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/gemv.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRows = 4;  // rows per block: out / 4 blocks, enough to fill the GPU for out ≥ 512

template <typename T>
__device__ __forceinline__ float2 Widen2(const T& v);
template <>
__device__ __forceinline__ float2 Widen2(const __nv_bfloat162& v) {
  return __bfloat1622float2(v);
}
template <>
__device__ __forceinline__ float2 Widen2(const __half2& v) {
  return __half22float2(v);
}

// Loads of 16 bytes: 4 floats, or 8 bf16/f16 values.
template <typename W>
struct Chunk;
template <>
struct Chunk<float> {
  static constexpr int kValues = 4;
  __device__ static float Dot(const uint4& raw, const float4* x) {
    const float4 w = *reinterpret_cast<const float4*>(&raw);
    const float4 v = x[0];
    return w.x * v.x + w.y * v.y + w.z * v.z + w.w * v.w;
  }
};
template <typename Pair>
struct Chunk16 {
  static constexpr int kValues = 8;
  __device__ static float Dot(const uint4& raw, const float4* x) {
    const Pair* p = reinterpret_cast<const Pair*>(&raw);
    const float2 a = Widen2(p[0]), b = Widen2(p[1]), c = Widen2(p[2]), d = Widen2(p[3]);
    const float4 x0 = x[0], x1 = x[1];
    return a.x * x0.x + a.y * x0.y + b.x * x0.z + b.y * x0.w + c.x * x1.x + c.y * x1.y +
           d.x * x1.z + d.y * x1.w;
  }
};
template <>
struct Chunk<__nv_bfloat16> : Chunk16<__nv_bfloat162> {};
template <>
struct Chunk<__half> : Chunk16<__half2> {};

// A block computes kRows outputs; its 256 threads split the `in` dimension (16-byte loads,
// consecutive threads on consecutive addresses), then reduce through shared memory.
template <typename W>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const W* __restrict__ w, const float* __restrict__ x, const float* __restrict__ bias,
               int act, float* __restrict__ y, int64_t out, int64_t in) {
  constexpr int kValues = Chunk<W>::kValues;
  __shared__ float partial[kWarps][kRows];
  const int64_t chunks = in / kValues;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const uint4* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r < out ? row0 + r : out - 1;  // clamp: computed, not written
    rows[r] = reinterpret_cast<const uint4*>(w + row * in);
  }
  float acc[kRows] = {};
#pragma unroll 4
  for (int64_t k = threadIdx.x; k < chunks; k += kWarps * 32) {
    const float4* xv = reinterpret_cast<const float4*>(x) + k * (kValues / 4);
    uint4 wv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) wv[r] = __ldg(rows[r] + k);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += Chunk<W>::Dot(wv[r], xv);
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

template <typename W>
cudaError_t Launch(const void* w, const float* x, const float* bias, int act, float* y, int64_t out,
                   int64_t in, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((out + kRows - 1) / kRows);
  GemvKernel<W>
      <<<blocks, kWarps * 32, 0, stream>>>(static_cast<const W*>(w), x, bias, act, y, out, in);
  return cudaGetLastError();
}

}  // namespace

bool GemvSupported(WeightType type, const void* w, const float* x, int64_t in) {
  const int64_t values = type == WeightType::kF32 ? 4 : 8;
  return in % values == 0 && in > 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t Gemv(WeightType type, const void* w, const float* x, const float* bias,
                 std::optional<Activation> activation, float* y, int64_t out, int64_t in,
                 cudaStream_t stream) {
  if (out == 0) return cudaSuccess;
  // The kernel's code: −1 none, 0 ReLU, 1 GELU.
  const int act = !activation ? -1 : (*activation == Activation::kRelu ? 0 : 1);
  if (!GemvSupported(type, w, x, in)) return cudaErrorInvalidValue;
  switch (type) {
    case WeightType::kF32:
      return Launch<float>(w, x, bias, act, y, out, in, stream);
    case WeightType::kBF16:
      return Launch<__nv_bfloat16>(w, x, bias, act, y, out, in, stream);
    case WeightType::kF16:
      return Launch<__half>(w, x, bias, act, y, out, in, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mnemo::kernels::cuda
