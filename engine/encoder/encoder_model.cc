#include "engine/encoder/encoder_model.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/checkpoint/tensor_reader.h"
#include "engine/encoder/bigbird_random_blocks.h"
#include "engine/encoder/funnel_forward.h"
#include "engine/sampling/sampler.h"

namespace mnemo::engine {
namespace {

// Funnel's layer: its own projections and relative-attention tensors, BERT's output and FFN.
absl::Status ReadFunnelAttention(const EncoderConfig& c, TensorReader& r, const std::string& p,
                                 EncoderLayerWeights& lw) {
  const int64_t d = c.d_model, w = c.attn_width();
  ASSIGN_OR_RETURN(lw.qkv, r.Read(p + "attn.qkv.weight", {3 * w, d}));
  ASSIGN_OR_RETURN(lw.qkv_bias, r.Read(p + "attn.qkv.bias", {3 * w}));
  ASSIGN_OR_RETURN(lw.r, r.Read(p + "attn.r.weight", {w, d}));
  ASSIGN_OR_RETURN(lw.r_w_bias, r.Read(p + "attn.r_w_bias", {w}));
  ASSIGN_OR_RETURN(lw.r_r_bias, r.Read(p + "attn.r_r_bias", {w}));
  ASSIGN_OR_RETURN(lw.r_s_bias, r.Read(p + "attn.r_s_bias", {w}));
  ASSIGN_OR_RETURN(lw.seg_embed, r.Read(p + "attn.seg_embed", {2, w}));
  return absl::OkStatus();
}

// The output projection, the two LayerNorms and the feed-forward every encoder layer has.
absl::Status ReadBlockTail(const EncoderConfig& c, TensorReader& r, const std::string& p,
                           EncoderLayerWeights& lw) {
  const int64_t d = c.d_model, f = c.d_inner;
  ASSIGN_OR_RETURN(lw.o, r.Read(p + "attn.o.weight", {d, c.attn_width()}));
  ASSIGN_OR_RETURN(lw.o_bias, r.Read(p + "attn.o.bias", {d}));
  ASSIGN_OR_RETURN(lw.attn_ln_gamma, r.Read(p + "attn.ln.weight", {d}));
  ASSIGN_OR_RETURN(lw.attn_ln_beta, r.Read(p + "attn.ln.bias", {d}));
  ASSIGN_OR_RETURN(lw.fc1, r.Read(p + "ff.fc1.weight", {f, d}));
  ASSIGN_OR_RETURN(lw.fc1_bias, r.Read(p + "ff.fc1.bias", {f}));
  ASSIGN_OR_RETURN(lw.fc2, r.Read(p + "ff.fc2.weight", {d, f}));
  ASSIGN_OR_RETURN(lw.fc2_bias, r.Read(p + "ff.fc2.bias", {d}));
  ASSIGN_OR_RETURN(lw.ff_ln_gamma, r.Read(p + "ff.ln.weight", {d}));
  ASSIGN_OR_RETURN(lw.ff_ln_beta, r.Read(p + "ff.ln.bias", {d}));
  return absl::OkStatus();
}

absl::StatusOr<EncoderWeights> LoadWeights(const EncoderConfig& c, TensorReader& r) {
  const int64_t d = c.d_model;
  EncoderWeights w;
  ASSIGN_OR_RETURN(w.word_emb, r.Read("embeddings.word.weight", {c.vocab_size, d}));
  if (!c.funnel()) {  // Funnel's positions are relative, and every token's type is 0
    ASSIGN_OR_RETURN(w.position_emb, r.Read("embeddings.position.weight", {c.position_rows, d}));
    ASSIGN_OR_RETURN(w.token_type_emb,
                     r.Read("embeddings.token_type.weight", {c.type_vocab_size, d}));
  }
  ASSIGN_OR_RETURN(w.emb_ln_gamma, r.Read("embeddings.ln.weight", {d}));
  ASSIGN_OR_RETURN(w.emb_ln_beta, r.Read("embeddings.ln.bias", {d}));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    EncoderLayerWeights& lw = w.layers.emplace_back();
    const int64_t heads = c.n_head, seg = c.segment_len;
    if (c.funnel()) {
      RETURN_IF_ERROR(ReadFunnelAttention(c, r, p, lw));
    } else if (c.synthesized()) {  // no queries or keys: the weights are synthesized
      ASSIGN_OR_RETURN(lw.qkv, r.Read(p + "attn.v.weight", {d, d}));
      ASSIGN_OR_RETURN(lw.qkv_bias, r.Read(p + "attn.v.bias", {d}));
      if (c.synthesizer == "dense") {
        ASSIGN_OR_RETURN(lw.synth1, r.Read(p + "attn.synth1.weight", {d, d}));
        ASSIGN_OR_RETURN(lw.synth1_bias, r.Read(p + "attn.synth1.bias", {d}));
        ASSIGN_OR_RETURN(lw.synth2, r.Read(p + "attn.synth2.weight", {heads, seg, c.d_head}));
        ASSIGN_OR_RETURN(lw.synth2_bias, r.Read(p + "attn.synth2.bias", {heads, seg}));
      } else {
        ASSIGN_OR_RETURN(lw.random, r.Read(p + "attn.random.weight", {heads, seg, seg}));
      }
    } else {
      ASSIGN_OR_RETURN(lw.qkv, r.Read(p + "attn.qkv.weight", {3 * d, d}));
      ASSIGN_OR_RETURN(lw.qkv_bias, r.Read(p + "attn.qkv.bias", {3 * d}));
    }
    if (c.linformer()) {
      ASSIGN_OR_RETURN(lw.proj_k, r.Read(p + "attn.proj_k.weight", {c.linformer_k, seg}));
      ASSIGN_OR_RETURN(lw.proj_v, r.Read(p + "attn.proj_v.weight", {c.linformer_k, seg}));
    } else if (c.nystromformer()) {
      if (c.conv_kernel_size > 0) {
        ASSIGN_OR_RETURN(lw.conv, r.Read(p + "attn.conv.weight", {c.n_head, c.conv_kernel_size}));
      }
    } else if (c.longformer()) {
      ASSIGN_OR_RETURN(lw.global_qkv, r.Read(p + "attn.global_qkv.weight", {3 * d, d}));
      ASSIGN_OR_RETURN(lw.global_qkv_bias, r.Read(p + "attn.global_qkv.bias", {3 * d}));
    }
    RETURN_IF_ERROR(ReadBlockTail(c, r, p, lw));
  }
  for (int64_t l = 0; l < c.decoder_layers; ++l) {
    const std::string p = absl::StrCat("decoder.", l, ".");
    EncoderLayerWeights& lw = w.decoder.emplace_back();
    RETURN_IF_ERROR(ReadFunnelAttention(c, r, p, lw));
    RETURN_IF_ERROR(ReadBlockTail(c, r, p, lw));
  }
  if (c.mlm_head && !c.funnel()) {  // (Funnel's head has no transform)
    ASSIGN_OR_RETURN(w.mlm.dense, r.Read("mlm.dense.weight", {d, d}));
    ASSIGN_OR_RETURN(w.mlm.dense_bias, r.Read("mlm.dense.bias", {d}));
    ASSIGN_OR_RETURN(w.mlm.ln_gamma, r.Read("mlm.ln.weight", {d}));
    ASSIGN_OR_RETURN(w.mlm.ln_beta, r.Read("mlm.ln.bias", {d}));
  }
  if (c.mlm_head) {
    ASSIGN_OR_RETURN(w.mlm.decoder_bias, r.Read("mlm.decoder.bias", {c.vocab_size}));
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

namespace {

absl::Status CheckSequence(const EncoderConfig& c, const EncoderSequence& s) {
  const auto n = static_cast<int64_t>(s.ids.size());
  if (n == 0) return absl::InvalidArgumentError("nothing to encode: no token ids");
  if (n < c.min_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " tokens in one pass; a Funnel pass needs at least ", c.min_tokens(),
                     " (every block after the first pools the sequence)"));
  }
  if (n > c.max_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(n,
                                                   " tokens in one pass; the model's position "
                                                   "table holds ",
                                                   c.max_tokens()));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (s.ids[i] < 0 || s.ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", s.ids[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  return CheckEncodePositions(c, s.global_positions, s.mlm_positions, n);
}

// The masked-LM head over every window's chosen rows at once: logits = word · T(h) + bias, with
// T the head's transform (dense, activation, LayerNorm: Longformer's and BigBird's; Funnel's head
// has none), then a log-softmax per row.
absl::Status MaskedLm(const EncoderConfig& c, const EncoderWeights& w, Backend& be,
                      std::span<const EncoderSequence> batch, std::vector<EncodedWindow>& out) {
  int64_t m = 0;
  for (const EncoderSequence& s : batch) m += static_cast<int64_t>(s.mlm_positions.size());
  if (m == 0) return absl::OkStatus();
  const int64_t d = c.d_model;
  Tensor h = Tensor::Empty(DType::kF32, {m, d});
  for (size_t k = 0, at = 0; k < batch.size(); ++k) {
    const std::vector<int64_t>& positions = batch[k].mlm_positions;
    if (positions.empty()) continue;
    Tensor rows = h.Rows(static_cast<int64_t>(at), static_cast<int64_t>(at + positions.size()));
    RETURN_IF_ERROR(be.GatherRows(out[k].hidden, positions, rows));
    at += positions.size();
  }
  if (w.mlm.dense.defined()) {
    Tensor dense = Tensor::Empty(DType::kF32, {m, d});
    RETURN_IF_ERROR(
        be.LinearBiasActivation(h, w.mlm.dense, w.mlm.dense_bias, c.mlm_activation, dense));
    RETURN_IF_ERROR(be.LayerNorm(dense, w.mlm.ln_gamma, w.mlm.ln_beta,
                                 static_cast<float>(c.layer_norm_epsilon), dense));
    h = dense;
  }
  Tensor logits = Tensor::Empty(DType::kF32, {m, c.vocab_size});
  RETURN_IF_ERROR(be.Linear(h, w.word_emb, &w.mlm.decoder_bias, logits));
  float* l = logits.data<float>();
  for (int64_t r = 0; r < m; ++r) {
    LogSoftmax(l + r * c.vocab_size, c.vocab_size, l + r * c.vocab_size);
  }
  int64_t at = 0;
  for (size_t k = 0; k < batch.size(); ++k) {
    const auto count = static_cast<int64_t>(batch[k].mlm_positions.size());
    if (count > 0) out[k].mlm_logprobs = logits.Rows(at, at + count);
    at += count;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<EncodedWindow>> EncoderModel::EncodeBatch(
    std::span<const EncoderSequence> batch) const {
  const EncoderConfig& c = config_;
  std::vector<int64_t> offsets{0};  // each window's first row in the pass
  bool any_global = false;
  for (size_t k = 0; k < batch.size(); ++k) {
    if (absl::Status s = CheckSequence(c, batch[k]); !s.ok()) {
      if (batch.size() == 1) return s;
      return absl::Status(s.code(), absl::StrCat("window ", k, ": ", s.message()));
    }
    offsets.push_back(offsets.back() + c.pass_rows(static_cast<int64_t>(batch[k].ids.size())));
    any_global = any_global || !batch[k].global_positions.empty();
  }
  if (batch.empty()) return std::vector<EncodedWindow>();
  if (c.funnel()) {
    ASSIGN_OR_RETURN(std::vector<EncodedWindow> out, FunnelForward(c, weights_, *backend_, batch));
    RETURN_IF_ERROR(MaskedLm(c, weights_, *backend_, batch, out));
    return out;
  }
  const int64_t n = offsets.back();
  Backend& be = *backend_;
  const int64_t d = c.d_model;
  const auto eps = static_cast<float>(c.layer_norm_epsilon);
  // Embeddings: word + position + token type 0, then a LayerNorm. Longformer's positions follow
  // RoBERTa's rule within each window: a non-padding token's is pad_token_id + its count of
  // non-padding tokens so far, a padding token's is pad_token_id. Nyströmformer's count from 2
  // over the whole padded window; BigBird's from 0 over its padded window; Linformer's and
  // Synthesizer's from 0 (BERT's).
  std::vector<int32_t> ids, positions;
  ids.reserve(static_cast<size_t>(n));
  positions.reserve(static_cast<size_t>(n));
  for (const EncoderSequence& seq : batch) {
    if (c.nystromformer()) {
      for (int64_t i = 0; i < c.segment_len; ++i) {
        const auto at = static_cast<size_t>(i);
        ids.push_back(at < seq.ids.size() ? seq.ids[at] : static_cast<int32_t>(c.pad_token_id));
        positions.push_back(static_cast<int32_t>(i + 2));
      }
      continue;
    }
    if (c.bigbird()) {
      const int64_t rows = c.pass_rows(static_cast<int64_t>(seq.ids.size()));
      for (int64_t i = 0; i < rows; ++i) {
        const auto at = static_cast<size_t>(i);
        ids.push_back(at < seq.ids.size() ? seq.ids[at] : static_cast<int32_t>(c.pad_token_id));
        positions.push_back(static_cast<int32_t>(i));
      }
      continue;
    }
    if (c.fixed_length()) {
      for (size_t i = 0; i < seq.ids.size(); ++i) {
        ids.push_back(seq.ids[i]);
        positions.push_back(static_cast<int32_t>(i));
      }
      continue;
    }
    int32_t seen = 0;
    for (int32_t id : seq.ids) {
      const bool pad = id == c.pad_token_id;
      seen += pad ? 0 : 1;
      ids.push_back(id);
      positions.push_back(static_cast<int32_t>(c.pad_token_id + (pad ? 0 : seen)));
    }
  }
  Tensor x = Tensor::Empty(DType::kF32, {n, d});
  Tensor add = Tensor::Empty(DType::kF32, {n, d});
  const float word_scale = c.rescale_embeddings ? std::sqrt(static_cast<float>(c.d_model)) : 1.0f;
  RETURN_IF_ERROR(be.Embedding(weights_.word_emb, ids, word_scale, x));
  RETURN_IF_ERROR(be.Embedding(weights_.position_emb, positions, 1.0f, add));
  RETURN_IF_ERROR(be.Add(x, add, x));
  RETURN_IF_ERROR(be.FillRows(weights_.token_type_emb.Rows(0, 1), add));  // every token's type 0
  RETURN_IF_ERROR(be.Add(x, add, x));
  RETURN_IF_ERROR(be.LayerNorm(x, weights_.emb_ln_gamma, weights_.emb_ln_beta, eps, x));

  Tensor qkv = Tensor::Empty(DType::kF32, {n, weights_.layers[0].qkv.dim(0)});
  Tensor synth;  // dense Synthesizer: relu(W1·x + b1)
  if (c.synthesizer == "dense") synth = Tensor::Empty(DType::kF32, {n, d});
  Tensor global_qkv;
  if (any_global) global_qkv = Tensor::Empty(DType::kF32, {n, 3 * d});
  Tensor attn = Tensor::Empty(DType::kF32, {n, d});
  Tensor hidden = Tensor::Empty(DType::kF32, {n, c.d_inner});
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const EncoderLayerWeights& lw = weights_.layers[l];
    RETURN_IF_ERROR(be.Linear(x, lw.qkv, &lw.qkv_bias, qkv));
    if (global_qkv.defined()) {
      RETURN_IF_ERROR(be.Linear(x, lw.global_qkv, &lw.global_qkv_bias, global_qkv));
    }
    if (synth.defined()) {
      RETURN_IF_ERROR(
          be.LinearBiasActivation(x, lw.synth1, lw.synth1_bias, kernels::Activation::kRelu, synth));
    }
    const auto heads = static_cast<int>(c.n_head), head_dim = static_cast<int>(c.d_head);
    std::map<int64_t, std::vector<int32_t>> random_blocks;  // BigBird's, by padded length
    for (size_t k = 0; k < batch.size(); ++k) {             // attention stays within each window
      const Tensor q = qkv.Rows(offsets[k], offsets[k + 1]);
      Tensor out = attn.Rows(offsets[k], offsets[k + 1]);
      if (c.nystromformer()) {
        RETURN_IF_ERROR(be.NystromAttention({&q, lw.conv.defined() ? &lw.conv : nullptr,
                                             static_cast<int64_t>(batch[k].ids.size()),
                                             c.num_landmarks, heads, head_dim, &out}));
      } else if (c.bigbird()) {
        const auto tokens = static_cast<int64_t>(batch[k].ids.size());
        const std::vector<int32_t>* random = nullptr;
        if (c.sparse_pass(tokens)) {  // drawn once per layer and padded length
          const int64_t len = offsets[k + 1] - offsets[k];
          auto [it, fresh] = random_blocks.try_emplace(len);
          if (fresh) {
            ASSIGN_OR_RETURN(it->second,
                             BigBirdRandomBlocks({l, len, c.block_size, c.num_random_blocks,
                                                  c.n_head, c.position_rows}));
          }
          random = &it->second;
        }
        RETURN_IF_ERROR(be.BigBirdAttention(
            {&q, random, tokens, c.block_size, c.num_random_blocks, heads, head_dim, &out}));
      } else if (c.linformer()) {
        RETURN_IF_ERROR(be.LinformerAttention({&q, &lw.proj_k, &lw.proj_v, heads, head_dim, &out}));
      } else if (c.synthesized()) {
        const Tensor h1 = synth.defined() ? synth.Rows(offsets[k], offsets[k + 1]) : Tensor();
        RETURN_IF_ERROR(be.SynthesizerAttention(
            {synth.defined() ? &h1 : nullptr, synth.defined() ? &lw.synth2 : nullptr,
             synth.defined() ? &lw.synth2_bias : &lw.random, &q, heads, head_dim, &out}));
      } else {
        const std::vector<int64_t>& globals = batch[k].global_positions;
        const Tensor gq = globals.empty() ? Tensor() : global_qkv.Rows(offsets[k], offsets[k + 1]);
        RETURN_IF_ERROR(be.LongformerAttention(
            {&q, &gq, &globals, c.one_sided_window[l], heads, head_dim, &out}));
      }
    }
    // Post-LayerNorm blocks (BERT): x = LN(x + W_o·attn), x = LN(x + W_2·act(W_1·x)).
    RETURN_IF_ERROR(be.Linear(attn, lw.o, &lw.o_bias, add));
    RETURN_IF_ERROR(be.AddLayerNorm(x, add, lw.attn_ln_gamma, lw.attn_ln_beta, eps, x));
    RETURN_IF_ERROR(be.LinearBiasActivation(x, lw.fc1, lw.fc1_bias, c.activation, hidden));
    RETURN_IF_ERROR(be.Linear(hidden, lw.fc2, &lw.fc2_bias, add));
    RETURN_IF_ERROR(be.AddLayerNorm(x, add, lw.ff_ln_gamma, lw.ff_ln_beta, eps, x));
  }
  std::vector<EncodedWindow> out(batch.size());
  for (size_t k = 0; k < batch.size(); ++k) {
    // (a padded window's rows past its tokens are dropped)
    out[k].hidden = x.Rows(offsets[k], offsets[k] + static_cast<int64_t>(batch[k].ids.size()));
  }
  RETURN_IF_ERROR(MaskedLm(c, weights_, be, batch, out));
  return out;
}

}  // namespace mnemo::engine
