#include "engine/model/transfo_xl_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/attention/registry.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/model/adaptive_vocabulary.h"

namespace mnemo::engine {
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
  Backend& be = *model->backend_;
  // Host weight matrices in the type the model computes from: the checkpoint's own (16-bit
  // checkpoints: half the bytes per decode step) on every backend, unless the CPU is told to
  // widen them (CpuWeights::kFloat32, the oracle form). Already in that type (the mapped
  // loader's), they are used as they are.
  const bool widen_on_cpu = be.device() == Device::kCpu &&
                            (c.dtype == DType::kF32 || options.cpu_weights == CpuWeights::kFloat32);
  model->weights_ =
      WeightsAs(model->weights_, WeightSet::kMatrices, widen_on_cpu ? DType::kF32 : c.dtype);
  if (options.sparse_weights) model->PlanSparseWeights();
  // Each layer's kind precomputes its constants from the host weights (the distance tables
  // and the "zeros" memory's rows: computed in float32 on the CPU backend whatever the model's
  // device, so every backend starts from the same constants bit for bit; the rows are then
  // stored in the session memory's dtype).
  AttentionLoadContext context;
  if (options.session_memory != DType::kF32 && be.device() != Device::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session-memory ", DTypeName(options.session_memory),
                     " runs on the CPU backend only; this model runs on ", std::string(be.name())));
  }
  if (options.session_memory == DType::kI32) {
    return absl::InvalidArgumentError("session memory must be float32, bfloat16 or float16");
  }
  context.session_memory = options.session_memory;
  // An adaptive embedding's ops depend on which bands a step's ids fall in: not repeatable.
  model->record_decode_ = !c.adaptive;
  model->session_memory_ = options.session_memory;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    ASSIGN_OR_RETURN(std::unique_ptr<AttentionLayer> layer,
                     MakeAttentionLayer(c, l, model->weights_.layers[l], context));
    // Steps of some kinds do not repeat exactly (AttentionLayer::RepeatsSteps).
    model->record_decode_ = model->record_decode_ && layer->RepeatsSteps();
    model->attention_.push_back(std::move(layer));
  }
  if (be.device() != Device::kCpu) {
    std::vector<const void*> host_keys;
    for (const Tensor* t : model->WeightMatrices()) {
      host_keys.push_back(t->defined() ? t->raw() : nullptr);
    }
    ASSIGN_OR_RETURN(model->weights_, CopyWeightsTo(model->weights_, be));
    RETURN_IF_ERROR(model->UploadSparseWeights(host_keys));
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    RETURN_IF_ERROR(model->attention_[l]->Bind(model->weights_.layers[l], be));
  }
  if (be.device() != Device::kCpu) RETURN_IF_ERROR(be.Synchronize());
  // After the constants above: those stay the oracle's, whatever the steps' products.
  be.AllowBf16Products(options.cpu_weights == CpuWeights::kBf16Products);
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

absl::StatusOr<SessionState> TransfoXlModel::NewState() const {
  SessionState state;
  for (const auto& layer : attention_) {
    ASSIGN_OR_RETURN(std::unique_ptr<LayerState> s, layer->NewState(*backend_));
    state.layers().push_back(std::move(s));
  }
  return state;
}

size_t TransfoXlModel::LayerStateBytes(int64_t l) const { return attention_[l]->StateBytes(); }

size_t TransfoXlModel::StateBytes() const {
  size_t total = 0;
  for (const auto& layer : attention_) total += layer->StateBytes();
  return total;
}

bool TransfoXlModel::StateFits(const SessionState& state) const {
  if (state.num_layers() != config_.n_layer) return false;
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    if (state.layers()[l] == nullptr || !attention_[l]->Fits(state.layer(l))) return false;
  }
  return true;
}

