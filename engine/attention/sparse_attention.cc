#include "engine/attention/sparse_attention.h"

#include <utility>
#include <vector>

#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

absl::StatusOr<XlMemory> EmptyRing(Backend& be, int64_t rows, int64_t width) {
  ASSIGN_OR_RETURN(Tensor keys, be.Allocate(DType::kF32, {rows, width}));
  ASSIGN_OR_RETURN(Tensor values, be.Allocate(DType::kF32, {rows, width}));
  return XlMemory(std::move(keys), std::move(values));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LayerState>> SparseLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<SparseLayerState>();
  ASSIGN_OR_RETURN(out->globals, globals.Map(copy));
  ASSIGN_OR_RETURN(out->window, CopyRing(window, copy));
  return out;
}

absl::Status SparseAttentionLayer::ReadWeights(const ModelConfig& c, const std::string& p,
                                               ReadTensorFn read, TransfoXlLayerWeights& lw) {
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {3 * c.attn_width(), c.d_model}));
  return absl::OkStatus();
}

size_t SparseAttentionLayer::StateBytes() const {
  return SessionStateBytes(1, lc_.sparse_span() + lc_.max_global, config_.attn_width());
}

absl::StatusOr<std::unique_ptr<LayerState>> SparseAttentionLayer::NewState(Backend& be) const {
  auto state = std::make_unique<SparseLayerState>();  // an empty rolling window (+ global store)
  ASSIGN_OR_RETURN(state->window, EmptyRing(be, lc_.sparse_span(), config_.attn_width()));
  if (lc_.has_globals()) {
    ASSIGN_OR_RETURN(state->globals.globals, EmptyRing(be, lc_.max_global, config_.attn_width()));
    state->globals.global_positions.assign(static_cast<size_t>(lc_.max_global), -1);
  }
  return state;
}

bool SparseAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const SparseLayerState*>(&state);
  return s != nullptr && s->bytes() == StateBytes() && s->window.keys().defined() &&
         s->window.capacity() == lc_.sparse_span() && s->window.width() == config_.attn_width();
}

bool SparseAttentionLayer::RepeatsSteps() const {
  return lc_.pattern == SparsePattern::kWindow && !lc_.has_globals();
}

std::pair<int64_t, int64_t> SparseAttentionLayer::ScoredMemoryKeys(const LayerState& state) const {
  const auto& s = static_cast<const SparseLayerState&>(state);
  return {s.window.size(), s.window.capacity()};
}

absl::Status SparseAttentionLayer::Forward(const AttentionCall& call) const {
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  const std::vector<SequenceInput>& batch = call.batch;
  std::vector<Tensor> qkv_rows, out_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    qkv_rows.push_back(call.RowsOf(call.qkv, b));
    out_rows.push_back(call.RowsOf(call.out, b));
  }
  std::vector<SparseAttentionArgs> args;
  for (size_t b = 0; b < batch.size(); ++b) {
    SparseLayerState& st = call.StateOf<SparseLayerState>(b, layer_);
    args.push_back({&qkv_rows[b], &st.window, &lc_, static_cast<int>(config_.n_head),
                    static_cast<int>(config_.d_head), &out_rows[b], batch[b].tokens,
                    batch[b].state->position(), &st.globals});
    if (call.prev_scores[b].defined()) args.back().prev_scores = &call.prev_scores[b];
    if (call.scores[b].defined()) args.back().scores = &call.scores[b];
  }
  RETURN_IF_ERROR(call.backend.SparseAttention(args));
  // The new positions' keys/values join the window only after every query has attended.
  std::vector<MemoryAppendArgs> appends;
  for (size_t b = 0; b < batch.size(); ++b) {
    appends.push_back({&qkv_rows[b], &call.StateOf<SparseLayerState>(b, layer_).window});
  }
  RETURN_IF_ERROR(call.backend.AppendToMemory(appends));
  for (size_t b = 0; b < batch.size(); ++b) {
    call.StateOf<SparseLayerState>(b, layer_).window.Advance(batch[b].num_tokens);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
