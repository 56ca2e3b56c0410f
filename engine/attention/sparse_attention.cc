#include "engine/attention/sparse_attention.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {

absl::StatusOr<std::unique_ptr<LayerState>> SparseLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<SparseLayerState>();
  ASSIGN_OR_RETURN(out->globals, globals.Map(copy));
  ASSIGN_OR_RETURN(out->window, CopyRing(window, copy));
  return out;
}

std::vector<int64_t> SparseLayerState::Bookkeeping() const {
  std::vector<int64_t> out = {window.start(), window.size()};
  if (globals.globals.keys().defined()) globals.AppendBookkeeping(out);
  return out;
}

absl::Status SparseLayerState::SetBookkeeping(std::span<const int64_t> values, int64_t position) {
  const bool has_globals = globals.globals.keys().defined();
  RETURN_IF_ERROR(CheckBookkeepingCount(
      values, 2 + (has_globals ? globals.bookkeeping_values() : 0), "sparse"));
  RETURN_IF_ERROR(window.SetBookkeeping(values[0], values[1], "sparse window"));
  // The ring holds the last min(position, capacity) positions: the pattern reaches back that far
  // and looks anything older up in the global store.
  const int64_t held = std::min(position, window.capacity());
  if (window.size() != held) {
    return absl::InvalidArgumentError(absl::StrCat("sparse window: ring size ", window.size(),
                                                   ", expected ", held,
                                                   " at the session's position ", position));
  }
  return has_globals ? globals.SetBookkeeping(values.subspan(2), position) : absl::OkStatus();
}

absl::Status SparseAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& c,
                                               LayerConfig& layer) {
  ASSIGN_OR_RETURN(layer.residual_attention, r.Bool("residual_attention", false));
  const nlohmann::json& j = r.json();
  ASSIGN_OR_RETURN(std::string pattern, r.String("pattern", "window", EnumNames<SparsePattern>()));
  const int64_t n_head = c.n_head;
  layer.sparse.pattern = *ParseEnum<SparsePattern>(pattern);
  if (pattern == "window") {
    ASSIGN_OR_RETURN(layer.sparse.window, r.Int("window", 1, kMaxSpan));
    layer.sparse.dilations.assign(static_cast<size_t>(n_head), 1);
    if (r.Has("dilation")) {
      const nlohmann::json& d = j.at("dilation");
      auto positive = [](const nlohmann::json& v) {
        return v.is_number_integer() && v.get<int64_t>() >= 1 && v.get<int64_t>() <= kMaxSpan;
      };
      if (positive(d)) {
        layer.sparse.dilations.assign(static_cast<size_t>(n_head), d.get<int64_t>());
      } else if (d.is_array() && static_cast<int64_t>(d.size()) == n_head &&
                 std::all_of(d.begin(), d.end(), positive)) {
        for (int64_t h = 0; h < n_head; ++h) layer.sparse.dilations[h] = d[h].get<int64_t>();
      } else {
        return r.Error(absl::StrCat(
            "\"dilation\" must be an integer ≥ 1 or a list of n_head = ", n_head, " of them"));
      }
    }
    if (layer.sparse.sparse_span() > kMaxSpan) {
      return r.Error("window × dilation must be at most 1048576");
    }
  } else {
    ASSIGN_OR_RETURN(layer.sparse.span, r.Int("span", 1, kMaxSpan));
    if (pattern == "strided" || pattern == "fixed") {
      const bool strided = pattern == "strided";
      layer.sparse.pattern = strided ? SparsePattern::kStrided : SparsePattern::kFixed;
      if (strided) {
        ASSIGN_OR_RETURN(layer.sparse.stride, r.Int("stride", 1, kMaxSpan));
      } else {
        ASSIGN_OR_RETURN(layer.sparse.block, r.Int("block", 1, kMaxSpan));
        ASSIGN_OR_RETURN(layer.sparse.summary, r.Int("summary", 1, layer.sparse.block));
      }
      const std::vector<std::string> names = strided ? std::vector<std::string>{"local", "strided"}
                                                     : std::vector<std::string>{"block", "summary"};
      std::vector<uint8_t> parts = {1, 2};
      if (r.Has("components")) {
        const nlohmann::json& v = j.at("components");
        parts.clear();
        if (!v.is_array() || v.empty() || v.size() > 2) {
          return r.Error(absl::StrCat("\"components\" must list one or both of \"", names[0],
                                      "\", \"", names[1], "\""));
        }
        for (const nlohmann::json& x : v) {
          const int idx = !x.is_string()                     ? -1
                          : x.get<std::string>() == names[0] ? 0
                          : x.get<std::string>() == names[1] ? 1
                                                             : -1;
          if (idx < 0 || std::count(parts.begin(), parts.end(), uint8_t(1u << idx)) > 0) {
            return r.Error(absl::StrCat("\"components\" must list one or both of \"", names[0],
                                        "\", \"", names[1], "\" (each once)"));
          }
          parts.push_back(static_cast<uint8_t>(1u << idx));
        }
      }
      ASSIGN_OR_RETURN(std::string split, r.String("split", "heads", {"heads", "union"}));
      layer.sparse.head_components.assign(static_cast<size_t>(n_head), 0);
      for (int64_t h = 0; h < n_head; ++h) {
        if (split == "heads") {
          layer.sparse.head_components[h] = parts[static_cast<size_t>(h) % parts.size()];
        } else {
          for (uint8_t p : parts) layer.sparse.head_components[h] |= p;
        }
      }
    } else {
      layer.sparse.pattern = SparsePattern::kBigBird;
      ASSIGN_OR_RETURN(layer.sparse.block, r.Int("block", 1, kMaxSpan));
      ASSIGN_OR_RETURN(layer.sparse.window_blocks, r.Int("window_blocks", 1, kMaxSpan, 3));
      ASSIGN_OR_RETURN(layer.sparse.random_blocks, r.Int("random_blocks", 0, 4096, 2));
      ASSIGN_OR_RETURN(int64_t seed, r.Int("seed", 0, std::numeric_limits<int64_t>::max(), 0));
      layer.sparse.seed = static_cast<uint64_t>(seed);
    }
  }
  ASSIGN_OR_RETURN(layer.sparse.global_positions,
                   r.IntList("global_positions", 0, std::numeric_limits<int64_t>::max() / 4));
  ASSIGN_OR_RETURN(std::vector<int64_t> tokens, r.IntList("global_tokens", 0, c.vocab_size - 1));
  layer.sparse.global_tokens.assign(tokens.begin(), tokens.end());
  const int64_t default_kept = static_cast<int64_t>(layer.sparse.global_positions.size());
  ASSIGN_OR_RETURN(layer.sparse.max_global,
                   r.Int("max_global", 0, 65536, std::min<int64_t>(default_kept, 65536)));
  if (!layer.sparse.global_tokens.empty() && layer.sparse.max_global < 1) {
    return r.Error("\"global_tokens\" needs \"max_global\" ≥ 1");
  }
  return absl::OkStatus();
}

