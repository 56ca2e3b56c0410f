#include "engine/attention/lsh_attention.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {

size_t LshLayerState::bytes() const {
  return history.bytes() + (buckets.buckets.defined() ? buckets.buckets.bytes() : 0);
}

absl::StatusOr<std::unique_ptr<LayerState>> LshLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<LshLayerState>();
  RETURN_IF_ERROR(CopyDefined(buckets.buckets, copy, out->buckets.buckets));
  out->buckets.n_buckets = buckets.n_buckets;
  ASSIGN_OR_RETURN(out->history, CopyRing(history, copy));
  return out;
}

std::vector<int64_t> LshLayerState::Bookkeeping() const {
  return {history.start(), history.size()};
}

absl::Status LshLayerState::SetBookkeeping(std::span<const int64_t> values, int64_t position) {
  RETURN_IF_ERROR(CheckBookkeepingCount(values, 2, "lsh"));
  RETURN_IF_ERROR(history.SetBookkeeping(values[0], values[1], "lsh history"));
  if (history.size() > position) {
    return absl::InvalidArgumentError(absl::StrCat("lsh history: ring size ", history.size(),
                                                   " > the session's position ", position));
  }
  return absl::OkStatus();
}

absl::Status LshLayerState::CheckContents() const {
  const Tensor& b = buckets.buckets;
  if (!b.defined()) return absl::OkStatus();
  if (b.device() != Device::kCpu || b.dtype() != DType::kI32) {
    return absl::InvalidArgumentError("lsh buckets: not an int32 host tensor");
  }
  const int32_t* ids = b.data<int32_t>();
  for (int64_t i = 0; i < b.numel(); ++i) {
    if (ids[i] < 0 || ids[i] >= buckets.n_buckets) {
      return absl::InvalidArgumentError(absl::StrCat("lsh buckets: entry ", i, " is ", ids[i],
                                                     ", outside [0, ", buckets.n_buckets, ")"));
    }
  }
  return absl::OkStatus();
}

namespace {

constexpr int64_t kMaxBuckets = 65536;

// "n_buckets": an even integer, or a list of even factors (Hugging Face's factorised hashing)
// whose product is the bucket count.
absl::Status ParseBuckets(LayerEntryReader& r, LshConfig& lsh) {
  if (r.Has("n_buckets") && r.json().at("n_buckets").is_array()) {
    const nlohmann::json& list = r.json().at("n_buckets");
    const int max_factors = kernels::LshBucketFactors::kMaxFactors;
    if (list.empty() || list.size() > static_cast<size_t>(max_factors)) {
      return r.Error(
          absl::StrCat("\"n_buckets\" as a list must hold 1 … ", max_factors, " factors"));
    }
    lsh.n_buckets = 1;
    lsh.bucket_factors.count = static_cast<int>(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const nlohmann::json& f = list[i];
      if (!f.is_number_integer() || f.get<int64_t>() < 2 || f.get<int64_t>() > kMaxBuckets ||
          f.get<int64_t>() % 2 != 0) {
        return r.Error("\"n_buckets\" factors must be even integers in [2, 65536]");
      }
      lsh.n_buckets *= f.get<int64_t>();
      if (lsh.n_buckets > kMaxBuckets) {
        return r.Error("\"n_buckets\" factors multiply to more than 65536 buckets");
      }
      lsh.bucket_factors.sizes[i] = static_cast<int>(f.get<int64_t>());
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(lsh.n_buckets, r.Int("n_buckets", 2, kMaxBuckets));
  if (lsh.n_buckets % 2 != 0) return r.Error("\"n_buckets\" must be even");
  return absl::OkStatus();
}

}  // namespace

absl::Status LshAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& /*config*/,
                                            LayerConfig& layer) {
  ASSIGN_OR_RETURN(layer.lsh.n_hashes, r.Int("n_hashes", 1, 64));
  RETURN_IF_ERROR(ParseBuckets(r, layer.lsh));
  ASSIGN_OR_RETURN(layer.lsh.chunk_len, r.Int("chunk_len", 1, kMaxSpan));
  ASSIGN_OR_RETURN(layer.lsh.history, r.Int("history", 1, kMaxSpan, 4096));
  ASSIGN_OR_RETURN(std::string sort, r.String("sort", "window", {"window", "call"}));
  layer.lsh.lsh_call_sort = sort == "call";
  return absl::OkStatus();
}

absl::Status LshAttentionLayer::ReadWeights(const ModelConfig& c, int64_t layer,
                                            const std::string& p, ReadTensorFn read,
                                            TransfoXlLayerWeights& lw) {
  const LayerConfig& lc = c.layer(layer);
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {2 * c.attn_width(), c.d_model}));
  ASSIGN_OR_RETURN(
      lw.lsh.rotations,
      read(p + "rotations", {c.n_head, c.d_head, lc.lsh.n_hashes,
                             kernels::LshRotationColumns(lc.lsh.bucket_factors,
                                                         static_cast<int>(lc.lsh.n_buckets))}));
  return absl::OkStatus();
}

