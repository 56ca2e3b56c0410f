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
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                   SafetensorsFile::Open(dir + "/model.safetensors"));
  ASSIGN_OR_RETURN(TransfoXlWeights weights, LoadTransfoXlWeights(config, std::move(file)));
  return Create(std::move(config), std::move(weights), MakeCpuBackend());
}

absl::StatusOr<std::unique_ptr<TransfoXlModel>> TransfoXlModel::Create(
    ModelConfig config, TransfoXlWeights weights, std::unique_ptr<Backend> backend) {
  std::unique_ptr<TransfoXlModel> model(
      new TransfoXlModel(std::move(config), std::move(weights), std::move(backend)));
  const ModelConfig& c = model->config_;
  const int64_t hd = c.attn_width();
  const int64_t rows = c.clamp_len > 0 ? c.clamp_len + 1 : c.mem_len + kTableHeadroom;
  const Tensor sinusoids = model->Sinusoids(rows);
  Backend& be = *model->backend_;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const TransfoXlLayerWeights& lw = model->weights_.layers[l];
    ASSIGN_OR_RETURN(Tensor table, be.Allocate(DType::kF32, {rows, hd}));
    RETURN_IF_ERROR(be.Linear(sinusoids, lw.r, nullptr, table));
    model->rel_tables_.push_back(std::move(table));
    // A zero hidden row projects to W_k·0 = 0 (post-LN) or W_k·LN(0) = W_k·beta (pre-LN).
    ASSIGN_OR_RETURN(Tensor zero_in, be.Allocate(DType::kF32, {1, c.d_model}));
    if (c.pre_lnorm) {
      std::memcpy(zero_in.raw(), lw.attn_ln_beta.raw(), lw.attn_ln_beta.bytes());
    }
    ASSIGN_OR_RETURN(Tensor qkv, be.Allocate(DType::kF32, {1, 3 * hd}));
    RETURN_IF_ERROR(be.Linear(zero_in, lw.qkv, nullptr, qkv));
    Tensor k = Tensor::Zeros(DType::kF32, {hd}), v = Tensor::Zeros(DType::kF32, {hd});
    std::memcpy(k.raw(), qkv.data<float>() + hd, hd * sizeof(float));
    std::memcpy(v.raw(), qkv.data<float>() + 2 * hd, hd * sizeof(float));
    model->zero_keys_.push_back(std::move(k));
    model->zero_values_.push_back(std::move(v));
  }
  return model;
}

TransfoXlModel::TransfoXlModel(ModelConfig config, TransfoXlWeights weights,
                               std::unique_ptr<Backend> backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(std::move(backend)) {}

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
  ASSIGN_OR_RETURN(scratch, backend_->Allocate(DType::kF32, {rows, config_.attn_width()}));
  RETURN_IF_ERROR(backend_->Linear(Sinusoids(rows), weights_.layers[layer].r, nullptr, scratch));
  return &scratch;
}

SessionState TransfoXlModel::NewState() const {
  SessionState state;
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    XlMemory memory(config_.mem_len, config_.attn_width());
    if (config_.memory_init == MemoryInit::kZeros) {
      memory.FillWith(zero_keys_[l].data<float>(), zero_values_[l].data<float>());
    }
    state.layers().push_back(std::move(memory));
  }
  return state;
}

