#include "engine/model/transfo_xl_weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "base/status_macros.h"
#include "engine/attention/registry.h"
#include "engine/checkpoint/tensor_reader.h"

namespace mnemo::engine {
namespace {

// Calls fn(tensor, is_matrix) on every tensor field of `w`, in one fixed order. Matrices are the
// weight matrices and embeddings (what a 16-bit checkpoint keeps 16-bit); the rest are biases,
// LayerNorms, r biases and the kinds' small constants (always float32).
template <typename Weights, typename Fn>
void ForEachWeight(Weights& w, Fn fn) {
  fn(w.word_emb, true);
  fn(w.emb_proj, true);
  fn(w.emb_proj_bias, false);
  for (auto& lw : w.layers) {
    for (auto* t : {&lw.qkv, &lw.dense.r, &lw.o, &lw.fc1, &lw.fc2}) fn(*t, true);
    for (auto* t : {&lw.linear.features,
                    &lw.linear.gate_weight,
                    &lw.lsh.rotations,
                    &lw.dense.compress,
                    &lw.dense.compress_bias,
                    &lw.linear.gate_bias,
                    &lw.attn_ln_gamma,
                    &lw.attn_ln_beta,
                    &lw.dense.r_w_bias,
                    &lw.dense.r_r_bias,
                    &lw.fc1_bias,
                    &lw.fc2_bias,
                    &lw.ff_ln_gamma,
                    &lw.ff_ln_beta,
                    &lw.attn_post_norm,
                    &lw.ff_post_norm,
                    &lw.memory_compressed.compress_k,
                    &lw.memory_compressed.compress_k_bias,
                    &lw.memory_compressed.compress_v,
                    &lw.memory_compressed.compress_v_bias,
                    &lw.routing.centroids}) {
      fn(*t, false);
    }
  }
  fn(w.pos_emb0, false);
  fn(w.pos_emb1, false);
  fn(w.final_ln_gamma, false);
  fn(w.final_ln_beta, false);
  fn(w.rotary_inv_freq, false);
  fn(w.lm_head, true);
  fn(w.lm_head_bias, false);
  for (auto* list :
       {&w.adaptive.emb, &w.adaptive.emb_proj, &w.adaptive.head, &w.adaptive.head_proj}) {
    for (auto& t : *list) fn(t, true);
  }
  for (auto& t : w.adaptive.head_bias) fn(t, false);
  fn(w.adaptive.cluster_weight, true);
  fn(w.adaptive.cluster_bias, false);
}

absl::StatusOr<TransfoXlWeights> LoadWeights(const ModelConfig& c, TensorReader reader);

}  // namespace

absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      const SafetensorsFile& file) {
  return LoadWeights(config, TensorReader(config.dtype, file, nullptr));
}

absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      std::shared_ptr<const SafetensorsFile> file) {
  const SafetensorsFile& ref = *file;
  ASSIGN_OR_RETURN(TransfoXlWeights w,
                   LoadWeights(config, TensorReader(config.dtype, ref, std::move(file))));
  return WeightsAs(w, WeightSet::kVectors, DType::kF32);
}

TransfoXlWeights WeightsAs(const TransfoXlWeights& weights, WeightSet set, DType dtype) {
  std::map<const void*, Tensor> converted;  // by source buffer: shared tensors stay shared
  TransfoXlWeights out = weights;
  ForEachWeight(out, [&](Tensor& t, bool matrix) {
    if (!t.defined() || t.dtype() == dtype || t.dtype() == DType::kI32 ||
        matrix != (set == WeightSet::kMatrices)) {
      return;
    }
    auto it = converted.find(t.raw());
    if (it == converted.end() || it->second.shape() != t.shape()) {
      it = converted.insert_or_assign(t.raw(), Converted(t, dtype)).first;
    }
    t = it->second;
  });
  return out;
}

