#include "engine/model/transfo_xl_weights.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "base/status_macros.h"
#include "engine/attention/registry.h"

namespace mnemo::engine {
namespace {

class TensorReader {
 public:
  // `keep_alive`, when set, owns `file` and lets aligned f32 tensors alias the mapping.
  TensorReader(const ModelConfig& config, const SafetensorsFile& file,
               std::shared_ptr<const SafetensorsFile> keep_alive)
      : config_(config), file_(file), keep_alive_(std::move(keep_alive)) {}

  absl::StatusOr<Tensor> Read(const std::string& name, std::vector<int64_t> shape) {
    used_.insert(name);
    const SafetensorsTensor* t = file_.Find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path(), ": missing tensor \"", name, "\" ", ShapeToString(shape)));
    }
    if (t->shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path(), ": tensor \"", name, "\" has shape ", ShapeToString(t->shape),
                       ", config.json implies ", ShapeToString(shape)));
    }
    if (t->dtype != config_.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path(), ": tensor \"", name, "\" is ", DTypeName(t->dtype),
                       " but config.json torch_dtype is ", DTypeName(config_.dtype)));
    }
    if (keep_alive_ != nullptr && t->dtype == DType::kF32 &&
        reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      void* data = const_cast<unsigned char*>(t->data);  // read-only by contract (see header)
      Tensor out(std::shared_ptr<void>(keep_alive_, data), DType::kF32, Device::kCpu,
                 std::move(shape));
      RETURN_IF_ERROR(CheckFinite(name, out));
      return out;
    }
    Tensor out = Tensor::Zeros(DType::kF32, std::move(shape));
    ConvertToFloat(t->dtype, t->data, out.data<float>(), static_cast<size_t>(out.numel()));
    RETURN_IF_ERROR(CheckFinite(name, out));
    return out;
  }

  // A NaN or infinite weight makes every output NaN (served with status OK): refused at load.
  absl::Status CheckFinite(const std::string& name, const Tensor& t) const {
    const float* p = t.data<float>();
    const auto n = static_cast<size_t>(t.numel());
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(p[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(file_.path(), ": tensor \"", name, "\" holds a non-finite value (", p[i],
                         ") at element ", i, ": a corrupt checkpoint?"));
      }
    }
    return absl::OkStatus();
  }

  // Every tensor of the file must have been read.
  absl::Status CheckNoExtra() const {
    std::vector<std::string> extra;
    for (const SafetensorsTensor& t : file_.tensors()) {
      if (!used_.count(t.name)) extra.push_back(t.name);
    }
    if (extra.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        file_.path(),
        ": unexpected tensor(s) not used by this config: ", absl::StrJoin(extra, ", ")));
  }

 private:
  const ModelConfig& config_;
  const SafetensorsFile& file_;
  std::shared_ptr<const SafetensorsFile> keep_alive_;
  std::set<std::string> used_;
};

absl::StatusOr<TransfoXlWeights> LoadWeights(const ModelConfig& c, TensorReader reader);

}  // namespace

absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      const SafetensorsFile& file) {
  return LoadWeights(config, TensorReader(config, file, nullptr));
}

absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      std::shared_ptr<const SafetensorsFile> file) {
  const SafetensorsFile& ref = *file;
  return LoadWeights(config, TensorReader(config, ref, std::move(file)));
}

namespace {

absl::StatusOr<TransfoXlWeights> LoadWeights(const ModelConfig& c, TensorReader reader) {
  const int64_t d = c.d_model, hd = c.attn_width();
  TransfoXlWeights w;
  const int64_t e = c.embed_width();
  ASSIGN_OR_RETURN(w.word_emb, reader.Read("word_emb.weight", {c.vocab_size, e}));
  if (c.d_embed != 0 && c.d_embed != c.d_model) {
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
  if (c.tie_word_embeddings) {
    w.lm_head = w.word_emb;
  } else {
    ASSIGN_OR_RETURN(w.lm_head, reader.Read("lm_head.weight", {c.vocab_size, c.head_width()}));
  }
  ASSIGN_OR_RETURN(w.lm_head_bias, reader.Read("lm_head.bias", {c.vocab_size}));
  RETURN_IF_ERROR(reader.CheckNoExtra());
  return w;
}

}  // namespace

namespace {

// A host copy of a float32 tensor narrowed to bf16/f16 (round to nearest even; exact when the
// values came from that type, as a 16-bit checkpoint's do).
Tensor Narrowed(const Tensor& host, DType dtype) {
  Tensor out = Tensor::Empty(dtype, host.shape());
  const float* src = host.data<float>();
  auto* dst = out.data<uint16_t>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    dst[i] = dtype == DType::kBF16 ? FloatToBFloat16(src[i]) : FloatToHalf(src[i]);
  }
  return out;
}

}  // namespace

