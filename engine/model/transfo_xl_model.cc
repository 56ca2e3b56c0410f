#include "engine/model/transfo_xl_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/checkpoint/safetensors.h"
#include "kernels/cpu/relative_attention.h"

namespace mnemo::engine {
namespace {

// Distances precomputed beyond mem_len when clamp_len does not bound them: covers a prefill
// segment of this many tokens on a full memory without recomputing the table.
constexpr int64_t kTableHeadroom = 512;

}  // namespace

absl::StatusOr<std::unique_ptr<TransfoXlModel>> TransfoXlModel::Load(const std::string& dir) {
  return Load(dir, MakeCpuBackend());
}

absl::StatusOr<std::unique_ptr<TransfoXlModel>> TransfoXlModel::Load(
    const std::string& dir, std::unique_ptr<Backend> backend, const ModelOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                   SafetensorsFile::Open(dir + "/model.safetensors"));
  ASSIGN_OR_RETURN(TransfoXlWeights weights, LoadTransfoXlWeights(config, std::move(file)));
  return Create(std::move(config), std::move(weights), std::move(backend), options);
}

absl::StatusOr<std::unique_ptr<TransfoXlModel>> TransfoXlModel::Create(
    ModelConfig config, TransfoXlWeights weights, std::unique_ptr<Backend> backend,
    const ModelOptions& options) {
  std::unique_ptr<TransfoXlModel> model(
      new TransfoXlModel(std::move(config), std::move(weights), std::move(backend)));
  const ModelConfig& c = model->config_;
  if (options.sparse_weights) model->PlanSparseWeights();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    // Compressive layers change a step's ops every compression_rate steps; listed sparse keys
    // (patterns other than a plain window, global tokens) change the bytes a step uploads as the
    // memory fills or globals arrive. Neither repeats step after step.
    const LayerConfig& lc = c.layer(l);
    const bool listed_keys = lc.attention == AttentionKind::kSparse &&
                             (lc.pattern != SparsePattern::kWindow || lc.has_globals());
    model->record_decode_ = model->record_decode_ && !lc.compressive() && !listed_keys;
  }
  const int64_t hd = c.attn_width();
  // The distance tables and the projection of a zero hidden row (the "zeros" memory) are
  // computed once, in float32 from the host weights, on the CPU backend, whatever the model's
  // device: every backend then starts from the same tables, bit for bit.
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  const int64_t rows = c.clamp_len > 0 ? c.clamp_len + 1 : c.mem_len + kTableHeadroom;
  const Tensor sinusoids = model->Sinusoids(rows);
  std::vector<Tensor> tables, zero_keys, zero_values;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const TransfoXlLayerWeights& lw = model->weights_.layers[l];
    if (!c.is_dense(l)) {  // no positions, no zero-memory rows
      tables.emplace_back();
      zero_keys.emplace_back();
      zero_values.emplace_back();
      model->zero_hidden_.emplace_back();
      continue;
    }
    Tensor table = Tensor::Empty(DType::kF32, {rows, hd});
    RETURN_IF_ERROR(cpu->Linear(sinusoids, lw.r, nullptr, table));
    tables.push_back(std::move(table));
    // A zero hidden row projects to W_k·0 = 0 (post-LN) or W_k·LN(0) = W_k·beta (pre-LN).
    Tensor zero_in = Tensor::Zeros(DType::kF32, {1, c.d_model});
    if (c.pre_lnorm) std::memcpy(zero_in.raw(), lw.attn_ln_beta.raw(), lw.attn_ln_beta.bytes());
    Tensor k = Tensor::Empty(DType::kF32, {1, hd}), v = Tensor::Empty(DType::kF32, {1, hd});
    // Rows hd … 3·hd − 1 of the fused projection are W_k and W_v.
    RETURN_IF_ERROR(cpu->Linear(zero_in, lw.qkv.Rows(hd, 2 * hd), nullptr, k));
    RETURN_IF_ERROR(cpu->Linear(zero_in, lw.qkv.Rows(2 * hd, 3 * hd), nullptr, v));
    zero_keys.push_back(std::move(k));
    zero_values.push_back(std::move(v));
    model->zero_hidden_.push_back(std::move(zero_in));
  }
  Backend& be = *model->backend_;
  if (be.device() == Device::kCpu) {
    model->rel_tables_ = std::move(tables);
    model->zero_keys_ = std::move(zero_keys);
    model->zero_values_ = std::move(zero_values);
    return model;
  }
  // Device backends keep the checkpoint's own weight type (16-bit checkpoints: half the bytes
  // per decode step, tensor-core prefill); the CPU backend computes from float32.
  std::vector<const void*> host_keys;
  for (const Tensor* t : model->WeightMatrices()) {
    host_keys.push_back(t->defined() ? t->raw() : nullptr);
  }
  ASSIGN_OR_RETURN(model->weights_, CopyWeightsTo(model->weights_, be, c.dtype));
  RETURN_IF_ERROR(model->UploadSparseWeights(host_keys));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    // (dense, linear or sparse here: the check above)
    if (!c.is_dense(l)) {  // no distance table, no zero-memory rows
      model->rel_tables_.emplace_back();
      model->zero_keys_.emplace_back();
      model->zero_values_.emplace_back();
      continue;
    }
    ASSIGN_OR_RETURN(Tensor table, be.CopyFromHost(tables[l]));
    ASSIGN_OR_RETURN(Tensor k, be.CopyFromHost(zero_keys[l]));
    ASSIGN_OR_RETURN(Tensor v, be.CopyFromHost(zero_values[l]));
    model->rel_tables_.push_back(std::move(table));
    model->zero_keys_.push_back(std::move(k));
    model->zero_values_.push_back(std::move(v));
    if (c.layer(l).compressive()) {  // the "zeros" memory's hidden rows, for compression
      ASSIGN_OR_RETURN(model->zero_hidden_[l], be.CopyFromHost(model->zero_hidden_[l]));
    }
  }
  RETURN_IF_ERROR(be.Synchronize());
  return model;
}

