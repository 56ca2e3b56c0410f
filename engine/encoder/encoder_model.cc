#include "engine/encoder/encoder_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/checkpoint/tensor_reader.h"

namespace mnemo::engine {
namespace {

absl::StatusOr<EncoderWeights> LoadWeights(const EncoderConfig& c, TensorReader& r) {
  const int64_t d = c.d_model, f = c.d_inner;
  EncoderWeights w;
  ASSIGN_OR_RETURN(w.word_emb, r.Read("embeddings.word.weight", {c.vocab_size, d}));
  ASSIGN_OR_RETURN(w.position_emb, r.Read("embeddings.position.weight", {c.position_rows, d}));
  ASSIGN_OR_RETURN(w.token_type_emb,
                   r.Read("embeddings.token_type.weight", {c.type_vocab_size, d}));
  ASSIGN_OR_RETURN(w.emb_ln_gamma, r.Read("embeddings.ln.weight", {d}));
  ASSIGN_OR_RETURN(w.emb_ln_beta, r.Read("embeddings.ln.bias", {d}));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    EncoderLayerWeights& lw = w.layers.emplace_back();
    ASSIGN_OR_RETURN(lw.qkv, r.Read(p + "attn.qkv.weight", {3 * d, d}));
    ASSIGN_OR_RETURN(lw.qkv_bias, r.Read(p + "attn.qkv.bias", {3 * d}));
    ASSIGN_OR_RETURN(lw.global_qkv, r.Read(p + "attn.global_qkv.weight", {3 * d, d}));
    ASSIGN_OR_RETURN(lw.global_qkv_bias, r.Read(p + "attn.global_qkv.bias", {3 * d}));
    ASSIGN_OR_RETURN(lw.o, r.Read(p + "attn.o.weight", {d, d}));
    ASSIGN_OR_RETURN(lw.o_bias, r.Read(p + "attn.o.bias", {d}));
    ASSIGN_OR_RETURN(lw.attn_ln_gamma, r.Read(p + "attn.ln.weight", {d}));
    ASSIGN_OR_RETURN(lw.attn_ln_beta, r.Read(p + "attn.ln.bias", {d}));
    ASSIGN_OR_RETURN(lw.fc1, r.Read(p + "ff.fc1.weight", {f, d}));
    ASSIGN_OR_RETURN(lw.fc1_bias, r.Read(p + "ff.fc1.bias", {f}));
    ASSIGN_OR_RETURN(lw.fc2, r.Read(p + "ff.fc2.weight", {d, f}));
    ASSIGN_OR_RETURN(lw.fc2_bias, r.Read(p + "ff.fc2.bias", {d}));
    ASSIGN_OR_RETURN(lw.ff_ln_gamma, r.Read(p + "ff.ln.weight", {d}));
    ASSIGN_OR_RETURN(lw.ff_ln_beta, r.Read(p + "ff.ln.bias", {d}));
  }
  RETURN_IF_ERROR(r.CheckNoExtra());
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EncoderModel>> EncoderModel::Load(const std::string& dir) {
  ASSIGN_OR_RETURN(EncoderConfig config, LoadEncoderConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(dir + "/model.safetensors"));
  TensorReader reader(config.dtype, *file, nullptr);  // every tensor widened to float32
  ASSIGN_OR_RETURN(EncoderWeights weights, LoadWeights(config, reader));
  return std::unique_ptr<EncoderModel>(new EncoderModel(std::move(config), std::move(weights)));
}

absl::StatusOr<Tensor> EncoderModel::Encode(std::span<const int32_t> ids,
                                            const std::vector<int64_t>& global_positions) const {
  const EncoderConfig& c = config_;
  const auto n = static_cast<int64_t>(ids.size());
  if (n == 0) return absl::InvalidArgumentError("nothing to encode: no token ids");
  if (n > c.max_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(n,
                                                   " tokens in one pass; the model's position "
                                                   "table holds ",
                                                   c.max_tokens()));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  for (size_t g = 0; g < global_positions.size(); ++g) {
    if (global_positions[g] < 0 || global_positions[g] >= n ||
        (g > 0 && global_positions[g] <= global_positions[g - 1])) {
      return absl::InvalidArgumentError(absl::StrCat("global positions must ascend, each in [0, ",
                                                     n, "); got ", global_positions[g]));
    }
  }
  Backend& be = *backend_;
  const int64_t d = c.d_model;
  const auto eps = static_cast<float>(c.layer_norm_epsilon);
  // Embeddings: word + position + token type 0, then a LayerNorm. Positions follow RoBERTa's
  // rule: a non-padding token's is pad_token_id + its count of non-padding tokens so far, a
  // padding token's is pad_token_id.
  std::vector<int32_t> positions(static_cast<size_t>(n));
  int32_t seen = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool pad = ids[i] == c.pad_token_id;
    seen += pad ? 0 : 1;
    positions[i] = static_cast<int32_t>(c.pad_token_id + (pad ? 0 : seen));
  }
  Tensor x = Tensor::Empty(DType::kF32, {n, d});
  Tensor add = Tensor::Empty(DType::kF32, {n, d});
  RETURN_IF_ERROR(
      be.Embedding(weights_.word_emb, std::vector<int32_t>(ids.begin(), ids.end()), 1.0f, x));
  RETURN_IF_ERROR(be.Embedding(weights_.position_emb, positions, 1.0f, add));
  RETURN_IF_ERROR(be.Add(x, add, x));
  RETURN_IF_ERROR(be.FillRows(weights_.token_type_emb.Rows(0, 1), add));  // every token's type 0
  RETURN_IF_ERROR(be.Add(x, add, x));
  RETURN_IF_ERROR(be.LayerNorm(x, weights_.emb_ln_gamma, weights_.emb_ln_beta, eps, x));

  Tensor qkv = Tensor::Empty(DType::kF32, {n, 3 * d});
  Tensor global_qkv;
  if (!global_positions.empty()) global_qkv = Tensor::Empty(DType::kF32, {n, 3 * d});
  Tensor attn = Tensor::Empty(DType::kF32, {n, d});
  Tensor hidden = Tensor::Empty(DType::kF32, {n, c.d_inner});
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const EncoderLayerWeights& lw = weights_.layers[l];
    RETURN_IF_ERROR(be.Linear(x, lw.qkv, &lw.qkv_bias, qkv));
    if (global_qkv.defined()) {
      RETURN_IF_ERROR(be.Linear(x, lw.global_qkv, &lw.global_qkv_bias, global_qkv));
    }
    RETURN_IF_ERROR(
        be.LongformerAttention({&qkv, &global_qkv, &global_positions, c.one_sided_window[l],
                                static_cast<int>(c.n_head), static_cast<int>(c.d_head), &attn}));
    // Post-LayerNorm blocks (BERT): x = LN(x + W_o·attn), x = LN(x + W_2·act(W_1·x)).
    RETURN_IF_ERROR(be.Linear(attn, lw.o, &lw.o_bias, add));
    RETURN_IF_ERROR(be.AddLayerNorm(x, add, lw.attn_ln_gamma, lw.attn_ln_beta, eps, x));
    RETURN_IF_ERROR(be.LinearBiasActivation(x, lw.fc1, lw.fc1_bias, c.activation, hidden));
    RETURN_IF_ERROR(be.Linear(hidden, lw.fc2, &lw.fc2_bias, add));
    RETURN_IF_ERROR(be.AddLayerNorm(x, add, lw.ff_ln_gamma, lw.ff_ln_beta, eps, x));
  }
  return x;
}

}  // namespace mnemo::engine