size_t LshAttentionLayer::StateBytes() const {
  return SessionStateBytes(1, lc_.lsh.history - 1, config_.attn_width(), history_memory_) +
         static_cast<size_t>((lc_.lsh.history - 1) * config_.n_head * lc_.lsh.n_hashes) *
             sizeof(int32_t);
}

absl::StatusOr<std::unique_ptr<LayerState>> LshAttentionLayer::NewState(Backend& be) const {
  auto state = std::make_unique<LshLayerState>();  // normalised keys, values, buckets
  const std::vector<int64_t> shape = {lc_.lsh.history - 1, config_.attn_width()};
  ASSIGN_OR_RETURN(Tensor keys, be.Allocate(history_memory_, shape));
  ASSIGN_OR_RETURN(Tensor values, be.Allocate(history_memory_, shape));
  state->history = XlMemory(std::move(keys), std::move(values));
  ASSIGN_OR_RETURN(
      state->buckets.buckets,
      be.Allocate(DType::kI32, {lc_.lsh.history - 1, config_.n_head * lc_.lsh.n_hashes}));
  state->buckets.n_buckets = lc_.lsh.n_buckets;
  return state;
}

bool LshAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const LshLayerState*>(&state);
  return s != nullptr && s->bytes() == StateBytes() && s->history.keys().defined() &&
         s->history.dtype() == history_memory_ && s->history.capacity() == lc_.lsh.history - 1 &&
         s->history.width() == config_.attn_width();
}

absl::Status LshAttentionLayer::Forward(const AttentionCall& call) const {
  // Shared qk | v; the op writes the ring itself.
  const std::vector<SequenceInput>& batch = call.batch;
  const int64_t n = call.input.dim(0);
  ASSIGN_OR_RETURN(Tensor qk_v,
                   call.backend.AllocateUninitialized(DType::kF32, {n, 2 * config_.attn_width()}));
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, qk_v));
  std::vector<Tensor> rows;
  for (size_t b = 0; b < batch.size(); ++b) rows.push_back(call.RowsOf(qk_v, b));
  std::vector<LshAttentionArgs> args;
  for (size_t b = 0; b < batch.size(); ++b) {
    LshLayerState& st = call.StateOf<LshLayerState>(b, layer_);
    args.push_back({&rows[b], &st.history, &st.buckets, &lc_.lsh, &weights_->lsh.rotations,
                    static_cast<int>(config_.n_head), static_cast<int>(config_.d_head),
                    &call.out_rows[b]});
  }
  RETURN_IF_ERROR(call.backend.LshAttention(args));
  for (size_t b = 0; b < batch.size(); ++b) {
    call.StateOf<LshLayerState>(b, layer_).history.Advance(batch[b].num_tokens);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