TransfoXlModel::TransfoXlModel(ModelConfig config, TransfoXlWeights weights,
                               std::unique_ptr<Backend> backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(std::move(backend)) {}

std::vector<const Tensor*> TransfoXlModel::WeightMatrices() const {
  std::vector<const Tensor*> matrices = {&weights_.emb_proj, &weights_.lm_head};
  for (const TransfoXlLayerWeights& lw : weights_.layers) {
    for (const Tensor* t : {&lw.qkv, &lw.o, &lw.fc1, &lw.fc2}) matrices.push_back(t);
  }
  return matrices;
}

void TransfoXlModel::PlanSparseWeights() {
  for (const Tensor* t : WeightMatrices()) {
    if (!t->defined() || sparse_.count(t->raw())) continue;  // shared (ALBERT, tied) once
    if (std::shared_ptr<const SparseWeight> plan = PlanSparseWeight(*t)) {
      sparse_.emplace(t->raw(), std::move(plan));
    }
  }
}

absl::Status TransfoXlModel::UploadSparseWeights(const std::vector<const void*>& host_keys) {
  if (sparse_.empty()) return absl::OkStatus();
  const std::vector<const Tensor*> matrices = WeightMatrices();
  std::map<const void*, std::shared_ptr<const SparseWeight>> uploaded;  // by host buffer
  std::map<const void*, std::shared_ptr<const SparseWeight>> on_device;
  for (size_t i = 0; i < matrices.size(); ++i) {
    const auto plan = sparse_.find(host_keys[i]);
    if (host_keys[i] == nullptr || plan == sparse_.end()) continue;
    std::shared_ptr<const SparseWeight>& done = uploaded[host_keys[i]];
    if (done == nullptr) {
      ASSIGN_OR_RETURN(done, CopySparseWeightTo(*plan->second, *backend_));
    }
    on_device[matrices[i]->raw()] = done;
  }
  sparse_ = std::move(on_device);
  return absl::OkStatus();
}

const SparseWeight* TransfoXlModel::SparseFor(const Tensor& w, int64_t rows) const {
  const auto it = sparse_.find(w.raw());
  if (it == sparse_.end() || !SparsePaysFor(*it->second, rows, w.bytes())) return nullptr;
  return it->second.get();
}

absl::Status TransfoXlModel::MatMul(const Tensor& x, const Tensor& w, const Tensor* bias,
                                    Tensor& y) const {
  if (const SparseWeight* sw = SparseFor(w, x.dim(0))) {
    return backend_->SparseLinear(x, *sw, bias, y);
  }
  return backend_->Linear(x, w, bias, y);
}

std::vector<std::pair<int64_t, double>> TransfoXlModel::SparseWeightSummary() const {
  std::vector<std::pair<int64_t, double>> out;
  for (const auto& [raw, w] : sparse_) {
    out.emplace_back(static_cast<int64_t>(w->bytes()), w->density);
  }
  return out;
}

Tensor TransfoXlModel::Sinusoids(int64_t rows) const {
  // R[p] = [sin(p·f_0 … p·f_{D/2−1}), cos(…)], f_i = 10000^(−2i/D); computed in double and
  // rounded once, so large distances keep full float32 accuracy.
  const int64_t d = config_.d_model, half = d / 2;
  Tensor out = Tensor::Zeros(DType::kF32, {rows, d});
  for (int64_t p = 0; p < rows; ++p) {
    const double pos =
        static_cast<double>(config_.clamp_len > 0 ? std::min(p, config_.clamp_len) : p);
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

absl::StatusOr<const Tensor*> TransfoXlModel::RelativeTable(int layer, int64_t rows,
                                                            Tensor& scratch) const {
  const Tensor& table = rel_tables_[layer];
  if (table.dim(0) >= rows) return &table;
  ASSIGN_OR_RETURN(scratch,
                   backend_->AllocateUninitialized(DType::kF32, {rows, config_.attn_width()}));
  ASSIGN_OR_RETURN(const Tensor sinusoids, backend_->CopyFromHost(Sinusoids(rows)));
  RETURN_IF_ERROR(backend_->Linear(sinusoids, weights_.layers[layer].r, nullptr, scratch));
  return &scratch;
}

absl::StatusOr<SessionState> TransfoXlModel::NewState() const {
  SessionState state;
  Backend& be = *backend_;
  const ModelConfig& c = config_;
  const bool fill = c.memory_init == MemoryInit::kZeros;
  auto ring = [&](int64_t rows) -> absl::StatusOr<XlMemory> {  // an empty K/V ring
    const std::vector<int64_t> shape = {rows, c.attn_width()};
    ASSIGN_OR_RETURN(Tensor keys, be.Allocate(DType::kF32, shape));
    ASSIGN_OR_RETURN(Tensor values, be.Allocate(DType::kF32, shape));
    return XlMemory(std::move(keys), std::move(values));
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerConfig& lc = c.layer(l);
    state.aux().emplace_back();
    LayerAuxState& aux = state.aux().back();
    if (lc.attention == AttentionKind::kSparse) {  // an empty rolling window (+ global store)
      ASSIGN_OR_RETURN(XlMemory window, ring(lc.sparse_span()));
      state.layers().push_back(std::move(window));
      state.linear().emplace_back();
      if (lc.has_globals()) {
        ASSIGN_OR_RETURN(aux.globals, ring(lc.max_global));
        aux.global_positions.assign(static_cast<size_t>(lc.max_global), -1);
      }
      continue;
    }
    if (lc.attention == AttentionKind::kLsh) {  // normalised keys, values, buckets
      ASSIGN_OR_RETURN(XlMemory history, ring(lc.history - 1));
      state.layers().push_back(std::move(history));
      state.linear().emplace_back();
      ASSIGN_OR_RETURN(aux.buckets,
                       be.Allocate(DType::kI32, {lc.history - 1, c.n_head * lc.n_hashes}));
      continue;
    }
    if (!c.is_dense(l)) {  // linear: zero sums, no memory
      const int64_t m = c.linear_features(l);
      LinearState linear;
      ASSIGN_OR_RETURN(linear.s, be.Allocate(DType::kF32, {c.n_head, m, c.d_head}));
      ASSIGN_OR_RETURN(linear.z, be.Allocate(DType::kF32, {c.n_head, m}));
      state.layers().emplace_back();
      state.linear().push_back(std::move(linear));
      continue;
    }
    const std::vector<int64_t> shape = {c.mem_len, c.attn_width()};
    ASSIGN_OR_RETURN(Tensor keys, fill ? be.AllocateUninitialized(DType::kF32, shape)
                                       : be.Allocate(DType::kF32, shape));
    ASSIGN_OR_RETURN(Tensor values, fill ? be.AllocateUninitialized(DType::kF32, shape)
                                         : be.Allocate(DType::kF32, shape));
    XlMemory memory(std::move(keys), std::move(values));
    if (fill) {
      RETURN_IF_ERROR(be.FillRows(zero_keys_[l], memory.keys()));
      RETURN_IF_ERROR(be.FillRows(zero_values_[l], memory.values()));
      memory.MarkFull();
    }
    if (lc.compressive()) {
      const int64_t rate = lc.compression_rate;
      ASSIGN_OR_RETURN(aux.hidden, be.Allocate(DType::kF32, {c.mem_len, c.d_model}));
      if (fill) RETURN_IF_ERROR(be.FillRows(zero_hidden_[l], aux.hidden));
      ASSIGN_OR_RETURN(aux.pending, be.Allocate(DType::kF32, {rate, c.d_model}));
      ASSIGN_OR_RETURN(aux.compressed, ring(lc.cmem_len));
      if (lc.compression == Compression::kMostUsed) {
        ASSIGN_OR_RETURN(aux.usage, be.Allocate(DType::kF32, {c.mem_len}));
        ASSIGN_OR_RETURN(aux.pending_usage, be.Allocate(DType::kF32, {rate}));
      }
    }
    state.layers().push_back(std::move(memory));
    state.linear().emplace_back();
  }
  return state;
}

size_t TransfoXlModel::LayerStateBytes(int64_t l) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layer(l);
  const int64_t hd = c.attn_width();
  constexpr size_t kF = sizeof(float);
  switch (lc.attention) {
    case AttentionKind::kDense: {
      size_t bytes = SessionStateBytes(1, c.mem_len, hd);
      if (lc.compressive()) {
        bytes += SessionStateBytes(1, lc.cmem_len, hd) +
                 static_cast<size_t>((c.mem_len + lc.compression_rate) * c.d_model) * kF;
        if (lc.compression == Compression::kMostUsed) {
          bytes += static_cast<size_t>(c.mem_len + lc.compression_rate) * kF;
        }
      }
      return bytes;
    }
    case AttentionKind::kSparse:
      return SessionStateBytes(1, lc.sparse_span() + lc.max_global, hd);
    case AttentionKind::kLsh:
      return SessionStateBytes(1, lc.history - 1, hd) +
             static_cast<size_t>((lc.history - 1) * c.n_head * lc.n_hashes) * sizeof(int32_t);
    case AttentionKind::kLinear: {
      const int64_t m = c.linear_features(l);
      return static_cast<size_t>(c.n_head * (m * c.d_head + m)) * kF;
    }
  }
  return 0;
}

size_t TransfoXlModel::StateBytes() const {
  size_t total = 0;
  for (int64_t l = 0; l < config_.n_layer; ++l) total += LayerStateBytes(l);
  return total;
}

bool TransfoXlModel::StateFits(const SessionState& state) const {
  const ModelConfig& c = config_;
  const auto& layers = state.layers();
  const auto& linear = state.linear();
  if (static_cast<int64_t>(layers.size()) != c.n_layer ||
      static_cast<int64_t>(linear.size()) != c.n_layer ||
      static_cast<int64_t>(state.aux().size()) != c.n_layer) {
    return false;
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const XlMemory& m = layers[l];
    const LinearState& lin = linear[l];
    // Everything beside the ring has a size fixed by the config: its bytes say whether it fits.
    const size_t ring_bytes = m.bytes() + lin.bytes();
    if (ring_bytes + state.aux()[l].bytes() != LayerStateBytes(l)) return false;
    if (c.layer(l).attention != AttentionKind::kLinear) {  // dense, sparse, lsh: a K/V ring
      const AttentionKind kind = c.layer(l).attention;
      const int64_t capacity = kind == AttentionKind::kDense    ? c.mem_len
                               : kind == AttentionKind::kSparse ? c.layer(l).sparse_span()
                                                                : c.layer(l).history - 1;
      if (!m.keys().defined() || m.capacity() != capacity || m.width() != c.attn_width() ||
          lin.defined()) {
        return false;
      }
    } else {
      const int64_t f = c.linear_features(l);
      if (m.keys().defined() || !lin.defined() ||
          lin.s.shape() != std::vector<int64_t>{c.n_head, f, c.d_head} ||
          lin.z.shape() != std::vector<int64_t>{c.n_head, f}) {
        return false;
      }
    }
  }
  return true;
}

template <typename CopyFn>
absl::StatusOr<SessionState> TransfoXlModel::CopyState(const SessionState& state,
                                                       CopyFn copy) const {
  if (!StateFits(state)) {
    return absl::InvalidArgumentError("session state was not made by this model");
  }
  SessionState out;
  for (size_t l = 0; l < state.layers().size(); ++l) {
    const XlMemory& m = state.layers()[l];
    const LinearState& lin = state.linear()[l];
    ASSIGN_OR_RETURN(LayerAuxState aux, state.aux()[l].Map(copy));
    out.aux().push_back(std::move(aux));
    if (lin.defined()) {
      LinearState linear;
      ASSIGN_OR_RETURN(linear.s, copy(lin.s));
      ASSIGN_OR_RETURN(linear.z, copy(lin.z));
      out.layers().emplace_back();
      out.linear().push_back(std::move(linear));
      continue;
    }
    ASSIGN_OR_RETURN(Tensor keys, copy(m.keys()));
    ASSIGN_OR_RETURN(Tensor values, copy(m.values()));
    out.layers().push_back(m.WithStorage(std::move(keys), std::move(values)));
    out.linear().emplace_back();
  }
  out.set_position(state.position());
  return out;
}

absl::StatusOr<SessionState> TransfoXlModel::CloneState(const SessionState& state) const {
  if (state.device() != backend_->device()) {
    return absl::InvalidArgumentError("session state is not on the model's device");
  }
  return CopyState(state, [&](const Tensor& t) -> absl::StatusOr<Tensor> {
    ASSIGN_OR_RETURN(Tensor copy, backend_->AllocateUninitialized(t.dtype(), t.shape()));
    RETURN_IF_ERROR(backend_->Copy(t, copy));
    return copy;
  });
}

absl::Status TransfoXlModel::CopyStateInto(const SessionState& state, SessionState* dst) const {
  if (state.device() != backend_->device()) {
    return absl::InvalidArgumentError("session state is not on the model's device");
  }
  // dst's tensors in the order CopyState visits them; a state of the same model visits the same
  // slots, so each source tensor lands in the buffer that held its counterpart.
  std::vector<Tensor> spare;
  if (StateFits(*dst) && dst->device() == backend_->device()) {
    RETURN_IF_ERROR(CopyState(*dst, [&](const Tensor& t) -> absl::StatusOr<Tensor> {
                      spare.push_back(t);
                      return t;
                    }).status());
  }
  size_t next = 0;
  ASSIGN_OR_RETURN(SessionState copy,
                   CopyState(state, [&](const Tensor& t) -> absl::StatusOr<Tensor> {
                     Tensor out;
                     if (next < spare.size() && spare[next].dtype() == t.dtype() &&
                         spare[next].shape() == t.shape()) {
                       out = spare[next];
                     } else {
                       ASSIGN_OR_RETURN(out, backend_->AllocateUninitialized(t.dtype(), t.shape()));
                     }
                     ++next;
                     RETURN_IF_ERROR(backend_->Copy(t, out));
                     return out;
                   }));
  *dst = std::move(copy);
  return absl::OkStatus();
}

absl::StatusOr<SessionState> TransfoXlModel::StateToHost(const SessionState& state) const {
  if (state.device() != backend_->device()) {
    return absl::InvalidArgumentError("session state is not on the model's device");
  }
  return CopyState(state, [&](const Tensor& t) { return backend_->CopyToHost(t); });
}

absl::StatusOr<SessionState> TransfoXlModel::StateFromHost(const SessionState& host_state) const {
  if (host_state.device() != Device::kCpu) {
    return absl::InvalidArgumentError("StateFromHost needs a host state");
  }
  return CopyState(host_state, [&](const Tensor& t) { return backend_->CopyFromHost(t); });
}

absl::Status TransfoXlModel::Validate(const std::vector<SequenceInput>& batch) const {
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  std::set<const SessionState*> seen;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SequenceInput& s = batch[b];
    if (s.num_tokens <= 0 || s.tokens == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", b, " has no tokens"));
    }
    if (s.state == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("sequence ", b, " has no state"));
    if (!seen.insert(s.state).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", b, " repeats a session state"));
    }
    if (!StateFits(*s.state)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", b, ": session state was not made by this model"));
    }
    if (s.state->device() != backend_->device()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", b,
                       ": session state is on another device (offloaded states must be "
                       "restored with StateFromHost first)"));
    }
    if (s.token_by_token && s.num_tokens > 1 && UsesResidualAttention()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", b, ": token_by_token is not supported for residual_attention models"));
    }
    if (config_.max_positions() > 0 &&
        s.state->position() + s.num_tokens > config_.max_positions()) {
      return absl::OutOfRangeError(absl::StrCat(
          "sequence ", b, ": positions up to ", s.state->position() + s.num_tokens,
          " exceed the model's position limit of ", config_.max_positions(), " (axial_pos_shape)"));
    }
    for (int64_t t = 0; t < s.num_tokens; ++t) {
      if (s.tokens[t] < 0 || s.tokens[t] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", b, " token ", t, ": id ",
                                                       s.tokens[t], " outside vocabulary [0, ",
                                                       config_.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

bool TransfoXlModel::UsesResidualAttention() const {
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    if (config_.passes_scores(l) || config_.adds_scores(l)) return true;
  }
  return false;
}

absl::Status TransfoXlModel::DenseAttention(const std::vector<SequenceInput>& batch,
                                            const std::vector<DenseRows>& rows, int64_t l,
                                            const Tensor& attn_in, const Tensor& qkv, Tensor& attn,
                                            const std::vector<int64_t>& offsets,
                                            const std::vector<Tensor>& prev_scores,
                                            std::vector<Tensor>& scores, bool append) {
  const ModelConfig& c = config_;
  Backend& be = *backend_;
  const int64_t hd = c.attn_width();
  const TransfoXlLayerWeights& lw = weights_.layers[l];
  const LayerConfig& lc = c.layer(l);
  // Views first: the argument structs point into these vectors.
  std::vector<Tensor> q_rows, out_rows, hidden_rows;
  int64_t table_rows = 1;
  for (const DenseRows& r : rows) {
    const SessionState& st = *batch[r.seq].state;
    const int64_t first = offsets[r.seq] + r.begin;
    q_rows.push_back(qkv.Rows(first, first + r.count));
    out_rows.push_back(attn.Rows(first, first + r.count));
    hidden_rows.push_back(attn_in.Rows(first, first + r.count));
    kernels::RelativeAttentionShape shape{static_cast<int>(c.n_head),
                                          static_cast<int>(c.d_head),
                                          r.count,
                                          st.layers()[l].size() + st.aux()[l].compressed.size(),
                                          c.mem_len,
                                          c.clamp_len,
                                          c.same_length};
    table_rows = std::max(table_rows, kernels::RelativeTableRowsNeeded(shape));
  }
  Tensor table_scratch;
  ASSIGN_OR_RETURN(const Tensor* table,
                   RelativeTable(static_cast<int>(l), table_rows, table_scratch));
  std::vector<RelativeAttentionArgs> args;
  for (size_t k = 0; k < rows.size(); ++k) {
    const size_t b = rows[k].seq;
    SessionState& st = *batch[b].state;
    args.push_back(RelativeAttentionArgs{
        &q_rows[k], &st.layers()[l], table, &lw.r_w_bias, &lw.r_r_bias, static_cast<int>(c.n_head),
        static_cast<int>(c.d_head), c.mem_len, c.clamp_len, c.same_length, &out_rows[k]});
    if (prev_scores[b].defined()) args.back().prev_scores = &prev_scores[b];
    if (scores[b].defined()) args.back().scores = &scores[b];
    if (lc.compressive()) {
      LayerAuxState& aux = st.aux()[l];
      args.back().compressed = &aux.compressed;
      if (lc.compression == Compression::kMostUsed) args.back().usage = &aux.usage;
    }
  }
  RETURN_IF_ERROR(be.RelativeAttention(args));
  if (lc.compressive()) {  // evictions are compressed before the append overwrites them
    const Tensor kv_weight = lw.qkv.Rows(hd, 3 * hd);
    std::vector<CompressArgs> compress;
    for (size_t k = 0; k < rows.size(); ++k) {
      SessionState& st = *batch[rows[k].seq].state;
      compress.push_back({&hidden_rows[k], &st.layers()[l], &st.aux()[l], &lc, &kv_weight,
                          &lw.compress, &lw.compress_bias});
    }
    RETURN_IF_ERROR(be.CompressMemory(compress));
  }
  if (!append) return absl::OkStatus();
  std::vector<MemoryAppendArgs> appends;
  for (size_t k = 0; k < rows.size(); ++k) {
    appends.push_back({&q_rows[k], &batch[rows[k].seq].state->layers()[l]});
  }
  RETURN_IF_ERROR(be.AppendToMemory(appends));
  for (const DenseRows& r : rows) batch[r.seq].state->layers()[l].Advance(r.count);
  return absl::OkStatus();
}

absl::Status TransfoXlModel::Forward(const std::vector<SequenceInput>& batch, LogitsMode mode,
                                     Tensor* logits) {
  RETURN_IF_ERROR(Validate(batch));
  // A decode batch (one token per sequence) issues the same ops on the same shapes every step
  // for a given batch size: the backend may record it once and replay it (CUDA graphs). Not
  // for the layer kinds whose steps differ (record_decode_).
  const bool decode = std::all_of(batch.begin(), batch.end(),
                                  [](const SequenceInput& s) { return s.num_tokens == 1; });
  if (!decode || !record_decode_) return Run(batch, mode, logits);
  const uint64_t key = (static_cast<uint64_t>(batch.size()) << 8) | static_cast<uint64_t>(mode);
  RETURN_IF_ERROR(backend_->BeginStep(key));
  absl::Status status = Run(batch, mode, logits);
  if (!status.ok()) {
    backend_->AbortStep();
    return status;
  }
  return backend_->EndStep();
}

absl::Status TransfoXlModel::Run(const std::vector<SequenceInput>& batch, LogitsMode mode,
                                 Tensor* logits) {
  const ModelConfig& c = config_;
  Backend& be = *backend_;
  const int64_t d = c.d_model, hd = c.attn_width();
  std::vector<int32_t> ids;
  std::vector<int64_t> offsets;  // first row of each sequence in the packed batch
  for (const SequenceInput& s : batch) {
    offsets.push_back(static_cast<int64_t>(ids.size()));
    ids.insert(ids.end(), s.tokens, s.tokens + s.num_tokens);
  }
  const int64_t n = static_cast<int64_t>(ids.size());

  // Scratch: every element is written before it is read.
  auto scratch = [&](std::vector<int64_t> shape) {
    return be.AllocateUninitialized(DType::kF32, std::move(shape));
  };
  ASSIGN_OR_RETURN(Tensor x, scratch({n, d}));              // [N, D] residual stream
  ASSIGN_OR_RETURN(Tensor h, scratch({n, d}));              // [N, D] normed input
  ASSIGN_OR_RETURN(Tensor qkv, scratch({n, 3 * hd}));       // [N, 3·H·d_h]
  ASSIGN_OR_RETURN(Tensor attn, scratch({n, hd}));          // [N, H·d_h]
  ASSIGN_OR_RETURN(Tensor proj, scratch({n, d}));           // [N, D]
  ASSIGN_OR_RETURN(Tensor inner, scratch({n, c.d_inner}));  // [N, d_inner]
  const float emb_scale = std::sqrt(static_cast<float>(d));
  if (weights_.emb_proj.defined()) {  // factorised (ALBERT): [N, E] then up to the model width
    ASSIGN_OR_RETURN(Tensor e, scratch({n, c.embed_width()}));
    RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, emb_scale, e));
    RETURN_IF_ERROR(MatMul(e, weights_.emb_proj, &weights_.emb_proj_bias, x));
  } else {
    RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, c.reformer ? 1.0f : emb_scale, x));
  }
  Tensor x2;  // a reformer's second stream
  if (c.reformer) {
    // Axial position embeddings: position p adds [P0[⌊p / n1⌋], P1[p mod n1]].
    const int64_t n1 = c.axial_pos_shape[1], e0 = c.axial_pos_embds_dim[0];
    const int64_t e1 = c.axial_pos_embds_dim[1];
    std::vector<int32_t> rows0, rows1;  // (positions are below n0·n1: Validate)
    for (const SequenceInput& s : batch) {
      for (int64_t i = 0; i < s.num_tokens; ++i) {
        const int64_t p = s.state->position() + i;
        rows0.push_back(static_cast<int32_t>(p / n1));
        rows1.push_back(static_cast<int32_t>(p % n1));
      }
    }
    ASSIGN_OR_RETURN(const Tensor table0, weights_.pos_emb0.Reshaped({c.axial_pos_shape[0], e0}));
    ASSIGN_OR_RETURN(const Tensor table1, weights_.pos_emb1.Reshaped({n1, e1}));
    ASSIGN_OR_RETURN(Tensor pos0, scratch({n, e0}));
    ASSIGN_OR_RETURN(Tensor pos1, scratch({n, e1}));
    ASSIGN_OR_RETURN(Tensor pos, scratch({n, d}));
    RETURN_IF_ERROR(be.Embedding(table0, rows0, 1.0f, pos0));
    RETURN_IF_ERROR(be.Embedding(table1, rows1, 1.0f, pos1));
    RETURN_IF_ERROR(be.ConcatColumns(pos0, pos1, pos));
    RETURN_IF_ERROR(be.Add(x, pos, x));
    ASSIGN_OR_RETURN(x2, scratch({n, d}));
    RETURN_IF_ERROR(be.Copy(x, x2));
  }

  const float eps = static_cast<float>(c.layer_norm_epsilon);
  std::vector<Tensor> qkv_rows, attn_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    qkv_rows.push_back(qkv.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
    attn_rows.push_back(attn.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
  }
  // RealFormer: per sequence, the scores the previous layer passed on and this layer's.
  std::vector<Tensor> prev_scores(batch.size()), scores(batch.size());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const TransfoXlLayerWeights& lw = weights_.layers[l];
    if (c.adds_scores(l)) {
      prev_scores.swap(scores);
    } else {
      prev_scores.assign(batch.size(), Tensor());
    }
    scores.assign(batch.size(), Tensor());
    if (c.passes_scores(l)) {
      for (size_t b = 0; b < batch.size(); ++b) {
        const SessionState& st = *batch[b].state;
        const int64_t t = batch[b].num_tokens;
        const int64_t keys = st.layers()[l].size() + st.aux()[l].compressed.size() + t;
        // Sized for full memories: every decode step of a session then asks the backend for the
        // same bytes (a recorded step's arena is measured once), while the memories fill.
        const int64_t max_keys = st.layers()[l].capacity() + st.aux()[l].compressed.capacity() + t;
        ASSIGN_OR_RETURN(Tensor buffer, be.Allocate(DType::kF32, {c.n_head * t * max_keys}));
        ASSIGN_OR_RETURN(scores[b],
                         buffer.Rows(0, c.n_head * t * keys).Reshaped({c.n_head, t, keys}));
      }
    }
    auto score_args = [&](size_t b, auto& args) {
      if (prev_scores[b].defined()) args.prev_scores = &prev_scores[b];
      if (scores[b].defined()) args.scores = &scores[b];
    };
    // Attention. With pre-LN the keys are projected from LN(x) (memory rows included, which is
    // why the memory stores projected keys/values rather than raw hidden states).
    const Tensor* attn_in = &x;
    if (c.pre_lnorm) {  // (a reformer's attention reads its second stream)
      RETURN_IF_ERROR(be.LayerNorm(c.reformer ? x2 : x, lw.attn_ln_gamma, lw.attn_ln_beta, eps, h));
      attn_in = &h;
    }
    const LayerConfig& lc = c.layer(l);
    if (lc.attention != AttentionKind::kLsh) {
      RETURN_IF_ERROR(MatMul(*attn_in, lw.qkv, nullptr, qkv));
    }
    if (lc.attention == AttentionKind::kLsh) {  // shared qk | v; the op writes the ring itself
      ASSIGN_OR_RETURN(Tensor qk_v, scratch({n, 2 * hd}));
      RETURN_IF_ERROR(MatMul(*attn_in, lw.qkv, nullptr, qk_v));
      std::vector<Tensor> rows;
      for (size_t b = 0; b < batch.size(); ++b) {
        rows.push_back(qk_v.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
      }
      std::vector<LshAttentionArgs> args;
      for (size_t b = 0; b < batch.size(); ++b) {
        args.push_back({&rows[b], &batch[b].state->layers()[l], &batch[b].state->aux()[l], &lc,
                        &lw.rotations, static_cast<int>(c.n_head), static_cast<int>(c.d_head),
                        &attn_rows[b]});
      }
      RETURN_IF_ERROR(be.LshAttention(args));
      for (size_t b = 0; b < batch.size(); ++b) {
        batch[b].state->layers()[l].Advance(batch[b].num_tokens);
      }
    } else if (lc.attention == AttentionKind::kSparse) {
      std::vector<SparseAttentionArgs> args;
      for (size_t b = 0; b < batch.size(); ++b) {
        args.push_back({&qkv_rows[b], &batch[b].state->layers()[l], &lc, static_cast<int>(c.n_head),
                        static_cast<int>(c.d_head), &attn_rows[b], batch[b].tokens,
                        batch[b].state->position(), &batch[b].state->aux()[l]});
        score_args(b, args.back());
      }
      RETURN_IF_ERROR(be.SparseAttention(args));
    } else if (!c.is_dense(l)) {  // linear attention: the state advances with the outputs
      std::vector<Tensor> input_rows;
      for (size_t b = 0; b < batch.size(); ++b) {
        input_rows.push_back(attn_in->Rows(offsets[b], offsets[b] + batch[b].num_tokens));
      }
      std::vector<LinearAttentionArgs> args;
      for (size_t b = 0; b < batch.size(); ++b) {
        args.push_back({&qkv_rows[b], &input_rows[b], &c.layer(l), &lw.features, &lw.gate_weight,
                        &lw.gate_bias, &batch[b].state->linear()[l], static_cast<int>(c.n_head),
                        static_cast<int>(c.d_head), &attn_rows[b]});
      }
      RETURN_IF_ERROR(be.LinearAttention(args));
    } else {
      // Dense: whole sequences attend over [memory | segment] in one call; token_by_token ones
      // attend, compress and append one row at a time (the decode path, row by row).
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
        std::vector<DenseRows> rows;
        rows.reserve(whole.size());
        for (size_t b : whole) {
          rows.push_back({b, 0, batch[b].num_tokens});
        }
        RETURN_IF_ERROR(DenseAttention(batch, rows, l, *attn_in, qkv, attn, offsets, prev_scores,
                                       scores, /*append=*/false));
      }
      for (int64_t i = 0; i < max_steps; ++i) {
        std::vector<DenseRows> rows;
        for (size_t b : stepped) {
          if (i < batch[b].num_tokens) rows.push_back({b, i, 1});
        }
        RETURN_IF_ERROR(DenseAttention(batch, rows, l, *attn_in, qkv, attn, offsets, prev_scores,
                                       scores, /*append=*/true));
      }
    }
    if (lc.attention == AttentionKind::kDense || lc.attention == AttentionKind::kSparse) {
      // Dense and sparse layers keep a K/V ring: the new positions' keys/values join it only
      // after every query has attended.
      std::vector<MemoryAppendArgs> appends;
      std::vector<size_t> appended;
      for (size_t b = 0; b < batch.size(); ++b) {
        if (c.is_dense(l) && batch[b].token_by_token && batch[b].num_tokens > 1) continue;
        appends.push_back({&qkv_rows[b], &batch[b].state->layers()[l]});
        appended.push_back(b);
      }
      if (!appends.empty()) RETURN_IF_ERROR(be.AppendToMemory(appends));
      for (size_t b : appended) batch[b].state->layers()[l].Advance(batch[b].num_tokens);
    }
    RETURN_IF_ERROR(MatMul(attn, lw.o, nullptr, proj));
    // Residual, then the LayerNorm that follows it: post-LN normalises x itself; pre-LN keeps x
    // and normalises into the FFN's input.
    const Tensor* ff_in = &x;
    if (c.pre_lnorm) {
      RETURN_IF_ERROR(be.AddLayerNorm(x, proj, lw.ff_ln_gamma, lw.ff_ln_beta, eps, h));
      ff_in = &h;
    } else {
      RETURN_IF_ERROR(be.AddLayerNorm(x, proj, lw.attn_ln_gamma, lw.attn_ln_beta, eps, x));
    }

    // Position-wise FFN.
    if (const SparseWeight* sw = SparseFor(lw.fc1, ff_in->dim(0))) {
      RETURN_IF_ERROR(be.SparseLinear(*ff_in, *sw, nullptr, inner));
      RETURN_IF_ERROR(be.BiasActivation(lw.fc1_bias, c.activation, inner));
    } else {
      RETURN_IF_ERROR(be.LinearBiasActivation(*ff_in, lw.fc1, lw.fc1_bias, c.activation, inner));
    }
    RETURN_IF_ERROR(MatMul(inner, lw.fc2, &lw.fc2_bias, proj));
    if (c.pre_lnorm) {
      Tensor& target = c.reformer ? x2 : x;  // reversible: the FFN feeds the second stream
      RETURN_IF_ERROR(be.Add(target, proj, target));
    } else {
      RETURN_IF_ERROR(be.AddLayerNorm(x, proj, lw.ff_ln_gamma, lw.ff_ln_beta, eps, x));
    }
  }
  for (const SequenceInput& s : batch) s.state->Advance(s.num_tokens);

  if (mode == LogitsMode::kNone) return be.Synchronize();
  Tensor last = x;
  if (c.reformer) {  // the head reads LayerNorm([A | X])
    ASSIGN_OR_RETURN(last, scratch({n, 2 * d}));
    RETURN_IF_ERROR(be.ConcatColumns(x, x2, last));
    RETURN_IF_ERROR(be.LayerNorm(last, weights_.final_ln_gamma, weights_.final_ln_beta, eps, last));
  }
  const int64_t bsz = static_cast<int64_t>(batch.size());
  if (mode == LogitsMode::kLast && n != bsz) {
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < bsz; ++b) rows.push_back(offsets[b] + batch[b].num_tokens - 1);
    Tensor all = last;
    ASSIGN_OR_RETURN(last, scratch({bsz, c.head_width()}));
    RETURN_IF_ERROR(be.GatherRows(all, rows, last));
  }
  ASSIGN_OR_RETURN(Tensor out, scratch({last.dim(0), c.vocab_size}));
  RETURN_IF_ERROR(MatMul(last, weights_.lm_head, &weights_.lm_head_bias, out));
  if (be.device() == Device::kCpu) {
    *logits = std::move(out);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(*logits, be.CopyToHost(out));
  return absl::OkStatus();
}

}  // namespace mnemo::engine
