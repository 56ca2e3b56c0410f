// CUDA and cuBLAS errors as absl::Status with the call site. Out-of-memory becomes
// RESOURCE_EXHAUSTED (a server answers it as such); everything else INTERNAL.
#pragma once

#include <cuda_runtime.h>

#include <cublas_v2.h>

#include "absl/status/status.h"

namespace mnemo::engine::cuda {

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line);
absl::Status CublasStatus(cublasStatus_t err, const char* expr, const char* file, int line);

}  // namespace mnemo::engine::cuda

#define MNEMO_CUDA_RETURN_IF_ERROR(expr)                                                    \
  do {                                                                                      \
    const cudaError_t mnemo_cuda_err_ = (expr);                                             \
    if (mnemo_cuda_err_ != cudaSuccess) {                                                   \
      return ::mnemo::engine::cuda::CudaStatus(mnemo_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)

#define MNEMO_CUBLAS_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                          \
    const cublasStatus_t mnemo_cublas_err_ = (expr);                                            \
    if (mnemo_cublas_err_ != CUBLAS_STATUS_SUCCESS) {                                           \
      return ::mnemo::engine::cuda::CublasStatus(mnemo_cublas_err_, #expr, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)
