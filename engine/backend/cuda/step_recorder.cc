// StepRecorder (step_recorder.h): measuring a key's first run, capturing its second into a CUDA
// graph over a per-key arena and pinned staging, and replaying the graph afterwards.
#include "engine/backend/cuda/step_recorder.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_status.h"

namespace mnemo::engine::cuda {
namespace {

// Arena allocations are 256-byte aligned, as the pool's are.
size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0); }

// Recordings kept per backend (one per decode batch size in practice); later keys run eagerly.
constexpr size_t kMaxRecordings = 16;

}  // namespace

// One key's recorded step: its arena, pinned staging and graph.
struct StepRecorder::Recording {
  enum class State { kNew, kMeasured, kRecorded, kFailed };
  State state = State::kNew;
  size_t device_bytes = 0;       // arena: every tensor the step allocates
  size_t stage_bytes = 0;        // host inputs (ids, attention work lists, append slots)
  size_t output_bytes = 0;       // CopyToHost results
  std::shared_ptr<void> device;  // arena; tensors of replays alias it
  std::shared_ptr<void> stage;  // device mirror of `pinned_stage`, filled by the graph's first node
  void* pinned_stage = nullptr;
  void* pinned_output = nullptr;
  cudaGraphExec_t exec = nullptr;
  uint64_t fingerprint = 0;

  Recording() = default;
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;
  ~Recording() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (pinned_stage != nullptr) cudaFreeHost(pinned_stage);
    if (pinned_output != nullptr) cudaFreeHost(pinned_output);
  }
};

StepRecorder::StepRecorder(DeviceContext* context) : ctx_(*context) {}

StepRecorder::~StepRecorder() {
  if (mode_ != Mode::kEager || step_lock_.owns_lock()) Abort();
}

absl::Status StepRecorder::Begin(uint64_t key) {
  std::unique_lock<std::recursive_mutex> lock(ctx_.mutex());
  if (step_lock_.owns_lock()) return absl::FailedPreconditionError("steps do not nest");
  MNEMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx_.ordinal()));
  rec_ = nullptr;
  mode_ = Mode::kEager;
  auto it = recordings_.find(key);
  if (it == recordings_.end() && recordings_.size() < kMaxRecordings) {
    it = recordings_.emplace(key, std::make_unique<Recording>()).first;
  }
  device_used_ = stage_used_ = output_used_ = 0;
  fingerprint_ = 0x9e3779b97f4a7c15ULL;
  post_copies_.clear();
  deferred_.clear();
  capture_failed_ = false;
  if (it != recordings_.end()) {
    Recording& rec = *it->second;
    switch (rec.state) {
      case Recording::State::kNew:
        mode_ = Mode::kMeasure;
        break;
      case Recording::State::kMeasured: {
        // The arena and staging are allocated before the capture starts (not in the graph).
        ASSIGN_OR_RETURN(rec.device, ctx_.Allocate(rec.device_bytes));
        ASSIGN_OR_RETURN(rec.stage, ctx_.Allocate(rec.stage_bytes));
        if (rec.pinned_stage == nullptr) {
          MNEMO_CUDA_RETURN_IF_ERROR(
              cudaMallocHost(&rec.pinned_stage, std::max<size_t>(rec.stage_bytes, 256)));
        }
        if (rec.pinned_output == nullptr) {
          MNEMO_CUDA_RETURN_IF_ERROR(
              cudaMallocHost(&rec.pinned_output, std::max<size_t>(rec.output_bytes, 256)));
        }
        MNEMO_CUDA_RETURN_IF_ERROR(
            cudaStreamBeginCapture(ctx_.stream(), cudaStreamCaptureModeThreadLocal));
        mode_ = Mode::kCapture;
        break;
      }
      case Recording::State::kRecorded:
        mode_ = Mode::kReplay;
        break;
      case Recording::State::kFailed:
        break;
    }
    rec_ = &rec;
  }
  step_lock_ = std::move(lock);
  return absl::OkStatus();
}

