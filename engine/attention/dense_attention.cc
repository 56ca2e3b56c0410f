#include "engine/attention/dense_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "base/status_macros.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"
#include "kernels/cpu/relative_attention.h"

namespace mnemo::engine {
namespace {

// Distances precomputed beyond mem_len when clamp_len does not bound them: covers a prefill
// segment of this many tokens on a full memory without recomputing the table.
constexpr int64_t kTableHeadroom = 512;

}  // namespace

Tensor RelativeSinusoids(const ModelConfig& config, int64_t rows) {
  // R[p] = [sin(p·f_0 … p·f_{D/2−1}), cos(…)], f_i = 10000^(−2i/D); computed in double and
  // rounded once, so large distances keep full float32 accuracy.
  const int64_t d = config.d_model, half = d / 2;
  Tensor out = Tensor::Zeros(DType::kF32, {rows, d});
  for (int64_t p = 0; p < rows; ++p) {
    const double pos =
        static_cast<double>(config.clamp_len > 0 ? std::min(p, config.clamp_len) : p);
    float* row = out.data<float>() + p * d;
    for (int64_t i = 0; i < half; ++i) {
      const double freq =
          1.0 / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(d));
      row[i] = static_cast<float>(std::sin(pos * freq));
      row[half + i] = static_cast<float>(std::cos(pos * freq));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<LayerState>> DenseLayerState::Map(TensorCopy copy) const {
  auto out = std::make_unique<DenseLayerState>();
  ASSIGN_OR_RETURN(out->compressive, compressive.Map(copy));
  ASSIGN_OR_RETURN(out->memory, CopyRing(memory, copy));
  return out;
}

std::vector<int64_t> DenseLayerState::Bookkeeping() const {
  std::vector<int64_t> out = {memory.start(), memory.size()};
  if (compressive.pending.defined()) compressive.AppendBookkeeping(out);
  return out;
}

absl::Status DenseLayerState::SetBookkeeping(std::span<const int64_t> values,
                                             int64_t /*position*/) {
  const bool compresses = compressive.pending.defined();
  RETURN_IF_ERROR(CheckBookkeepingCount(
      values, 2 + (compresses ? CompressiveMemory::kBookkeepingValues : 0), "dense"));
  RETURN_IF_ERROR(memory.SetBookkeeping(values[0], values[1], "XL memory"));
  return compresses ? compressive.SetBookkeeping(values.subspan(2)) : absl::OkStatus();
}

absl::Status DenseAttentionLayer::ParseConfig(LayerEntryReader& r, const ModelConfig& c,
                                              LayerConfig& layer) {
  ASSIGN_OR_RETURN(layer.residual_attention, r.Bool("residual_attention", false));
  ASSIGN_OR_RETURN(std::string memory, r.String("memory", "xl", EnumNames<MemoryKind>()));
  layer.dense.memory = *ParseEnum<MemoryKind>(memory);
  if (layer.dense.memory == MemoryKind::kXl) return absl::OkStatus();
  if (c.mem_len < 1) return r.Error("(compressive) needs mem_len ≥ 1");
  if (c.same_length) return r.Error("(compressive) needs same_length false");
  ASSIGN_OR_RETURN(std::string f, r.String("compression", std::nullopt, EnumNames<Compression>()));
  layer.dense.compression = *ParseEnum<Compression>(f);
  ASSIGN_OR_RETURN(layer.dense.compression_rate, r.Int("compression_rate", 1, c.mem_len));
  ASSIGN_OR_RETURN(layer.dense.cmem_len, r.Int("cmem_len", 1, kMaxSpan));
  if (layer.dense.compression == Compression::kDilatedConv) {
    ASSIGN_OR_RETURN(layer.dense.compression_kernel,
                     r.Int("compression_kernel", 1, layer.dense.compression_rate, 2));
    if (layer.dense.compression_rate % layer.dense.compression_kernel != 0) {
      return r.Error("\"compression_kernel\" must divide \"compression_rate\"");
    }
  }
  return absl::OkStatus();
}

absl::Status DenseAttentionLayer::ReadWeights(const ModelConfig& c, int64_t layer,
                                              const std::string& p, ReadTensorFn read,
                                              const SharedAttentionWeights& shared,
                                              TransfoXlLayerWeights& lw) {
  const int64_t d = c.d_model, hd = c.attn_width();
  const LayerConfig& lc = c.layer(layer);
  ASSIGN_OR_RETURN(lw.qkv, read(p + "qkv.weight", {3 * hd, d}));
  ASSIGN_OR_RETURN(lw.dense.r, read(p + "r.weight", {hd, d}));
  if (const int64_t taps = lc.dense.compress_taps(); taps > 0) {
    ASSIGN_OR_RETURN(lw.dense.compress, read(p + "compress.weight", {d, d, taps}));
    ASSIGN_OR_RETURN(lw.dense.compress_bias, read(p + "compress.bias", {d}));
  }
  if (c.untie_r) {
    ASSIGN_OR_RETURN(lw.dense.r_w_bias, read(p + "r_w_bias", {c.n_head, c.d_head}));
    ASSIGN_OR_RETURN(lw.dense.r_r_bias, read(p + "r_r_bias", {c.n_head, c.d_head}));
  } else {
    lw.dense.r_w_bias = shared.r_w_bias;
    lw.dense.r_r_bias = shared.r_r_bias;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AttentionLayer>> DenseAttentionLayer::Create(
    const ModelConfig& c, int64_t layer, const TransfoXlLayerWeights& lw,
    AttentionLoadContext& context) {
  std::unique_ptr<DenseAttentionLayer> out(new DenseAttentionLayer(c, layer));
  const int64_t hd = c.attn_width();
  Backend& cpu = *context.cpu;
  const int64_t rows = c.clamp_len > 0 ? c.clamp_len + 1 : c.mem_len + kTableHeadroom;
  // Every dense layer of the model projects the same sinusoids.
  if (!context.sinusoids.defined()) context.sinusoids = RelativeSinusoids(c, rows);
  out->rel_table_ = Tensor::Empty(DType::kF32, {rows, hd});
  RETURN_IF_ERROR(cpu.Linear(context.sinusoids, lw.dense.r, nullptr, out->rel_table_));
  // With 16-bit session memory the table is stored 16-bit too: a decode step reads all of it.
  out->memory_dtype_ = context.session_memory;
  if (out->memory_dtype_ != DType::kF32) {
    out->rel_table_ = Converted(out->rel_table_, out->memory_dtype_);
  }
  // A zero hidden row projects to W_k·0 = 0 (post-LN) or W_k·LN(0) = W_k·beta (pre-LN).
  Tensor zero_in = Tensor::Zeros(DType::kF32, {1, c.d_model});
  if (c.pre_lnorm) std::memcpy(zero_in.raw(), lw.attn_ln_beta.raw(), lw.attn_ln_beta.bytes());
  out->zero_keys_ = Tensor::Empty(DType::kF32, {1, hd});
  out->zero_values_ = Tensor::Empty(DType::kF32, {1, hd});
  // Rows hd … 3·hd − 1 of the fused projection are W_k and W_v.
  RETURN_IF_ERROR(cpu.Linear(zero_in, lw.qkv.Rows(hd, 2 * hd), nullptr, out->zero_keys_));
  RETURN_IF_ERROR(cpu.Linear(zero_in, lw.qkv.Rows(2 * hd, 3 * hd), nullptr, out->zero_values_));
  out->zero_hidden_ = std::move(zero_in);
  // The "zeros" memory's rows are stored as every other row of the ring: in its dtype.
  for (Tensor* row : {&out->zero_keys_, &out->zero_values_}) {
    *row = Converted(*row, out->memory_dtype_);
  }
  return out;
}

absl::Status DenseAttentionLayer::Bind(const TransfoXlLayerWeights& weights, Backend& backend) {
  weights_ = &weights;
  if (backend.device() == Device::kCpu) return absl::OkStatus();
  ASSIGN_OR_RETURN(rel_table_, backend.CopyFromHost(rel_table_));
  ASSIGN_OR_RETURN(zero_keys_, backend.CopyFromHost(zero_keys_));
  ASSIGN_OR_RETURN(zero_values_, backend.CopyFromHost(zero_values_));
  if (lc_.dense.compressive()) {  // the "zeros" memory's hidden rows, for compression
    ASSIGN_OR_RETURN(zero_hidden_, backend.CopyFromHost(zero_hidden_));
  }
  return absl::OkStatus();
}

size_t DenseAttentionLayer::StateBytes() const {
  const ModelConfig& c = config_;
  constexpr size_t kF = sizeof(float);
  size_t bytes = SessionStateBytes(1, c.mem_len, c.attn_width(), memory_dtype_);
  if (lc_.dense.compressive()) {
    bytes += SessionStateBytes(1, lc_.dense.cmem_len, c.attn_width(), memory_dtype_) +
             static_cast<size_t>((c.mem_len + lc_.dense.compression_rate) * c.d_model) * kF;
    if (lc_.dense.compression == Compression::kMostUsed) {
      bytes += static_cast<size_t>(c.mem_len + lc_.dense.compression_rate) * kF;
    }
  }
  return bytes;
}

absl::StatusOr<std::unique_ptr<LayerState>> DenseAttentionLayer::NewState(Backend& be) const {
  const ModelConfig& c = config_;
  const bool fill = c.memory_init == MemoryInit::kZeros;
  auto state = std::make_unique<DenseLayerState>();
  const std::vector<int64_t> shape = {c.mem_len, c.attn_width()};
  const DType ring = memory_dtype_;
  ASSIGN_OR_RETURN(Tensor keys,
                   fill ? be.AllocateUninitialized(ring, shape) : be.Allocate(ring, shape));
  ASSIGN_OR_RETURN(Tensor values,
                   fill ? be.AllocateUninitialized(ring, shape) : be.Allocate(ring, shape));
  state->memory = XlMemory(std::move(keys), std::move(values));
  if (fill) {
    RETURN_IF_ERROR(be.FillRows(zero_keys_, state->memory.keys()));
    RETURN_IF_ERROR(be.FillRows(zero_values_, state->memory.values()));
    state->memory.MarkFull();
  }
  if (lc_.dense.compressive()) {
    CompressiveMemory& cm = state->compressive;
    const int64_t rate = lc_.dense.compression_rate;
    ASSIGN_OR_RETURN(cm.hidden, be.Allocate(DType::kF32, {c.mem_len, c.d_model}));
    if (fill) RETURN_IF_ERROR(be.FillRows(zero_hidden_, cm.hidden));
    ASSIGN_OR_RETURN(cm.pending, be.Allocate(DType::kF32, {rate, c.d_model}));
    const std::vector<int64_t> cshape = {lc_.dense.cmem_len, c.attn_width()};
    ASSIGN_OR_RETURN(Tensor ckeys, be.Allocate(ring, cshape));
    ASSIGN_OR_RETURN(Tensor cvalues, be.Allocate(ring, cshape));
    cm.compressed = XlMemory(std::move(ckeys), std::move(cvalues));
    if (lc_.dense.compression == Compression::kMostUsed) {
      ASSIGN_OR_RETURN(cm.usage, be.Allocate(DType::kF32, {c.mem_len}));
      ASSIGN_OR_RETURN(cm.pending_usage, be.Allocate(DType::kF32, {rate}));
    }
  }
  return state;
}

bool DenseAttentionLayer::Fits(const LayerState& state) const {
  const auto* s = dynamic_cast<const DenseLayerState*>(&state);
  // Everything beside the ring has a size fixed by the config: its bytes say whether it fits.
  return s != nullptr && s->bytes() == StateBytes() && s->memory.keys().defined() &&
         s->memory.capacity() == config_.mem_len && s->memory.width() == config_.attn_width();
}

std::pair<int64_t, int64_t> DenseAttentionLayer::ScoredMemoryKeys(const LayerState& state) const {
  const auto& s = static_cast<const DenseLayerState&>(state);
  return {s.memory.size() + s.compressive.compressed.size(),
          s.memory.capacity() + s.compressive.compressed.capacity()};
}

absl::StatusOr<const Tensor*> DenseAttentionLayer::RelativeTable(Backend& be, int64_t rows,
                                                                 Tensor& scratch) const {
  if (rel_table_.dim(0) >= rows) return &rel_table_;
  ASSIGN_OR_RETURN(scratch, be.AllocateUninitialized(DType::kF32, {rows, config_.attn_width()}));
  ASSIGN_OR_RETURN(const Tensor sinusoids, be.CopyFromHost(RelativeSinusoids(config_, rows)));
  RETURN_IF_ERROR(be.Linear(sinusoids, weights_->dense.r, nullptr, scratch));
  return &scratch;
}

absl::Status DenseAttentionLayer::Forward(const AttentionCall& call) const {
  const std::vector<SequenceInput>& batch = call.batch;
  RETURN_IF_ERROR(call.matmul(call.input, weights_->qkv, nullptr, call.qkv));
  // Whole sequences attend over [memory | segment] in one call; token_by_token ones attend,
  // compress and append one row at a time (the decode path, row by row).
  std::vector<size_t> whole, stepped;
  int64_t max_steps = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    if (batch[b].token_by_token && batch[b].num_tokens > 1) {
      stepped.push_back(b);
      max_steps = std::max(max_steps, batch[b].num_tokens);
    } else {
      whole.push_back(b);
    }
  }
  if (!whole.empty()) {
    std::vector<Rows> rows;
    rows.reserve(whole.size());
    for (size_t b : whole) rows.push_back({b, 0, batch[b].num_tokens});
    RETURN_IF_ERROR(Attend(call, rows, /*append=*/false));
  }
  for (int64_t i = 0; i < max_steps; ++i) {
    std::vector<Rows> rows;
    for (size_t b : stepped) {
      if (i < batch[b].num_tokens) rows.push_back({b, i, 1});
    }
    RETURN_IF_ERROR(Attend(call, rows, /*append=*/true));
  }
  // The whole sequences' keys/values join the memory only after every query has attended.
  if (whole.empty()) return absl::OkStatus();
  std::vector<MemoryAppendArgs> appends;
  appends.reserve(whole.size());
  for (size_t b : whole) {
    appends.push_back({&call.qkv_rows[b], &call.StateOf<DenseLayerState>(b, layer_).memory});
  }
  RETURN_IF_ERROR(call.backend.AppendToMemory(appends));
  for (size_t b : whole) {
    call.StateOf<DenseLayerState>(b, layer_).memory.Advance(batch[b].num_tokens);
  }
  return absl::OkStatus();
}

absl::Status DenseAttentionLayer::Attend(const AttentionCall& call, const std::vector<Rows>& rows,
                                         bool append) const {
  const ModelConfig& c = config_;
  Backend& be = call.backend;
  const int64_t hd = c.attn_width();
  const TransfoXlLayerWeights& lw = *weights_;
  // Views first: the argument structs point into these vectors.
  std::vector<Tensor> q_rows, out_rows, hidden_rows;
  int64_t table_rows = 1;
  for (const Rows& r : rows) {
    const DenseLayerState& st = call.StateOf<DenseLayerState>(r.seq, layer_);
    const int64_t first = call.offsets[r.seq] + r.begin;
    q_rows.push_back(call.qkv.Rows(first, first + r.count));
    out_rows.push_back(call.out.Rows(first, first + r.count));
    hidden_rows.push_back(call.input.Rows(first, first + r.count));
    kernels::RelativeAttentionShape shape{static_cast<int>(c.n_head),
                                          static_cast<int>(c.d_head),
                                          r.count,
                                          st.memory.size() + st.compressive.compressed.size(),
                                          c.mem_len,
                                          c.clamp_len,
                                          c.same_length};
    table_rows = std::max(table_rows, kernels::RelativeTableRowsNeeded(shape));
  }
  Tensor table_scratch;
  ASSIGN_OR_RETURN(const Tensor* table, RelativeTable(be, table_rows, table_scratch));
  std::vector<RelativeAttentionArgs> args;
  for (size_t k = 0; k < rows.size(); ++k) {
    const size_t b = rows[k].seq;
    DenseLayerState& st = call.StateOf<DenseLayerState>(b, layer_);
    args.push_back(RelativeAttentionArgs{&q_rows[k], &st.memory, table, &lw.dense.r_w_bias,
                                         &lw.dense.r_r_bias, static_cast<int>(c.n_head),
                                         static_cast<int>(c.d_head), c.mem_len, c.clamp_len,
                                         c.same_length, &out_rows[k]});
    if (call.prev_scores[b].defined()) args.back().prev_scores = &call.prev_scores[b];
    if (call.scores[b].defined()) args.back().scores = &call.scores[b];
    if (lc_.dense.compressive()) {
      args.back().compressed = &st.compressive.compressed;
      if (lc_.dense.compression == Compression::kMostUsed)
        args.back().usage = &st.compressive.usage;
    }
  }
  RETURN_IF_ERROR(be.RelativeAttention(args));
  if (lc_.dense.compressive()) {  // evictions are compressed before the append overwrites them
    const Tensor kv_weight = lw.qkv.Rows(hd, 3 * hd);
    std::vector<CompressArgs> compress;
    for (size_t k = 0; k < rows.size(); ++k) {
      DenseLayerState& st = call.StateOf<DenseLayerState>(rows[k].seq, layer_);
      compress.push_back({&hidden_rows[k], &st.memory, &st.compressive, &lc_.dense, &kv_weight,
                          &lw.dense.compress, &lw.dense.compress_bias});
    }
    RETURN_IF_ERROR(be.CompressMemory(compress));
  }
  if (!append) return absl::OkStatus();
  std::vector<MemoryAppendArgs> appends;
  for (size_t k = 0; k < rows.size(); ++k) {
    appends.push_back({&q_rows[k], &call.StateOf<DenseLayerState>(rows[k].seq, layer_).memory});
  }
  RETURN_IF_ERROR(be.AppendToMemory(appends));
  for (const Rows& r : rows) call.StateOf<DenseLayerState>(r.seq, layer_).memory.Advance(r.count);
  return absl::OkStatus();
}

}  // namespace mnemo::engine
