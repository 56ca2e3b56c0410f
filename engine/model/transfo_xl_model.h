// TransfoXlModel: a decoder-only Transformer-XL (relative positions, segment-level memory) run
// on a Backend. One Forward call advances a ragged batch of sessions, each with its own state,
// by a prefill segment of any length or a single decode token.
//
// Threading: a loaded model is immutable; Forward may run concurrently from several threads as
// long as no SessionState is used by two calls at once.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/attention/attention_layer.h"
#include "engine/backend/backend.h"
#include "engine/memory/session_state.h"
#include "engine/model/model_config.h"
#include "engine/model/model_options.h"
#include "engine/model/sequence_input.h"
#include "engine/model/transfo_xl_weights.h"

namespace mnemo::engine {

class TransfoXlModel {
 public:
  // Loads `<dir>/config.json` and `<dir>/model.safetensors` onto the CPU backend.
  static absl::StatusOr<std::unique_ptr<TransfoXlModel>> Load(const std::string& dir);
  // Loads onto `backend` (weights are copied to its device; the host copy is released).
  static absl::StatusOr<std::unique_ptr<TransfoXlModel>> Load(const std::string& dir,
                                                              std::unique_ptr<Backend> backend,
                                                              const ModelOptions& options = {});
  // Builds a model from already-loaded host weights (tests, converters).
  static absl::StatusOr<std::unique_ptr<TransfoXlModel>> Create(ModelConfig config,
                                                                TransfoXlWeights weights,
                                                                std::unique_ptr<Backend> backend,
                                                                const ModelOptions& options = {});
  // The weight matrices that run from a sparse form: (bytes of that form, density) each.
  std::vector<std::pair<int64_t, double>> SparseWeightSummary() const;

  const ModelConfig& config() const { return config_; }
  // The weights on the model's device (layers of one ALBERT group share their buffers).
  const TransfoXlWeights& weights() const { return weights_; }
  Backend& backend() const { return *backend_; }
  // The dtype of the sessions' key/value rings (ModelOptions::session_memory).
  DType session_memory() const { return session_memory_; }

  // A fresh session state on the model's device: memory of mem_len projected zero rows
  // ("zeros") or empty ("empty"). RESOURCE_EXHAUSTED when the device is out of memory.
  absl::StatusOr<SessionState> NewState() const;
  // Bytes of one session's state (exact; equals NewState()->bytes()), and of its layer l's part.
  size_t StateBytes() const;
  size_t LayerStateBytes(int64_t l) const;
  // A deep copy of `state` on the model's device (fork / snapshot).
  absl::StatusOr<SessionState> CloneState(const SessionState& state) const;
  // Makes *dst a deep copy of `state`, reusing dst's buffers where their shapes match (repeated
  // snapshots, e.g. once per speculative pass, then allocate nothing).
  absl::Status CopyStateInto(const SessionState& state, SessionState* dst) const;
  // A host copy of a state of this model (offload); StateFromHost brings it back to the model's
  // device. The round trip is exact.
  absl::StatusOr<SessionState> StateToHost(const SessionState& state) const;
  absl::StatusOr<SessionState> StateFromHost(const SessionState& host_state) const;

  // Runs the batch. On INVALID_ARGUMENT (a token id outside the vocabulary, an empty sequence, a
  // state from another model, the same state twice) no state is modified. `logits` receives a
  // float32 host tensor shaped as LogitsMode says (untouched for kNone).
  absl::Status Forward(const std::vector<SequenceInput>& batch, LogitsMode mode, Tensor* logits);

  // Layer l's attention kind, bound to the weights on the model's device.
  const AttentionLayer& attention(int64_t l) const { return *attention_[static_cast<size_t>(l)]; }

  // Whether any layer passes or adds RealFormer residual scores (token_by_token refuses these).
  bool UsesResidualAttention() const;

  // Whether `state` has this model's shape (layers, memory capacity and width).
  bool StateFits(const SessionState& state) const;

 private:
  TransfoXlModel(ModelConfig config, TransfoXlWeights weights, std::unique_ptr<Backend> backend);
  absl::Status Validate(const std::vector<SequenceInput>& batch) const;
  // Forward after validation: Run, as one recorded step for decode batches.
  absl::Status RunStep(const std::vector<SequenceInput>& batch, LogitsMode mode, Tensor* logits);
  // Forward after validation (inside a recorded step for decode batches).
  absl::Status Run(const std::vector<SequenceInput>& batch, LogitsMode mode, Tensor* logits);
  // The multiplied weight matrices (projection, head, per layer qkv / o / fc1 / fc2), in a fixed
  // order; undefined ones included.
  std::vector<const Tensor*> WeightMatrices() const;
  // Keeps a sparse form of every (host) weight matrix for which one pays.
  void PlanSparseWeights();
  // After the weights moved to a device backend: the plans copied there, keyed by the device
  // matrices (`host_keys`: the host matrices' buffers, in WeightMatrices() order).
  absl::Status UploadSparseWeights(const std::vector<const void*>& host_keys);
  // The sparse form to use for `w` in a product of `rows` rows, or null for the dense product.
  const SparseWeight* SparseFor(const Tensor& w, int64_t rows) const;
  // y = x · wᵀ (+ bias), from w's sparse form when it pays.
  absl::Status MatMul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) const;
  // Copies a state's tensors with `copy` (same bookkeeping, new storage).
  absl::StatusOr<SessionState> CopyState(const SessionState& state, TensorCopy copy) const;

  ModelConfig config_;
  TransfoXlWeights weights_;
  bool record_decode_ = true;  // whether decode steps may be recorded (Backend::BeginStep)
  DType session_memory_ = DType::kF32;
  std::unique_ptr<Backend> backend_;
  // Per layer, its attention kind bound to the weights on the model's device (registry.h).
  std::vector<std::unique_ptr<AttentionLayer>> attention_;
  // Sparse forms of pruned weight matrices, by the matrix's buffer.
  std::map<const void*, std::shared_ptr<const SparseWeight>> sparse_;
};

}  // namespace mnemo::engine
