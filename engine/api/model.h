// engine::api::Model: a loaded checkpoint as the server and the command line use it — load (with
// its tokenizer and, optionally, its speculative-decoding draft), describe (what GetModel
// reports), open / clone / offload / restore session states, and run a batch. The one model
// object the front ends hold; TransfoXlModel and the loaders stay behind it.
//
// Threading: a loaded Model is immutable; Forward and the state functions may run concurrently
// from several threads as long as no SessionState is used by two calls at once.
// Errors: NOT_FOUND / INVALID_ARGUMENT naming the file or field for a bad checkpoint or draft,
// RESOURCE_EXHAUSTED when the device is out of memory, INVALID_ARGUMENT for a bad batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/api/types.h"

namespace mnemo::engine {
class TransfoXlModel;
}  // namespace mnemo::engine

namespace mnemo::engine::api {

struct LoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  ModelOptions model;
  // Load tokenizer.model even when absent (then fail with the loader's error); otherwise it is
  // loaded when the directory has one. A vocab.words (a word vocabulary) is loaded instead of it.
  bool require_tokenizer = false;
  // The draft for speculative decoding: `draft_dir` when set, else the directory's draft.json when
  // `draft_from_json`, else none. A draft must share the tokenizer and the vocabulary.
  std::string draft_dir;
  bool draft_from_json = false;
  int draft_tokens = 0;  // proposals per pass; 0: draft.json's value (4 without one)
  // Test facility (mnemo-server --backend-faults): a fault spec
  // (engine/backend/fault_injecting_backend.h; "" none). The model's backend, and its draft's,
  // then fails the ops the spec names, from the end of the load on.
  std::string backend_faults;
  uint64_t backend_fault_seed = 1;  // the draft's backend draws from seed + 1
};

struct LayerDescription {
  AttentionKind attention = AttentionKind::kDense;
  std::string_view attention_name;  // EnumName(attention)
  int64_t state_bytes = 0;          // of this layer in one session's state
};

// What a model is, as clients may ask about it.
struct ModelDescription {
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t mem_len = 0;
  DType dtype = DType::kF32;
  std::vector<LayerDescription> layers;
  std::string attention_summary;  // the kinds present, "+"-joined in enum order ("dense+linear")
  int64_t state_bytes = 0;        // one session's state (the model's only, not the draft's)
  int64_t default_segment_tokens = 0;
  std::string fingerprint;     // FNV-1a 64 of config.json and every tensor (name and bytes), hex
  double weight_sparsity = 0;  // fraction of floating-point weight entries that are zero
};

class Model {
 public:
  // Loads `<dir>/config.json`, `<dir>/model.safetensors` (and vocab.words or tokenizer.model, the
  // draft) onto options.device.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const LoadOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& device() const { return device_; }
  const ModelConfig& config() const;
  // The type the weight matrices are held in on the model's device: the checkpoint's, or
  // float32 when the CPU widened a 16-bit checkpoint at load (ModelOptions::cpu_weights).
  DType weight_dtype() const;
  // The dtype of the sessions' key/value rings (ModelOptions::session_memory).
  DType session_memory() const;
  // Null when the checkpoint has neither vocab.words nor tokenizer.model.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  // The speculative-decoding draft (shares this model's vocabulary), null without one.
  const std::shared_ptr<Model>& draft() const { return draft_; }
  int draft_tokens() const { return draft_tokens_; }

  // Reads the checkpoint once more to fingerprint it: call once and keep the result.
  absl::StatusOr<ModelDescription> Describe() const;

  // Exact bytes of one session's state, and of layer l's part of it.
  size_t StateBytes() const;
  size_t LayerStateBytes(int64_t l) const;
  absl::StatusOr<SessionState> NewState() const;
  absl::StatusOr<SessionState> CloneState(const SessionState& state) const;
  // Makes *dst a deep copy of `state`, reusing dst's buffers where shapes match.
  absl::Status CopyStateInto(const SessionState& state, SessionState* dst) const;
  // Offload to host memory and back; the round trip is exact.
  absl::StatusOr<SessionState> StateToHost(const SessionState& state) const;
  absl::StatusOr<SessionState> StateFromHost(const SessionState& host_state) const;

  // Runs the batch (see TransfoXlModel::Forward): `logits` receives a float32 host tensor shaped
  // as `mode` says, untouched for kNone. On INVALID_ARGUMENT no state is modified.
  absl::Status Forward(const std::vector<SequenceInput>& batch, LogitsMode mode,
                       Tensor* logits) const;

  // Whether any layer uses RealFormer residual scores (no speculative verification then).
  bool UsesResidualAttention() const;

 private:
  friend struct ModelAccess;  // engine/api's own files reach the model (model_access.h)
  Model() = default;

  std::string dir_;
  std::string device_;
  std::unique_ptr<TransfoXlModel> impl_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::shared_ptr<Model> draft_;
  int draft_tokens_ = 0;
};

}  // namespace mnemo::engine::api