absl::Status SparseAttentionLayer::ReadWeights(const ModelConfig& c, const std::string& p,
                                               ReadTensorFn read, TransfoXlLayerWeights& lw) {
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {c.qkv_width(), c.d_model}));
  return absl::OkStatus();
}

size_t SparseAttentionLayer::StateBytes() const {
  return SessionStateBytes(1, lc_.sparse.sparse_span(), config_.kv_width(), window_memory_) +
         SessionStateBytes(1, lc_.sparse.max_global, config_.kv_width());
}

absl::StatusOr<std::unique_ptr<LayerState>> SparseAttentionLayer::NewState(Backend& be) const {
  auto state = std::make_unique<SparseLayerState>();  // an empty rolling window (+ global store)
  ASSIGN_OR_RETURN(state->window,
                   AllocateRing(be, lc_.sparse.sparse_span(), config_.kv_width(), window_memory_));
  if (lc_.sparse.has_globals()) {
    ASSIGN_OR_RETURN(state->globals.globals,
                     AllocateRing(be, lc_.sparse.max_global, config_.kv_width(), DType::kF32));
    state->globals.global_positions.assign(static_cast<size_t>(lc_.sparse.max_global), -1);
  }
  return state;
}

bool SparseAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const SparseLayerState*>(&state);
  return s != nullptr && s->bytes() == StateBytes() && s->window.keys().defined() &&
         s->window.dtype() == window_memory_ && s->window.capacity() == lc_.sparse.sparse_span() &&
         s->window.width() == config_.kv_width();
}

bool SparseAttentionLayer::RepeatsSteps() const {
  // (grouped-query windows and scaled or capped scores list their keys per step on the CUDA
  // backend, as other patterns do)
  return lc_.sparse.pattern == SparsePattern::kWindow && !lc_.sparse.has_globals() &&
         config_.kv_heads() == config_.n_head && config_.attn_scale == 0.0 &&
         config_.attn_softcap == 0.0;
}

std::pair<int64_t, int64_t> SparseAttentionLayer::ScoredMemoryKeys(const LayerState& state) const {
  const auto& s = static_cast<const SparseLayerState&>(state);
  return {s.window.size(), s.window.capacity()};
}

absl::Status SparseAttentionLayer::Forward(const AttentionCall& call) const {
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  if (call.rotary_inv_freq != nullptr) {  // queries and keys turn before they are attended/stored
    RETURN_IF_ERROR(call.backend.Rotary(call.qkv, *call.positions,
                                        static_cast<int>(config_.n_head + config_.kv_heads()),
                                        static_cast<int>(config_.d_head), *call.rotary_inv_freq));
  }
  const std::vector<SequenceInput>& batch = call.batch;
  std::vector<SparseAttentionArgs> args;
  for (size_t b = 0; b < batch.size(); ++b) {
    SparseLayerState& st = call.StateOf<SparseLayerState>(b, layer_);
    args.push_back({&call.qkv_rows[b], &st.window, &lc_.sparse, static_cast<int>(config_.n_head),
                    static_cast<int>(config_.d_head), &call.out_rows[b], batch[b].tokens,
                    batch[b].state->position(), &st.globals});
    if (call.prev_scores[b].defined()) args.back().prev_scores = &call.prev_scores[b];
    if (call.scores[b].defined()) args.back().scores = &call.scores[b];
    args.back().num_kv_heads = static_cast<int>(config_.kv_heads());
    args.back().scale = static_cast<float>(config_.attn_scale);
    args.back().softcap = static_cast<float>(config_.attn_softcap);
  }
  RETURN_IF_ERROR(call.backend.SparseAttention(args));
  // The new positions' keys/values join the window only after every query has attended.
  std::vector<MemoryAppendArgs> appends;
  for (size_t b = 0; b < batch.size(); ++b) {
    appends.push_back({&call.qkv_rows[b], &call.StateOf<SparseLayerState>(b, layer_).window,
                       config_.attn_width()});
  }
  RETURN_IF_ERROR(call.backend.AppendToMemory(appends));
  for (size_t b = 0; b < batch.size(); ++b) {
    call.StateOf<SparseLayerState>(b, layer_).window.Advance(batch[b].num_tokens);
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