absl::StatusOr<TransfoXlWeights> CopyWeightsTo(const TransfoXlWeights& weights, Backend& backend,
                                               DType matrix_dtype) {
  std::map<std::pair<const void*, bool>, Tensor> copied;  // (host buffer, matrix) → device copy
  auto copy = [&](const Tensor& host, bool matrix) -> absl::StatusOr<Tensor> {
    if (!host.defined()) return Tensor();  // a tensor this layer kind does not have
    auto it = copied.find({host.raw(), matrix});
    if (it != copied.end() && it->second.shape() == host.shape()) return it->second;
    const bool narrow = matrix && (matrix_dtype == DType::kBF16 || matrix_dtype == DType::kF16);
    ASSIGN_OR_RETURN(Tensor device,
                     backend.CopyFromHost(narrow ? Narrowed(host, matrix_dtype) : host));
    copied[{host.raw(), matrix}] = device;
    return device;
  };
  TransfoXlWeights out;
  ASSIGN_OR_RETURN(out.word_emb, copy(weights.word_emb, true));
  ASSIGN_OR_RETURN(out.emb_proj, copy(weights.emb_proj, true));
  ASSIGN_OR_RETURN(out.emb_proj_bias, copy(weights.emb_proj_bias, false));
  for (const TransfoXlLayerWeights& lw : weights.layers) {
    TransfoXlLayerWeights d;
    for (auto [src, dst] : {std::pair{&lw.qkv, &d.qkv},
                            {&lw.dense.r, &d.dense.r},
                            {&lw.o, &d.o},
                            {&lw.fc1, &d.fc1},
                            {&lw.fc2, &d.fc2}}) {
      ASSIGN_OR_RETURN(*dst, copy(*src, true));
    }
    for (auto [src, dst] : {std::pair{&lw.linear.features, &d.linear.features},
                            {&lw.linear.gate_weight, &d.linear.gate_weight},
                            {&lw.lsh.rotations, &d.lsh.rotations},
                            {&lw.dense.compress, &d.dense.compress},
                            {&lw.dense.compress_bias, &d.dense.compress_bias},
                            {&lw.linear.gate_bias, &d.linear.gate_bias},
                            {&lw.attn_ln_gamma, &d.attn_ln_gamma},
                            {&lw.attn_ln_beta, &d.attn_ln_beta},
                            {&lw.dense.r_w_bias, &d.dense.r_w_bias},
                            {&lw.dense.r_r_bias, &d.dense.r_r_bias},
                            {&lw.fc1_bias, &d.fc1_bias},
                            {&lw.fc2_bias, &d.fc2_bias},
                            {&lw.ff_ln_gamma, &d.ff_ln_gamma},
                            {&lw.ff_ln_beta, &d.ff_ln_beta}}) {
      ASSIGN_OR_RETURN(*dst, copy(*src, false));
    }
    out.layers.push_back(std::move(d));
  }
  ASSIGN_OR_RETURN(out.pos_emb0, copy(weights.pos_emb0, false));
  ASSIGN_OR_RETURN(out.pos_emb1, copy(weights.pos_emb1, false));
  ASSIGN_OR_RETURN(out.final_ln_gamma, copy(weights.final_ln_gamma, false));
  ASSIGN_OR_RETURN(out.final_ln_beta, copy(weights.final_ln_beta, false));
  ASSIGN_OR_RETURN(out.lm_head, copy(weights.lm_head, true));
  ASSIGN_OR_RETURN(out.lm_head_bias, copy(weights.lm_head_bias, false));
  return out;
}

}  // namespace mnemo::engine
