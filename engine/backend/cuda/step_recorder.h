// StepRecorder: the CUDA backend's recorded steps (Backend::BeginStep): per key, a measuring
// first run, a second run captured into a CUDA graph over an arena and pinned staging of that
// size, and graph replays afterwards. Callers hold the device context's lock (Begin holds it
// until End or Abort).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "engine/backend/cuda/device_context.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine::cuda {

// Fingerprint words: a pointer's address, or any integral or enum value.
inline uint64_t Addr(const void* p) { return reinterpret_cast<uint64_t>(p); }
template <typename T>
uint64_t U(T v) {
  return static_cast<uint64_t>(v);
}

// The first time a key is seen the step runs eagerly and measures the device memory and pinned
// staging it needs; the second time it runs against a per-key arena of that size while the
// stream is captured into a CUDA graph; from then on the ops only do their host part (allocate
// from the arena in the same order, so every address repeats, and write the step's host inputs
// into the pinned staging the graph copies from) and End launches the graph. Every op adds its
// launch parameters to a fingerprint; a replay whose fingerprint differs from the recording's runs
// its ops eagerly instead (and the key is no longer replayed), so a broken promise costs speed,
// never correctness.
class StepRecorder {
 public:
  explicit StepRecorder(DeviceContext* context);
  StepRecorder(const StepRecorder&) = delete;
  StepRecorder& operator=(const StepRecorder&) = delete;
  ~StepRecorder();  // abandons a step still open

  // Backend::BeginStep / EndStep / AbortStep.
  absl::Status Begin(uint64_t key);
  absl::Status End();
  void Abort();

  // Capturing or replaying: allocations come from the arena, host inputs from pinned staging.
  bool InGraphStep() const { return mode_ == Mode::kCapture || mode_ == Mode::kReplay; }

  // Mixes an op's launch parameters into the step's fingerprint.
  void Note(std::initializer_list<uint64_t> values) {
    for (uint64_t v : values) {
      fingerprint_ ^= v + 0x9e3779b97f4a7c15ULL + (fingerprint_ << 6) + (fingerprint_ >> 2);
    }
  }

  // Runs an op's device work now (eager, measure, capture) or keeps it for End (replay).
  absl::Status Launch(std::function<absl::Status()> work);

  // A tensor from the pool, or from the step's arena (caller holds the lock).
  absl::StatusOr<Tensor> NewTensor(DType dtype, std::vector<int64_t> shape);

  // A device copy of small host data for one op. In a recorded step it lands in the step's
  // pinned staging; the graph's first node copies all of it to the device mirror at once.
  absl::StatusOr<Tensor> Stage(const void* data, size_t bytes);

  // A host copy of device tensor `t`: at once outside a recorded step; inside one, filled by End
  // (the graph copies into pinned staging, End copies on to the returned tensor).
  absl::StatusOr<Tensor> CopyToHost(const Tensor& t);

 private:
  enum class Mode {
    kEager,    // ops run as they come (no step, or a key that is not recorded)
    kMeasure,  // first run of a key: eager, counting arena and staging bytes
    kCapture,  // second run: ops run from the arena while the stream is captured
    kReplay,   // later runs: host parts only; End launches the graph
  };
  struct Recording;  // one key's arena, pinned staging and graph
  struct PostCopy {
    const void* pinned;
    void* host;
    size_t bytes;
  };

  absl::Status RunDeferred();
  // Makes the captured graph start with one copy of all the step's staged host inputs (pinned)
  // to their device mirror, instead of one small copy per op.
  absl::Status PrependStageCopy(cudaGraph_t graph);
  absl::Status GraphLaunch(Recording& rec);

  DeviceContext& ctx_;
  // Step state (guarded by step_lock_, held from Begin to End).
  std::unique_lock<std::recursive_mutex> step_lock_;
  Mode mode_ = Mode::kEager;
  Recording* rec_ = nullptr;
  size_t device_used_ = 0;
  size_t stage_used_ = 0;
  size_t output_used_ = 0;
  uint64_t fingerprint_ = 0;
  bool capture_failed_ = false;
  std::vector<std::function<absl::Status()>> deferred_;
  std::vector<PostCopy> post_copies_;
  std::map<uint64_t, std::unique_ptr<Recording>> recordings_;
};

}  // namespace mnemo::engine::cuda
