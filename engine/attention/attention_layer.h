// AttentionLayer: one layer's attention kind bound to its configuration and weights. A kind
// (dense Transformer-XL with XL or compressive memory, linear, sparse, LSH) lives in one file
// pair of this folder and owns everything kind-specific: its per-session state (create, exact
// bytes, shape check), the constants it precomputes at load, and its forward on a Backend for a
// ragged batch. The model is a stack of these and never branches on the kind; registry.h is the
// one list of kinds.
//
// Threading: a bound layer is immutable; Forward may run concurrently on disjoint states.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/memory/layer_state.h"
#include "engine/model/model_config.h"
#include "engine/model/sequence_input.h"
#include "engine/model/transfo_xl_weights.h"

namespace mnemo::engine {

// Reads checkpoint tensor `name`, which must have `shape` (errors name the tensor).
using ReadTensorFn =
    absl::FunctionRef<absl::StatusOr<Tensor>(const std::string& name, std::vector<int64_t> shape)>;

// What a layer's attention weights may share across layers: the r biases of a model with
// untie_r false (undefined otherwise).
struct SharedAttentionWeights {
  Tensor r_w_bias, r_r_bias;  // [H, d_h]
};

// y[N, out] = x[N, in] · wᵀ (+ bias): the model's product, from w's sparse form when it pays.
using MatMulFn = absl::FunctionRef<absl::Status(const Tensor& x, const Tensor& w,
                                                const Tensor* bias, Tensor& y)>;

// One layer's attention over a packed batch: what the model hands the kind.
struct AttentionCall {
  Backend& backend;
  MatMulFn matmul;
  const std::vector<SequenceInput>& batch;
  const std::vector<int64_t>& offsets;  // first row of each sequence in the packed batch
  const Tensor& input;                  // [num_tokens, d_model] the attention input
  Tensor& qkv;  // [num_tokens, (H + 2·H_kv)·d_h] scratch for the projections (written before read)
  Tensor& out;  // [num_tokens, H·d_h] the attention output, before W_o
  // Per sequence, its rows of `qkv` and of `out` (views made once per forward, not per layer).
  const std::vector<Tensor>& qkv_rows;
  std::vector<Tensor>& out_rows;
  // RealFormer, per sequence: the scores the previous layer passed on and the buffer for the
  // ones this layer passes on ([H, T, keys], undefined: none).
  const std::vector<Tensor>& prev_scores;
  std::vector<Tensor>& scores;
  // Rotary positions (architectures "mistral", "gemma2"): the frequencies [d_h / 2] and each packed
  // row's stream position, applied to the queries and keys before they are attended or stored; null
  // for a model without them.
  const Tensor* rotary_inv_freq = nullptr;
  const std::vector<int64_t>* positions = nullptr;

  // The sequence's state of layer `layer`, as the kind's own type (the model checked the kinds
  // with Fits before the call).
  template <typename State>
  State& StateOf(size_t b, int64_t layer) const {
    return static_cast<State&>(batch[b].state->layer(layer));
  }
  // Rows of sequence b in a packed [num_tokens, …] tensor.
  Tensor RowsOf(const Tensor& packed, size_t b) const {
    return packed.Rows(offsets[b], offsets[b] + batch[b].num_tokens);
  }
};

// What the layers of one model share while they are created: the CPU backend their constants are
// computed on, and tables several layers derive theirs from, computed by the first that needs
// them instead of once per layer.
struct AttentionLoadContext {
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  Tensor sinusoids;  // dense: [rows, d_model] relative-position sinusoids (RelativeSinusoids)
  // dense, sparse, LSH, memory_compressed: the dtype of the sessions' key/value rings
  // (ModelOptions::session_memory).
  DType session_memory = DType::kF32;
};

// An empty key/value ring of `rows` positions `width` wide on `backend`'s device (zeroed), for
// the kinds' NewState.
inline absl::StatusOr<XlMemory> AllocateRing(Backend& backend, int64_t rows, int64_t width,
                                             DType dtype) {
  absl::StatusOr<Tensor> keys = backend.Allocate(dtype, {rows, width});
  if (!keys.ok()) return keys.status();
  absl::StatusOr<Tensor> values = backend.Allocate(dtype, {rows, width});
  if (!values.ok()) return values.status();
  return XlMemory(*std::move(keys), *std::move(values));
}

class AttentionLayer {
 public:
  AttentionLayer(const ModelConfig& config, int64_t layer)
      : config_(config), layer_(layer), lc_(config.layer(layer)) {}
  virtual ~AttentionLayer() = default;
  AttentionLayer(const AttentionLayer&) = delete;
  AttentionLayer& operator=(const AttentionLayer&) = delete;

  // Binds the layer to its weights on the model's device (`weights` outlives the layer) and
  // moves what it precomputed at creation there.
  virtual absl::Status Bind(const TransfoXlLayerWeights& weights, Backend& backend) {
    weights_ = &weights;
    return absl::OkStatus();
  }

  // Exact bytes of one session's state of this layer.
  virtual size_t StateBytes() const = 0;
  // A fresh state on `backend`'s device. RESOURCE_EXHAUSTED when the device is out of memory.
  virtual absl::StatusOr<std::unique_ptr<LayerState>> NewState(Backend& backend) const = 0;
  // Whether `state` is this kind's and has this layer's shape.
  virtual bool Fits(const LayerState& state) const = 0;
  // Whether a decode step issues the same ops on the same shapes every time (so a backend may
  // record it once and replay it).
  virtual bool RepeatsSteps() const { return true; }
  // RealFormer: the keys before the segment that this layer's scores cover in `state`, now and
  // at most (scores are [H, T, keys + T]).
  virtual std::pair<int64_t, int64_t> ScoredMemoryKeys(const LayerState& state) const {
    return {0, 0};
  }

  // Projects `call.input` and runs every sequence's attention, writing `call.out` and advancing
  // each state of this layer by its tokens.
  virtual absl::Status Forward(const AttentionCall& call) const = 0;

 protected:
  const ModelConfig& config_;
  const int64_t layer_;
  const LayerConfig& lc_;
  const TransfoXlLayerWeights* weights_ = nullptr;  // set by Bind
};

}  // namespace mnemo::engine
