// Dtype conversion on the GPU (convert.h): f16 / bf16 weights widened to float32 on the device.
// No CPU twin.
#include <cuda_runtime.h>

#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/convert.h"

namespace mnemo::kernels::cuda {
namespace {

#define MNEMO_CUDA_TRY(expr)                                                            \
  do {                                                                                  \
    cudaError_t err_ = (expr);                                                          \
    if (err_ != cudaSuccess) {                                                          \
      return std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #expr ": " + \
             cudaGetErrorString(err_);                                                  \
    }                                                                                   \
  } while (0)

// ---- kernels ------------------------------------------------------------------------------
__global__ void HalfToFloatKernel(const __half* src, float* dst, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    dst[i] = __half2float(src[i]);
  }
}

__global__ void BFloat16ToFloatKernel(const __nv_bfloat16* src, float* dst, size_t n) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    dst[i] = __bfloat162float(src[i]);
  }
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------
int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

std::string WidenToFloatOnDevice(const uint16_t* src, float* dst, size_t count, bool is_bf16) {
  if (count == 0) return "";
  void* d_src = nullptr;
  float* d_dst = nullptr;
  MNEMO_CUDA_TRY(cudaMalloc(&d_src, count * sizeof(uint16_t)));
  std::string error;
  auto run = [&]() -> std::string {
    MNEMO_CUDA_TRY(cudaMalloc(&d_dst, count * sizeof(float)));
    MNEMO_CUDA_TRY(cudaMemcpy(d_src, src, count * sizeof(uint16_t), cudaMemcpyHostToDevice));
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<size_t>((count + threads - 1) / threads, 4096));
    if (is_bf16) {
      BFloat16ToFloatKernel<<<blocks, threads>>>(static_cast<const __nv_bfloat16*>(d_src), d_dst,
                                                 count);
    } else {
      HalfToFloatKernel<<<blocks, threads>>>(static_cast<const __half*>(d_src), d_dst, count);
    }
    MNEMO_CUDA_TRY(cudaGetLastError());
    MNEMO_CUDA_TRY(cudaMemcpy(dst, d_dst, count * sizeof(float), cudaMemcpyDeviceToHost));
    return "";
  };
  error = run();
  cudaFree(d_dst);
  cudaFree(d_src);
  return error;
}

}  // namespace mnemo::kernels::cuda