absl::Status StepRecorder::End() {
  if (!step_lock_.owns_lock()) return absl::FailedPreconditionError("EndStep without BeginStep");
  const Mode mode = mode_;
  Recording* rec = rec_;
  absl::Status status = absl::OkStatus();
  if (mode == Mode::kMeasure) {
    rec->device_bytes = device_used_;
    rec->stage_bytes = stage_used_;
    rec->output_bytes = output_used_;
    rec->state = Recording::State::kMeasured;
  } else if (mode == Mode::kCapture) {
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(ctx_.stream(), &graph);
    bool recorded = false;
    if (end == cudaSuccess && !capture_failed_ && graph != nullptr &&
        PrependStageCopy(graph).ok()) {
      recorded = cudaGraphInstantiate(&rec->exec, graph, 0) == cudaSuccess;
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // a failed capture is handled by running the ops eagerly
    if (recorded) {
      rec->fingerprint = fingerprint_;
      rec->state = Recording::State::kRecorded;
      status = GraphLaunch(*rec);
    } else {
      rec->state = Recording::State::kFailed;
      status = RunDeferred();
    }
  } else if (mode == Mode::kReplay) {
    if (fingerprint_ == rec->fingerprint) {
      status = GraphLaunch(*rec);
    } else {
      rec->state = Recording::State::kFailed;  // the step changed shape: no more replays
      status = RunDeferred();
    }
  }
  mode_ = Mode::kEager;
  if (status.ok()) {
    const cudaError_t err = cudaStreamSynchronize(ctx_.stream());
    if (err != cudaSuccess) status = cuda::CudaStatus(err, "step", __FILE__, __LINE__);
  }
  if (status.ok()) {
    for (const PostCopy& c : post_copies_) std::memcpy(c.host, c.pinned, c.bytes);
  }
  post_copies_.clear();
  deferred_.clear();
  rec_ = nullptr;
  step_lock_.unlock();
  return status;
}

void StepRecorder::Abort() {
  if (mode_ == Mode::kCapture) {
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(ctx_.stream(), &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    rec_->state = Recording::State::kFailed;
  }
  mode_ = Mode::kEager;
  rec_ = nullptr;
  post_copies_.clear();
  deferred_.clear();
  if (step_lock_.owns_lock()) step_lock_.unlock();
}

absl::Status StepRecorder::Launch(std::function<absl::Status()> work) {
  if (mode_ == Mode::kReplay) {
    deferred_.push_back(std::move(work));
    return absl::OkStatus();
  }
  if (mode_ != Mode::kCapture) return work();
  deferred_.push_back(work);  // kept in case the capture fails and the step runs eagerly
  if (!work().ok()) capture_failed_ = true;
  return absl::OkStatus();
}

absl::Status StepRecorder::RunDeferred() {
  for (auto& work : deferred_) RETURN_IF_ERROR(work());
  return absl::OkStatus();
}

absl::Status StepRecorder::PrependStageCopy(cudaGraph_t graph) {
  if (stage_used_ == 0) return absl::OkStatus();
  size_t count = 0;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphGetRootNodes(graph, nullptr, &count));
  std::vector<cudaGraphNode_t> roots(count);
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphGetRootNodes(graph, roots.data(), &count));
  cudaGraphNode_t copy = nullptr;
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphAddMemcpyNode1D(&copy, graph, nullptr, 0, rec_->stage.get(),
                                                      rec_->pinned_stage, stage_used_,
                                                      cudaMemcpyHostToDevice));
  for (cudaGraphNode_t root : roots) {
    MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphAddDependencies(graph, &copy, &root, nullptr, 1));
  }
  return absl::OkStatus();
}

absl::Status StepRecorder::GraphLaunch(Recording& rec) {
  MNEMO_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(rec.exec, ctx_.stream()));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> StepRecorder::NewTensor(DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("negative dimension");
    n *= d;
  }
  const size_t bytes = static_cast<size_t>(n) * DTypeSize(dtype);
  if (InGraphStep()) {
    const size_t need = Align256(bytes);
    if (device_used_ + need > rec_->device_bytes) {
      return absl::InternalError("a recorded step allocated more than its first run measured");
    }
    void* p = static_cast<char*>(rec_->device.get()) + device_used_;
    device_used_ += need;
    return Tensor(std::shared_ptr<void>(rec_->device, p), dtype, Device::kCuda, std::move(shape));
  }
  if (mode_ == Mode::kMeasure) device_used_ += Align256(bytes);
  ASSIGN_OR_RETURN(std::shared_ptr<void> buffer, ctx_.Allocate(bytes));
  return Tensor(std::move(buffer), dtype, Device::kCuda, std::move(shape));
}

absl::StatusOr<Tensor> StepRecorder::Stage(const void* data, size_t bytes) {
  const int64_t words = static_cast<int64_t>((bytes + 3) / 4);
  if (!InGraphStep()) {
    ASSIGN_OR_RETURN(Tensor t, NewTensor(DType::kI32, {words}));
    if (mode_ == Mode::kMeasure) stage_used_ += Align256(bytes);
    RETURN_IF_ERROR(ctx_.Upload(data, bytes, t.raw()));
    return t;
  }
  const size_t offset = stage_used_;
  if (offset + Align256(bytes) > rec_->stage_bytes) {
    return absl::InternalError("a recorded step staged more than its first run measured");
  }
  stage_used_ += Align256(bytes);
  void* pinned = static_cast<char*>(rec_->pinned_stage) + offset;
  void* dst = static_cast<char*>(rec_->stage.get()) + offset;
  std::memcpy(pinned, data, bytes);
  Note({13, offset, bytes});
  // Not captured (the prepended copy does it); kept for a step that falls back to eager.
  deferred_.emplace_back([this, dst, pinned, bytes] {
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, pinned, bytes, cudaMemcpyHostToDevice, ctx_.stream()));
    return absl::OkStatus();
  });
  return Tensor(std::shared_ptr<void>(rec_->stage, dst), DType::kI32, Device::kCuda, {words});
}

absl::StatusOr<Tensor> StepRecorder::CopyToHost(const Tensor& t) {
  Tensor host = Tensor::Empty(t.dtype(), t.shape());
  if (!InGraphStep()) {
    if (mode_ == Mode::kMeasure) output_used_ += Align256(t.bytes());
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host.raw(), t.raw(), t.bytes(), cudaMemcpyDeviceToHost, ctx_.stream()));
    MNEMO_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream()));
    return host;
  }
  // In a recorded step: into pinned staging by the graph, to `host` by EndStep.
  if (output_used_ + Align256(t.bytes()) > rec_->output_bytes) {
    return absl::InternalError("a recorded step copied out more than its first run measured");
  }
  void* pinned = static_cast<char*>(rec_->pinned_output) + output_used_;
  output_used_ += Align256(t.bytes());
  const void* src = t.raw();
  const size_t bytes = t.bytes();
  Note({2, Addr(src), bytes});
  post_copies_.push_back({pinned, host.raw(), bytes});
  RETURN_IF_ERROR(Launch([this, pinned, src, bytes] {
    MNEMO_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(pinned, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
    return absl::OkStatus();
  }));
  return host;
}

}  // namespace mnemo::engine::cuda