absl::StatusOr<SessionState> TransfoXlModel::CopyState(const SessionState& state,
                                                       TensorCopy copy) const {
  if (!StateFits(state)) {
    return absl::InvalidArgumentError("session state was not made by this model");
  }
  SessionState out;
  for (const auto& layer : state.layers()) {
    ASSIGN_OR_RETURN(std::unique_ptr<LayerState> s, layer->Map(copy));
    out.layers().push_back(std::move(s));
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
      return absl::OutOfRangeError(
          absl::StrCat("sequence ", b, ": positions up to ", s.state->position() + s.num_tokens,
                       " exceed the model's position limit of ", config_.max_positions(), " (",
                       config_.max_positions_source(), ")"));
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

absl::Status TransfoXlModel::Forward(const std::vector<SequenceInput>& batch, LogitsMode mode,
                                     Tensor* logits) {
  RETURN_IF_ERROR(Validate(batch));
  RETURN_IF_ERROR(RunStep(batch, mode, logits));
  if (config_.final_softcap > 0.0 && mode != LogitsMode::kNone) {  // Gemma-2, on the host logits
    const auto cap = static_cast<float>(config_.final_softcap);
    float* v = logits->data<float>();
    for (int64_t i = 0; i < logits->numel(); ++i) v[i] = cap * std::tanh(v[i] / cap);
  }
  return absl::OkStatus();
}

absl::Status TransfoXlModel::RunStep(const std::vector<SequenceInput>& batch, LogitsMode mode,
                                     Tensor* logits) {
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
  ASSIGN_OR_RETURN(Tensor x, scratch({n, d}));                // [N, D] residual stream
  ASSIGN_OR_RETURN(Tensor h, scratch({n, d}));                // [N, D] normed input
  ASSIGN_OR_RETURN(Tensor qkv, scratch({n, c.qkv_width()}));  // [N, (H + 2·H_kv)·d_h]
  ASSIGN_OR_RETURN(Tensor attn, scratch({n, hd}));            // [N, H·d_h]
  ASSIGN_OR_RETURN(Tensor proj, scratch({n, d}));             // [N, D]
  ASSIGN_OR_RETURN(Tensor inner, scratch({n, c.d_inner}));    // [N, d_inner]
  Tensor gate_up;  // mistral, gemma2: [N, 2·d_inner], the gated MLP's gate | up
  if (c.rotary_decoder) {
    ASSIGN_OR_RETURN(gate_up, scratch({n, 2 * c.d_inner}));
  }
  const float emb_scale = std::sqrt(static_cast<float>(d));
  if (c.adaptive) {
    RETURN_IF_ERROR(AdaptiveEmbed(be, c, weights_.adaptive, ids, emb_scale, x));
  } else if (weights_.emb_proj.defined()) {
    // Factorised (ALBERT): [N, E], then up to the model width.
    ASSIGN_OR_RETURN(Tensor e, scratch({n, c.embed_width()}));
    RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, emb_scale, e));
    RETURN_IF_ERROR(MatMul(e, weights_.emb_proj, &weights_.emb_proj_bias, x));
  } else {
    // Transformer-XL and Gemma-2 scale the embedding by sqrt(d_model).
    const bool scaled = (!c.reformer && !c.rotary_decoder) || c.gemma2;
    RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, scaled ? emb_scale : 1.0f, x));
  }
  std::vector<int64_t> positions;  // rotary: each packed row's stream position
  if (c.rotary_decoder) {
    positions.reserve(static_cast<size_t>(n));
    for (const SequenceInput& s : batch) {
      for (int64_t i = 0; i < s.num_tokens; ++i) positions.push_back(s.state->position() + i);
    }
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
  std::vector<Tensor> qkv_rows, attn_rows;  // per sequence, views shared by every layer
  for (size_t b = 0; b < batch.size(); ++b) {
    qkv_rows.push_back(qkv.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
    attn_rows.push_back(attn.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
  }
  const auto matmul = [this](const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
    return MatMul(x, w, bias, y);
  };
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
        const int64_t t = batch[b].num_tokens;
        const auto [memory_keys, max_memory_keys] =
            attention_[l]->ScoredMemoryKeys(batch[b].state->layer(l));
        const int64_t keys = memory_keys + t;
        // Sized for full memories: every decode step of a session then asks the backend for the
        // same bytes (a recorded step's arena is measured once), while the memories fill.
        const int64_t max_keys = max_memory_keys + t;
        ASSIGN_OR_RETURN(Tensor buffer, be.Allocate(DType::kF32, {c.n_head * t * max_keys}));
        ASSIGN_OR_RETURN(scores[b],
                         buffer.Rows(0, c.n_head * t * keys).Reshaped({c.n_head, t, keys}));
      }
    }
    if (c.rotary_decoder) {  // x += attn(RMSNorm(x)); x += fc2(act(gate) · up) of RMSNorm(x)
      RETURN_IF_ERROR(be.RmsNorm(x, lw.attn_ln_gamma, eps, h));
      AttentionCall call{be,   matmul,   batch,     offsets,     h,     qkv,
                         attn, qkv_rows, attn_rows, prev_scores, scores};
      call.rotary_inv_freq = &weights_.rotary_inv_freq;
      call.positions = &positions;
      RETURN_IF_ERROR(attention_[l]->Forward(call));
      RETURN_IF_ERROR(MatMul(attn, lw.o, nullptr, proj));
      // (gemma2 normalises each branch's output before the residual add)
      if (c.gemma2) RETURN_IF_ERROR(be.RmsNorm(proj, lw.attn_post_norm, eps, proj));
      RETURN_IF_ERROR(be.Add(x, proj, x));
      RETURN_IF_ERROR(be.RmsNorm(x, lw.ff_ln_gamma, eps, h));
      RETURN_IF_ERROR(MatMul(h, lw.fc1, nullptr, gate_up));
      RETURN_IF_ERROR(be.GatedActivation(gate_up, c.activation, inner));
      RETURN_IF_ERROR(MatMul(inner, lw.fc2, nullptr, proj));
      if (c.gemma2) RETURN_IF_ERROR(be.RmsNorm(proj, lw.ff_post_norm, eps, proj));
      RETURN_IF_ERROR(be.Add(x, proj, x));
      continue;
    }
    // Attention. With pre-LN the keys are projected from LN(x) (memory rows included, which is
    // why the memory stores projected keys/values rather than raw hidden states).
    const Tensor* attn_in = &x;
    if (c.pre_lnorm) {  // (a reformer's attention reads its second stream)
      RETURN_IF_ERROR(be.LayerNorm(c.reformer ? x2 : x, lw.attn_ln_gamma, lw.attn_ln_beta, eps, h));
      attn_in = &h;
    }
    RETURN_IF_ERROR(
        attention_[l]->Forward(AttentionCall{be, matmul, batch, offsets, *attn_in, qkv, attn,
                                             qkv_rows, attn_rows, prev_scores, scores}));
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
  } else if (c.rotary_decoder) {  // the final RMSNorm (h is free: the layers are done)
    RETURN_IF_ERROR(be.RmsNorm(x, weights_.final_ln_gamma, eps, h));
    last = h;
  }
  const int64_t bsz = static_cast<int64_t>(batch.size());
  if (mode == LogitsMode::kLast && n != bsz) {
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < bsz; ++b) rows.push_back(offsets[b] + batch[b].num_tokens - 1);
    Tensor all = last;
    ASSIGN_OR_RETURN(last, scratch({bsz, c.head_width()}));
    RETURN_IF_ERROR(be.GatherRows(all, rows, last));
  }
  if (c.adaptive) {  // log-probabilities (a log-softmax of them changes nothing)
    ASSIGN_OR_RETURN(*logits, AdaptiveLogProbs(be, c, weights_.adaptive, last));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(Tensor out, scratch({last.dim(0), c.vocab_size}));
  const Tensor* head_bias = weights_.lm_head_bias.defined() ? &weights_.lm_head_bias : nullptr;
  RETURN_IF_ERROR(MatMul(last, weights_.lm_head, head_bias, out));
  if (be.device() == Device::kCpu) {
    *logits = std::move(out);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(*logits, be.CopyToHost(out));
  return absl::OkStatus();
}

}  // namespace mnemo::engine
