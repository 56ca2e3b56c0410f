// Row-wise and element-wise kernels of the CUDA backend (elementwise.h); twin of
// kernels/cpu/elementwise.
#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/elementwise.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Grid-stride launch size for n elements (capped: the loops stride over the rest).
int Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

__device__ float BlockSum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? shared[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // `shared` is reused by the next call
  return v;
}

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float Widen(__half v) { return __half2float(v); }

template <typename T>
__global__ void EmbeddingKernel(const T* table, const int32_t* ids, int64_t dim, float scale,
                                float* y) {
  const int64_t n = blockIdx.x;
  const T* src = table + static_cast<int64_t>(ids[n]) * dim;
  float* dst = y + n * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = Widen(src[i]) * scale;
}

__global__ void NarrowKernel(const float* src, uint16_t* dst, int64_t n, bool to_bf16) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = to_bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(src[i]))
                     : __half_as_ushort(__float2half_rn(src[i]));
  }
}

// LayerNorm of one row whose elements this thread strides over and whose sum (over this
// thread's elements) is `sum`: block-reduced mean, centred variance, then the affine output.
__device__ void NormalizeRow(const float* row, float sum, const float* gamma, const float* beta,
                             float eps, float* out, int64_t cols, float* shared) {
  const float mean = BlockSum(sum, shared) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float c = row[i] - mean;
    sq += c * c;
  }
  const float inv = rsqrtf(BlockSum(sq, shared) / static_cast<float>(cols) + eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    out[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
  }
}

__global__ void LayerNormKernel(const float* x, const float* gamma, const float* beta, float eps,
                                float* y, int64_t cols) {
  __shared__ float shared[32];
  const float* row = x + blockIdx.x * cols;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) sum += row[i];
  NormalizeRow(row, sum, gamma, beta, eps, y + blockIdx.x * cols, cols, shared);
}

__global__ void AddLayerNormKernel(float* x, const float* delta, const float* gamma,
                                   const float* beta, float eps, float* y, int64_t cols) {
  __shared__ float shared[32];
  float* row = x + blockIdx.x * cols;
  const float* d = delta + blockIdx.x * cols;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = row[i] + d[i];
    row[i] = v;  // each thread rereads only what it wrote: no barrier needed
    sum += v;
  }
  NormalizeRow(row, sum, gamma, beta, eps, y + blockIdx.x * cols, cols, shared);
}

__device__ float Activate(float v, Activation act) {
  switch (act) {
    case Activation::kRelu:
      return fmaxf(v, 0.0f);
    case Activation::kGelu:
      return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case Activation::kSilu:
      return v / (1.0f + expf(-v));
    default:  // gelu_tanh
      return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
  }
}

__global__ void RmsNormKernel(const float* x, const float* gamma, float eps, float* y,
                              int64_t cols) {
  __shared__ float shared[32];
  const float* row = x + blockIdx.x * cols;
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) sq += row[i] * row[i];
  const float inv = rsqrtf(BlockSum(sq, shared) / static_cast<float>(cols) + eps);
  float* out = y + blockIdx.x * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[i] = row[i] * inv * gamma[i];
}

__global__ void GatedActivationKernel(const float* x, Activation act, float* y, int64_t n,
                                      int64_t cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float* row = x + r * 2 * cols;
    y[i] = Activate(row[c], act) * row[cols + c];
  }
}

__global__ void BiasActivationKernel(float* y, const float* bias, int64_t n, int64_t cols,
                                     Activation act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = Activate(y[i] + bias[i % cols], act);
  }
}

__global__ void AddKernel(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = a[i] + b[i];
  }
}

__global__ void FillRowsKernel(const float* row, float* dst, int64_t n, int64_t cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = row[i % cols];
  }
}

__global__ void GatherRowsKernel(const float* x, const int64_t* rows, int64_t cols, float* y) {
  const float* src = x + rows[blockIdx.x] * cols;
  float* dst = y + blockIdx.x * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

__global__ void CopyRowsIndirectKernel(const float* const* src, float* const* dst, int64_t cols) {
  const float* s = src[blockIdx.x];
  float* d = dst[blockIdx.x];
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

}  // namespace

cudaError_t EmbeddingGather(const void* table, WeightType table_type, const int32_t* ids,
                            int64_t count, int64_t dim, float scale, float* y,
                            cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(count);
  switch (table_type) {
    case WeightType::kF32:
      EmbeddingKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(table), ids, dim,
                                                       scale, y);
      break;
    case WeightType::kBF16:
      EmbeddingKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(table),
                                                       ids, dim, scale, y);
      break;
    case WeightType::kF16:
      EmbeddingKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const __half*>(table), ids, dim,
                                                       scale, y);
      break;
  }
  return cudaGetLastError();
}

cudaError_t NarrowFloat(const float* src, uint16_t* dst, int64_t n, bool to_bf16,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  NarrowKernel<<<Blocks(n), kThreads, 0, stream>>>(src, dst, n, to_bf16);
  return cudaGetLastError();
}

cudaError_t LayerNorm(const float* x, const float* gamma, const float* beta, float eps, float* y,
                      int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  LayerNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, gamma, beta, eps, y,
                                                                        cols);
  return cudaGetLastError();
}

cudaError_t AddLayerNorm(float* x, const float* delta, const float* gamma, const float* beta,
                         float eps, float* y, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  AddLayerNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, delta, gamma, beta,
                                                                           eps, y, cols);
  return cudaGetLastError();
}

cudaError_t RmsNorm(const float* x, const float* gamma, float eps, float* y, int64_t rows,
                    int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, gamma, eps, y, cols);
  return cudaGetLastError();
}

cudaError_t GatedActivation(const float* x, Activation act, float* y, int64_t rows, int64_t cols,
                            cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  GatedActivationKernel<<<Blocks(n), kThreads, 0, stream>>>(x, act, y, n, cols);
  return cudaGetLastError();
}

cudaError_t BiasActivation(float* y, const float* bias, int64_t rows, int64_t cols, Activation act,
                           cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  BiasActivationKernel<<<Blocks(n), kThreads, 0, stream>>>(y, bias, n, cols, act);
  return cudaGetLastError();
}

cudaError_t Add(const float* a, const float* b, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(a, b, y, n);
  return cudaGetLastError();
}

cudaError_t FillRows(const float* row, float* dst, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  FillRowsKernel<<<Blocks(n), kThreads, 0, stream>>>(row, dst, n, cols);
  return cudaGetLastError();
}

cudaError_t GatherRows(const float* x, const int64_t* rows, int64_t count, int64_t cols, float* y,
                       cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  GatherRowsKernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(x, rows, cols, y);
  return cudaGetLastError();
}

cudaError_t CopyRowsIndirect(const float* const* src, float* const* dst, int64_t count,
                             int64_t cols, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  CopyRowsIndirectKernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(src, dst, cols);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
