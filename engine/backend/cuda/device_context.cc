// The per-device context every CUDA backend shares (device_context.h): stream, cuBLAS handle,
// stream-ordered memory pool and pinned staging slots, created on first use.
#include "engine/backend/cuda/device_context.h"

#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_status.h"

namespace mnemo::engine::cuda {

absl::StatusOr<DeviceContext*> DeviceContext::Get(int ordinal) {
  static std::mutex registry_mutex;
  static auto* registry = new std::map<int, DeviceContext*>();  // never freed: see header
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry->find(ordinal);
  if (it != registry->end()) return it->second;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    count = 0;
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", ordinal, " not present (", count, " device(s) visible)"));
  }
  auto* context = new DeviceContext(ordinal);
  if (absl::Status status = context->Init(); !status.ok()) {
    delete context;
    return status;
  }
  (*registry)[ordinal] = context;
  return context;
}

absl::Status DeviceContext::Init() {
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, ordinal_));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));
  // Plain float32 products (the default math mode uses no TF32): the f32 path is the oracle and
  // must match the CPU.
  MNEMO_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool_, ordinal_));
  uint64_t keep_all = UINT64_MAX;
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep_all));
  // A fixed cuBLAS workspace, so that products recorded into a CUDA graph allocate nothing.
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  MNEMO_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  staging_.resize(kStagingSlots);
  for (StagingSlot& slot : staging_) {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<void>> DeviceContext::Allocate(size_t bytes) {
  void* ptr = nullptr;
  // Round up so row views and vector loads stay aligned; never zero bytes.
  const size_t rounded = (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMallocFromPoolAsync(&ptr, rounded, pool_, stream_));
  cudaStream_t stream = stream_;
  return std::shared_ptr<void>(ptr, [stream](void* p) { cudaFreeAsync(p, stream); });
}

absl::Status DeviceContext::Upload(const void* src, size_t bytes, void* dst) {
  if (bytes == 0) return absl::OkStatus();
  StagingSlot& slot = staging_[next_slot_];
  next_slot_ = (next_slot_ + 1) % kStagingSlots;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(slot.done));  // its previous copy is done
  if (slot.capacity < bytes) {
    if (slot.host != nullptr) MNEMO_CUDA_RETURN_IF_ERROR(cudaFreeHost(slot.host));
    slot.host = nullptr;
    slot.capacity = 0;
    const size_t capacity = std::max<size_t>(bytes, 64 * 1024);
    MNEMO_CUDA_RETURN_IF_ERROR(cudaMallocHost(&slot.host, capacity));
    slot.capacity = capacity;
  }
  std::memcpy(slot.host, src, bytes);
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, stream_));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(slot.done, stream_));
  return absl::OkStatus();
}

absl::Status DeviceContext::MemoryInfo(size_t* total, size_t* free) const {
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(free, total));
  uint64_t reserved = 0, used = 0;
  MNEMO_CUDA_RETURN_IF_ERROR(
      cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved));
  MNEMO_CUDA_RETURN_IF_ERROR(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &used));
  *free += static_cast<size_t>(reserved - used);
  return absl::OkStatus();
}

}  // namespace mnemo::engine::cuda
