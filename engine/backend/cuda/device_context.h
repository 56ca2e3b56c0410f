// DeviceContext: what every CUDA backend on one GPU shares: the stream all of them enqueue on,
// the cuBLAS handle, the stream-ordered memory pool (the device's default pool with its release
// threshold raised, so freed blocks stay cached and the hot path never reaches cudaMalloc), and
// pinned host staging for the small per-call uploads (token ids, attention work lists).
//
// One context per device, created on first use and kept for the process lifetime: tensors free
// their memory through it, possibly after every backend that allocated them is gone. Calls are
// serialised by `mutex()` (recursive: a recorded step holds it from BeginStep to EndStep, so no
// other thread's work lands in a graph being captured); the GPU runs one stream, so concurrency
// comes from batching.
//
// Threading: Get is safe from any thread (the registry has its own lock). Allocate and Upload
// expect the caller to hold mutex(), which guards the staging slots (staging_, next_slot_) and
// the order of work on stream_ and the cuBLAS handle; the other members are set once by Init.
// mutex_ carries no thread-safety annotation: it is re-entered and held across calls (BeginStep
// to EndStep, through a std::unique_lock member), which clang's analysis cannot express.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <cublas_v2.h>

#include "absl/status/statusor.h"

namespace mnemo::engine::cuda {

class DeviceContext {
 public:
  // The context of device `ordinal` (UNAVAILABLE when there is no such device).
  static absl::StatusOr<DeviceContext*> Get(int ordinal);

  int ordinal() const { return ordinal_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  std::recursive_mutex& mutex() { return mutex_; }
  int multiprocessors() const { return multiprocessors_; }

  // `bytes` of device memory from the pool, freed (stream-ordered) when the last owner drops it.
  absl::StatusOr<std::shared_ptr<void>> Allocate(size_t bytes);
  // Copies `bytes` from host `src` to device `dst` through pinned staging, asynchronously: the
  // host buffer may be reused as soon as this returns.
  absl::Status Upload(const void* src, size_t bytes, void* dst);
  // Total and free device memory, counting blocks the pool caches unused as free.
  absl::Status MemoryInfo(size_t* total, size_t* free) const;

 private:
  explicit DeviceContext(int ordinal) : ordinal_(ordinal) {}
  absl::Status Init();

  // Pinned staging slots used round-robin; a slot is reused only after the copy that last read
  // it has completed (its event), so uploads never wait unless the GPU is far behind.
  struct StagingSlot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  static constexpr int kStagingSlots = 64;
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

  int ordinal_;
  int multiprocessors_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  void* cublas_workspace_ = nullptr;
  std::vector<StagingSlot> staging_;
  int next_slot_ = 0;
  std::recursive_mutex mutex_;
};

}  // namespace mnemo::engine::cuda