namespace {

// The adaptive embedding and head (docs/checkpoint-format.md "Adaptive embedding and softmax").
absl::StatusOr<AdaptiveWeights> LoadAdaptiveWeights(const ModelConfig& c, TensorReader& reader) {
  AdaptiveWeights w;
  const std::vector<VocabularyBand> bands = c.bands();
  const int64_t d = c.d_model, e = c.embed_width();
  // div_val 1: one table over the whole vocabulary; otherwise one per band.
  std::vector<VocabularyBand> tables = bands;
  if (c.div_val == 1) tables = {{0, c.vocab_size, e}};
  const bool projected = c.div_val > 1 || e != d;
  for (size_t i = 0; i < tables.size(); ++i) {
    const std::string p = absl::StrCat("adaptive.emb.", i, ".");
    const std::string h = absl::StrCat("adaptive.head.", i, ".");
    const int64_t rows = tables[i].end - tables[i].begin, width = tables[i].width;
    ASSIGN_OR_RETURN(w.emb.emplace_back(), reader.Read(p + "weight", {rows, width}));
    if (projected) {
      ASSIGN_OR_RETURN(w.emb_proj.emplace_back(), reader.Read(p + "proj", {d, width}));
    }
    if (c.tie_word_embeddings) {
      w.head.push_back(w.emb.back());
    } else {
      ASSIGN_OR_RETURN(w.head.emplace_back(), reader.Read(h + "weight", {rows, width}));
    }
    ASSIGN_OR_RETURN(w.head_bias.emplace_back(), reader.Read(h + "bias", {rows}));
  }
  if (projected) {
    for (size_t i = 0; i < bands.size(); ++i) {
      ASSIGN_OR_RETURN(
          w.head_proj.emplace_back(),
          reader.Read(absl::StrCat("adaptive.head.", i, ".proj"), {bands[i].width, d}));
    }
  }
  if (const auto k = static_cast<int64_t>(c.cutoffs.size()); k > 0) {
    ASSIGN_OR_RETURN(w.cluster_weight, reader.Read("adaptive.head.cluster.weight", {k, e}));
    ASSIGN_OR_RETURN(w.cluster_bias, reader.Read("adaptive.head.cluster.bias", {k}));
  }
  return w;
}

absl::StatusOr<TransfoXlWeights> LoadWeights(const ModelConfig& c, TensorReader reader) {
  const int64_t d = c.d_model, hd = c.attn_width();
  TransfoXlWeights w;
  const int64_t e = c.embed_width();
  if (c.adaptive) {
    ASSIGN_OR_RETURN(w.adaptive, LoadAdaptiveWeights(c, reader));
  } else {
    ASSIGN_OR_RETURN(w.word_emb, reader.Read("word_emb.weight", {c.vocab_size, e}));
  }
  if (!c.adaptive && c.d_embed != 0 && c.d_embed != c.d_model) {
    ASSIGN_OR_RETURN(w.emb_proj, reader.Read("emb_proj.weight", {d, e}));
    ASSIGN_OR_RETURN(w.emb_proj_bias, reader.Read("emb_proj.bias", {d}));
  }
  SharedAttentionWeights shared;
  if (!c.untie_r && c.has_dense_layer()) {
    ASSIGN_OR_RETURN(shared.r_w_bias, reader.Read("r_w_bias", {c.n_head, c.d_head}));
    ASSIGN_OR_RETURN(shared.r_r_bias, reader.Read("r_r_bias", {c.n_head, c.d_head}));
  }
  // One parameter set per ALBERT group (per layer without sharing); every layer of a group
  // holds the same buffers, so shared tensors are in memory once.
  std::vector<TransfoXlLayerWeights> groups;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int64_t g = c.param_layer(l);
    if (g < static_cast<int64_t>(groups.size())) {
      w.layers.push_back(groups[static_cast<size_t>(g)]);
      continue;
    }
    const std::string p = absl::StrCat("layers.", g, ".");
    TransfoXlLayerWeights lw;
    RETURN_IF_ERROR(ReadAttentionWeights(
        c, l, p + "attn.",
        [&](const std::string& name, std::vector<int64_t> shape) {
          return reader.Read(name, std::move(shape));
        },
        shared, lw));
    ASSIGN_OR_RETURN(lw.o, reader.Read(p + "attn.o.weight", {d, hd}));
    if (c.rotary_decoder) {  // float32 RMSNorms, a gated MLP [gate | up], no biases
      ASSIGN_OR_RETURN(lw.attn_ln_gamma, reader.ReadFloat32(p + "attn.norm.weight", {d}));
      ASSIGN_OR_RETURN(lw.fc1, reader.Read(p + "ff.fc1.weight", {2 * c.d_inner, d}));
      ASSIGN_OR_RETURN(lw.fc2, reader.Read(p + "ff.fc2.weight", {d, c.d_inner}));
      ASSIGN_OR_RETURN(lw.ff_ln_gamma, reader.ReadFloat32(p + "ff.norm.weight", {d}));
      if (c.gemma2) {  // the norms after the attention and after the MLP
        ASSIGN_OR_RETURN(lw.attn_post_norm, reader.ReadFloat32(p + "attn.post_norm.weight", {d}));
        ASSIGN_OR_RETURN(lw.ff_post_norm, reader.ReadFloat32(p + "ff.post_norm.weight", {d}));
      }
      groups.push_back(lw);
      w.layers.push_back(std::move(lw));
      continue;
    }
    ASSIGN_OR_RETURN(lw.attn_ln_gamma, reader.Read(p + "attn.ln.weight", {d}));
    ASSIGN_OR_RETURN(lw.attn_ln_beta, reader.Read(p + "attn.ln.bias", {d}));
    ASSIGN_OR_RETURN(lw.fc1, reader.Read(p + "ff.fc1.weight", {c.d_inner, d}));
    ASSIGN_OR_RETURN(lw.fc1_bias, reader.Read(p + "ff.fc1.bias", {c.d_inner}));
    ASSIGN_OR_RETURN(lw.fc2, reader.Read(p + "ff.fc2.weight", {d, c.d_inner}));
    ASSIGN_OR_RETURN(lw.fc2_bias, reader.Read(p + "ff.fc2.bias", {d}));
    ASSIGN_OR_RETURN(lw.ff_ln_gamma, reader.Read(p + "ff.ln.weight", {d}));
    ASSIGN_OR_RETURN(lw.ff_ln_beta, reader.Read(p + "ff.ln.bias", {d}));
    groups.push_back(lw);
    w.layers.push_back(std::move(lw));
  }
  if (c.reformer) {
    const std::vector<int64_t>& n = c.axial_pos_shape;
    const std::vector<int64_t>& e = c.axial_pos_embds_dim;
    ASSIGN_OR_RETURN(w.pos_emb0, reader.Read("pos_emb.weights.0", {n[0], 1, e[0]}));
    ASSIGN_OR_RETURN(w.pos_emb1, reader.Read("pos_emb.weights.1", {1, n[1], e[1]}));
    ASSIGN_OR_RETURN(w.final_ln_gamma, reader.Read("final_ln.weight", {2 * d}));
    ASSIGN_OR_RETURN(w.final_ln_beta, reader.Read("final_ln.bias", {2 * d}));
  }
  if (c.rotary_decoder) {
    ASSIGN_OR_RETURN(w.final_ln_gamma, reader.ReadFloat32("final_norm.weight", {d}));
    ASSIGN_OR_RETURN(w.rotary_inv_freq, reader.ReadFloat32("rotary.inv_freq", {c.d_head / 2}));
    const float* f = w.rotary_inv_freq.data<float>();
    if (!std::all_of(f, f + c.d_head / 2, [](float x) { return x > 0.0f; })) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader.path(), ": tensor \"rotary.inv_freq\" must be positive"));
    }
  }
  if (!c.adaptive) {  // (an adaptive head is read with the embedding)
    if (c.tie_word_embeddings) {
      w.lm_head = w.word_emb;
    } else {
      ASSIGN_OR_RETURN(w.lm_head, reader.Read("lm_head.weight", {c.vocab_size, c.head_width()}));
    }
    if (!c.rotary_decoder) {
      ASSIGN_OR_RETURN(w.lm_head_bias, reader.Read("lm_head.bias", {c.vocab_size}));
    }
  }
  RETURN_IF_ERROR(reader.CheckNoExtra());
  return w;
}

}  // namespace

absl::StatusOr<TransfoXlWeights> CopyWeightsTo(const TransfoXlWeights& weights, Backend& backend) {
  std::map<const void*, Tensor> copied;  // host buffer → device copy
  TransfoXlWeights out = weights;
  absl::Status status;
  ForEachWeight(out, [&](Tensor& t, bool /*matrix*/) {
    if (!status.ok() || !t.defined()) return;  // a tensor this layer kind does not have
    auto it = copied.find(t.raw());
    if (it != copied.end() && it->second.shape() == t.shape()) {
      t = it->second;
      return;
    }
    absl::StatusOr<Tensor> device = backend.CopyFromHost(t);
    if (!device.ok()) {
      status = device.status();
      return;
    }
    copied[t.raw()] = *device;
    t = *std::move(device);
  });
  RETURN_IF_ERROR(status);
  return out;
}

}  // namespace mnemo::engine