size_t TransfoXlModel::StateBytes() const {
  return SessionStateBytes(config_.n_layer, config_.mem_len, config_.attn_width());
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
    const auto& layers = s.state->layers();
    if (static_cast<int64_t>(layers.size()) != config_.n_layer ||
        layers[0].capacity() != config_.mem_len || layers[0].width() != config_.attn_width()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", b, ": session state was not made by this model"));
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

absl::Status TransfoXlModel::Forward(const std::vector<SequenceInput>& batch, LogitsMode mode,
                                     Tensor* logits) {
  RETURN_IF_ERROR(Validate(batch));
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

  ASSIGN_OR_RETURN(Tensor x, be.Allocate(DType::kF32, {n, d}));         // [N, D] residual stream
  ASSIGN_OR_RETURN(Tensor h, be.Allocate(DType::kF32, {n, d}));         // [N, D] normed input
  ASSIGN_OR_RETURN(Tensor qkv, be.Allocate(DType::kF32, {n, 3 * hd}));  // [N, 3·H·d_h]
  ASSIGN_OR_RETURN(Tensor attn, be.Allocate(DType::kF32, {n, hd}));     // [N, H·d_h]
  ASSIGN_OR_RETURN(Tensor proj, be.Allocate(DType::kF32, {n, d}));      // [N, D]
  ASSIGN_OR_RETURN(Tensor inner, be.Allocate(DType::kF32, {n, c.d_inner}));  // [N, d_inner]
  RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, std::sqrt(static_cast<float>(d)), x));

  const float eps = static_cast<float>(c.layer_norm_epsilon);
  std::vector<Tensor> qkv_rows, attn_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    qkv_rows.push_back(qkv.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
    attn_rows.push_back(attn.Rows(offsets[b], offsets[b] + batch[b].num_tokens));
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const TransfoXlLayerWeights& lw = weights_.layers[l];
    // Attention. With pre-LN the keys are projected from LN(x) (memory rows included, which is
    // why the memory stores projected keys/values rather than raw hidden states).
    const Tensor* attn_in = &x;
    if (c.pre_lnorm) {
      RETURN_IF_ERROR(be.LayerNorm(x, lw.attn_ln_gamma, lw.attn_ln_beta, eps, h));
      attn_in = &h;
    }
    RETURN_IF_ERROR(be.Linear(*attn_in, lw.qkv, nullptr, qkv));
    int64_t table_rows = 1;
    for (const SequenceInput& s : batch) {
      kernels::RelativeAttentionShape shape{static_cast<int>(c.n_head),
                                            static_cast<int>(c.d_head),
                                            s.num_tokens,
                                            s.state->layers()[l].size(),
                                            c.mem_len,
                                            c.clamp_len,
                                            c.same_length};
      table_rows = std::max(table_rows, kernels::RelativeTableRowsNeeded(shape));
    }
    Tensor scratch;
    ASSIGN_OR_RETURN(const Tensor* table, RelativeTable(static_cast<int>(l), table_rows, scratch));
    std::vector<RelativeAttentionArgs> args;
    for (size_t b = 0; b < batch.size(); ++b) {
      args.push_back(RelativeAttentionArgs{&qkv_rows[b], &batch[b].state->layers()[l], table,
                                           &lw.r_w_bias, &lw.r_r_bias, static_cast<int>(c.n_head),
                                           static_cast<int>(c.d_head), c.mem_len, c.clamp_len,
                                           c.same_length, &attn_rows[b]});
    }
    RETURN_IF_ERROR(be.RelativeAttention(args));
    // The new positions' keys/values join the memory only after every query has attended.
    for (size_t b = 0; b < batch.size(); ++b) {
      const float* rows = qkv_rows[b].data<float>();
      batch[b].state->layers()[l].Append(rows + hd, rows + 2 * hd, 3 * hd, batch[b].num_tokens);
    }
    RETURN_IF_ERROR(be.Linear(attn, lw.o, nullptr, proj));
    RETURN_IF_ERROR(be.Add(x, proj, x));
    if (!c.pre_lnorm) RETURN_IF_ERROR(be.LayerNorm(x, lw.attn_ln_gamma, lw.attn_ln_beta, eps, x));

    // Position-wise FFN.
    const Tensor* ff_in = &x;
    if (c.pre_lnorm) {
      RETURN_IF_ERROR(be.LayerNorm(x, lw.ff_ln_gamma, lw.ff_ln_beta, eps, h));
      ff_in = &h;
    }
    RETURN_IF_ERROR(be.Linear(*ff_in, lw.fc1, nullptr, inner));
    RETURN_IF_ERROR(be.BiasActivation(lw.fc1_bias, c.activation, inner));
    RETURN_IF_ERROR(be.Linear(inner, lw.fc2, &lw.fc2_bias, proj));
    RETURN_IF_ERROR(be.Add(x, proj, x));
    if (!c.pre_lnorm) RETURN_IF_ERROR(be.LayerNorm(x, lw.ff_ln_gamma, lw.ff_ln_beta, eps, x));
  }
  for (const SequenceInput& s : batch) s.state->Advance(s.num_tokens);

  switch (mode) {
    case LogitsMode::kNone:
      return absl::OkStatus();
    case LogitsMode::kAll: {
      ASSIGN_OR_RETURN(*logits, be.Allocate(DType::kF32, {n, c.vocab_size}));
      return be.Linear(x, weights_.lm_head, &weights_.lm_head_bias, *logits);
    }
    case LogitsMode::kLast: {
      const int64_t bsz = static_cast<int64_t>(batch.size());
      ASSIGN_OR_RETURN(Tensor last, be.Allocate(DType::kF32, {bsz, d}));
      for (int64_t b = 0; b < bsz; ++b) {
        std::memcpy(last.data<float>() + b * d,
                    x.data<float>() + (offsets[b] + batch[b].num_tokens - 1) * d,
                    d * sizeof(float));
      }
      ASSIGN_OR_RETURN(*logits, be.Allocate(DType::kF32, {bsz, c.vocab_size}));
      return be.Linear(last, weights_.lm_head, &weights_.lm_head_bias, *logits);
    }
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
