// CUDA and cuBLAS error codes as absl::Status values carrying the failing call and its
// file:line (cuda_status.h).
#include "engine/backend/cuda/cuda_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace mnemo::engine::cuda {

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  // The runtime also records a failed call as the thread's "last error", which the next launch
  // check (cudaGetLastError) would report again: it is handled here, so clear it (non-sticky
  // errors only; a sticky one keeps failing every call, as it must).
  cudaGetLastError();
  const std::string message = absl::StrCat(file, ":", line, ": ", expr, ": ", cudaGetErrorName(err),
                                           " (", cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ||
      err == cudaErrorInvalidDevice) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

absl::Status CublasStatus(cublasStatus_t err, const char* expr, const char* file, int line) {
  const std::string message =
      absl::StrCat(file, ":", line, ": ", expr, ": ", cublasGetStatusName(err), " (",
                   cublasGetStatusString(err), ")");
  if (err == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace mnemo::engine::cuda
