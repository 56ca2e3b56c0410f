#include "tests/test_checkpoint.h"

#include <stdlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "engine/model/enum_names.h"

namespace mnemo::test {

const engine::XlMemory& Ring(const engine::SessionState& state, int64_t l) {
  const engine::XlMemory* ring = state.layer(l).ring();
  EXPECT_NE(ring, nullptr) << "layer " << l << " keeps no K/V ring";
  static const engine::XlMemory kNone;
  return ring != nullptr ? *ring : kNone;
}

std::vector<engine::XlMemory> Rings(const engine::SessionState& state) {
  std::vector<engine::XlMemory> rings;
  for (const auto& layer : state.layers()) {
    if (layer->ring() != nullptr) rings.push_back(*layer->ring());
  }
  return rings;
}
namespace {

std::string ShapeJson(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string Bool(bool b) { return b ? "true" : "false"; }

}  // namespace

std::string SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

std::string FloatBytes(const std::vector<float>& values, DType dtype) {
  std::string out;
  for (float v : values) {
    switch (dtype) {
      case DType::kF32: {
        char b[4];
        std::memcpy(b, &v, 4);
        out.append(b, 4);
        break;
      }
      case DType::kF16:
      case DType::kBF16: {
        const uint16_t h = dtype == DType::kF16 ? FloatToHalf(v) : FloatToBFloat16(v);
        out.push_back(static_cast<char>(h & 0xff));
        out.push_back(static_cast<char>(h >> 8));
        break;
      }
      case DType::kI32: {
        const int32_t i = static_cast<int32_t>(v);
        char b[4];
        std::memcpy(b, &i, 4);
        out.append(b, 4);
        break;
      }
    }
  }
  return out;
}

std::string SafetensorsFromHeader(const std::string& header_json, const std::string& data) {
  std::string out;
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header_json;
  out += data;
  return out;
}

std::string SafetensorsBytes(const std::vector<RawTensor>& tensors,
                             const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<std::string> entries;
  if (!metadata.empty()) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : metadata) kv.push_back(absl::StrCat("\"", k, "\":\"", v, "\""));
    entries.push_back(absl::StrCat("\"__metadata__\":{", absl::StrJoin(kv, ","), "}"));
  }
  std::string data;
  for (const RawTensor& t : tensors) {
    const size_t begin = data.size();
    data += t.bytes;
    entries.push_back(absl::StrCat("\"", t.name, "\":{\"dtype\":\"", t.dtype,
                                   "\",\"shape\":", ShapeJson(t.shape), ",\"data_offsets\":[",
                                   begin, ",", data.size(), "]}"));
  }
  std::string header = absl::StrCat("{", absl::StrJoin(entries, ","), "}");
  while (header.size() % 8 != 0) header.push_back(' ');
  return SafetensorsFromHeader(header, data);
}

engine::ModelConfig SmallConfig() {
  engine::ModelConfig c;
  c.architecture = "transfo_xl";
  c.vocab_size = 37;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_head = 6;  // H·d_h = 12 ≠ D
  c.d_inner = 24;
  c.mem_len = 16;
  c.clamp_len = 0;
  c.same_length = false;
  c.pre_lnorm = false;
  c.untie_r = true;
  c.activation = engine::Activation::kRelu;
  c.layer_norm_epsilon = 1e-5;
  c.memory_init = engine::MemoryInit::kEmpty;
  c.tie_word_embeddings = false;
  c.dtype = DType::kF32;
  return c;
}

engine::ModelConfig ConfigWith(const std::vector<std::string>& layers,
                               std::vector<std::pair<std::string, std::string>> extra,
                               int64_t mem_len) {
  engine::ModelConfig base = SmallConfig();
  base.n_layer = static_cast<int64_t>(layers.size());
  base.mem_len = mem_len;
  auto fields = ConfigFields(base);
  std::string list = "[";
  for (size_t i = 0; i < layers.size(); ++i) list += (i ? ", " : "") + layers[i];
  fields.emplace_back("layers", list + "]");
  for (auto& f : extra) {
    bool replaced = false;
    for (auto& [k, v] : fields) {
      if (k == f.first) v = f.second, replaced = true;
    }
    if (!replaced) fields.push_back(f);
  }
  auto parsed = engine::ParseModelConfig(RenderJsonObject(fields));
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : base;
}

engine::ModelConfig MixedKindsConfig() {
  return ConfigWith(
      {R"({"attention": "dense", "memory": "compressive", "compression": "conv1d",
           "compression_rate": 2, "cmem_len": 6})",
       R"({"attention": "sparse", "window": 5})",
       R"({"attention": "linear", "feature_map": "elu"})",
       R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4, "history": 30})"},
      {}, 8);
}

engine::ModelConfig RandomConfig(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto coin = [&] { return uniform(0, 1) == 1; };
  engine::ModelConfig c = SmallConfig();
  c.vocab_size = uniform(5, 60);
  c.d_model = 2 * uniform(2, 12);
  c.n_layer = uniform(1, 3);
  c.n_head = uniform(1, 3);
  c.d_head = uniform(1, 8);
  c.d_inner = uniform(1, 40);
  c.mem_len = uniform(0, 12);
  c.clamp_len = coin() ? 0 : uniform(1, 6);
  c.same_length = coin() && c.mem_len > 0;  // same_length needs a memory
  c.pre_lnorm = coin();
  c.untie_r = coin();
  c.activation = coin() ? engine::Activation::kGelu : engine::Activation::kRelu;
  c.layer_norm_epsilon = coin() ? 1e-5 : 1e-6;
  c.memory_init = coin() ? engine::MemoryInit::kZeros : engine::MemoryInit::kEmpty;
  c.tie_word_embeddings = coin();
  const int dtype = uniform(0, 2);
  c.dtype = dtype == 0 ? DType::kF32 : dtype == 1 ? DType::kF16 : DType::kBF16;
  if (coin()) c.eos_token_id = uniform(0, static_cast<int>(c.vocab_size) - 1);
  return c;
}

engine::ModelConfig MistralConfig(int64_t n_kv_head, int64_t window, int64_t max_positions) {
  std::vector<std::pair<std::string, std::string>> extra = {{"architecture", "\"mistral\""},
                                                            {"n_head", "4"},
                                                            {"d_head", "8"},
                                                            {"pre_lnorm", "true"},
                                                            {"mem_len", "0"},
                                                            {"activation", "\"silu\""},
                                                            {"n_kv_head", absl::StrCat(n_kv_head)}};
  if (max_positions > 0) extra.emplace_back("max_positions", absl::StrCat(max_positions));
  const std::string layer = absl::StrCat(R"({"attention": "sparse", "window": )", window, "}");
  return ConfigWith({layer, layer}, extra, /*mem_len=*/0);
}

engine::ModelConfig Gemma2Config(int64_t n_kv_head, int64_t window, int64_t context) {
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"architecture", "\"gemma2\""},
      {"n_head", "4"},
      {"d_head", "8"},
      {"pre_lnorm", "true"},
      {"mem_len", "0"},
      {"activation", "\"gelu_tanh\""},
      {"n_kv_head", absl::StrCat(n_kv_head)},
      {"max_positions", absl::StrCat(context)},
      {"query_pre_attn_scalar", "24"},
      {"attn_logit_softcapping", "5"},
      {"final_logit_softcapping", "3"}};
  auto window_of = [](int64_t w) {
    return absl::StrCat(R"({"attention": "sparse", "window": )", w, "}");
  };
  return ConfigWith({window_of(window), window_of(context)}, extra, /*mem_len=*/0);
}

std::vector<std::pair<std::string, std::string>> ConfigFields(const engine::ModelConfig& c) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"architecture", absl::StrCat("\"", c.architecture, "\"")},
      {"vocab_size", absl::StrCat(c.vocab_size)},
      {"d_model", absl::StrCat(c.d_model)},
      {"n_layer", absl::StrCat(c.n_layer)},
      {"n_head", absl::StrCat(c.n_head)},
      {"d_head", absl::StrCat(c.d_head)},
      {"d_inner", absl::StrCat(c.d_inner)},
      {"mem_len", absl::StrCat(c.mem_len)},
      {"clamp_len", absl::StrCat(c.clamp_len)},
      {"same_length", Bool(c.same_length)},
      {"pre_lnorm", Bool(c.pre_lnorm)},
      {"untie_r", Bool(c.untie_r)},
      {"activation", absl::StrCat("\"", std::string(engine::EnumName(c.activation)), "\"")},
      {"layer_norm_epsilon", absl::StrCat(c.layer_norm_epsilon)},
      {"memory_init", c.memory_init == engine::MemoryInit::kZeros ? "\"zeros\"" : "\"empty\""},
      {"tie_word_embeddings", Bool(c.tie_word_embeddings)},
      {"torch_dtype", absl::StrCat("\"", std::string(DTypeName(c.dtype)), "\"")},
  };
  if (c.eos_token_id.has_value()) f.emplace_back("eos_token_id", absl::StrCat(*c.eos_token_id));
  if (c.byte_tokenizer) f.emplace_back("tokenizer", "\"bytes\"");
  // Layer entries as parsed (a config built in code has none: every layer dense).
  std::vector<std::string> layers;
  for (const engine::LayerConfig& l : c.layers) {
    if (!l.source.empty()) layers.push_back(l.source);
  }
  if (!layers.empty())
    f.emplace_back("layers", absl::StrCat("[", absl::StrJoin(layers, ", "), "]"));
  if (c.layer_groups > 0) f.emplace_back("layer_groups", absl::StrCat(c.layer_groups));
  if (c.d_embed > 0 && c.d_embed != c.d_model) f.emplace_back("d_embed", absl::StrCat(c.d_embed));
  if (c.adaptive) {
    f.emplace_back("cutoffs", absl::StrCat("[", absl::StrJoin(c.cutoffs, ", "), "]"));
    f.emplace_back("div_val", absl::StrCat(c.div_val));
  }
  if (c.n_kv_head > 0 && c.n_kv_head != c.n_head) {
    f.emplace_back("n_kv_head", absl::StrCat(c.n_kv_head));
  }
  if (c.position_limit > 0) f.emplace_back("max_positions", absl::StrCat(c.position_limit));
  if (c.gemma2) {
    f.emplace_back("query_pre_attn_scalar", absl::StrCat(1.0 / (c.attn_scale * c.attn_scale)));
    if (c.attn_softcap > 0) f.emplace_back("attn_logit_softcapping", absl::StrCat(c.attn_softcap));
    if (c.final_softcap > 0) {
      f.emplace_back("final_logit_softcapping", absl::StrCat(c.final_softcap));
    }
  }
  if (c.reformer) {
    f.emplace_back("axial_pos_shape",
                   absl::StrCat("[", absl::StrJoin(c.axial_pos_shape, ", "), "]"));
    f.emplace_back("axial_pos_embds_dim",
                   absl::StrCat("[", absl::StrJoin(c.axial_pos_embds_dim, ", "), "]"));
  }
  return f;
}

std::string RenderJsonObject(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : fields) parts.push_back(absl::StrCat("\"", k, "\": ", v));
  return absl::StrCat("{\n  ", absl::StrJoin(parts, ",\n  "), "\n}\n");
}

std::string ConfigJson(const engine::ModelConfig& config) {
  return RenderJsonObject(ConfigFields(config));
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const engine::ModelConfig& c) {
  const int64_t d = c.d_model, hd = c.attn_width();
  std::vector<std::pair<std::string, std::vector<int64_t>>> t, extra;
  if (c.adaptive) {  // docs/checkpoint-format.md "Adaptive embedding and softmax"
    const std::vector<engine::VocabularyBand> bands = c.bands();
    const bool projected = c.div_val > 1 || c.embed_width() != d;
    const size_t tables = c.div_val > 1 ? bands.size() : 1;
    for (size_t i = 0; i < tables; ++i) {
      const int64_t rows = c.div_val > 1 ? bands[i].end - bands[i].begin : c.vocab_size;
      const std::string e = absl::StrCat("adaptive.emb.", i, "."),
                        h = absl::StrCat("adaptive.head.", i, ".");
      t.push_back({e + "weight", {rows, bands[i].width}});
      if (projected) t.push_back({e + "proj", {d, bands[i].width}});
      if (!c.tie_word_embeddings) t.push_back({h + "weight", {rows, bands[i].width}});
      t.push_back({h + "bias", {rows}});
    }
    for (size_t i = 0; projected && i < bands.size(); ++i) {
      t.push_back({absl::StrCat("adaptive.head.", i, ".proj"), {bands[i].width, d}});
    }
    if (!c.cutoffs.empty()) {
      const auto k = static_cast<int64_t>(c.cutoffs.size());
      t.push_back({"adaptive.head.cluster.weight", {k, c.embed_width()}});
      t.push_back({"adaptive.head.cluster.bias", {k}});
    }
  } else {
    t.push_back({"word_emb.weight", {c.vocab_size, c.embed_width()}});
  }
  if (!c.adaptive && c.embed_width() != d) {
    t.push_back({"emb_proj.weight", {d, c.embed_width()}});
    t.push_back({"emb_proj.bias", {d}});
  }
  if (!c.untie_r && c.has_dense_layer()) {
    t.push_back({"r_w_bias", {c.n_head, c.d_head}});
    t.push_back({"r_r_bias", {c.n_head, c.d_head}});
  }
  if (c.rotary_decoder) {  // docs/checkpoint-format.md "Sliding-window decoders"
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const std::string p = absl::StrCat("layers.", l, ".");
      t.push_back({p + "attn.qkv.weight", {c.qkv_width(), d}});
      t.push_back({p + "attn.o.weight", {d, hd}});
      t.push_back({p + "attn.norm.weight", {d}});
      t.push_back({p + "ff.fc1.weight", {2 * c.d_inner, d}});
      t.push_back({p + "ff.fc2.weight", {d, c.d_inner}});
      t.push_back({p + "ff.norm.weight", {d}});
      if (c.gemma2) {
        t.push_back({p + "attn.post_norm.weight", {d}});
        t.push_back({p + "ff.post_norm.weight", {d}});
      }
    }
    t.push_back({"final_norm.weight", {d}});
    t.push_back({"rotary.inv_freq", {c.d_head / 2}});
    if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, d}});
    return t;
  }
  for (int64_t g = 0; g < c.groups(); ++g) {  // one parameter set per group
    const std::string p = absl::StrCat("layers.", g, ".");
    const engine::LayerConfig& lc = c.layer(g * c.n_layer / c.groups());
    const bool dense = lc.attention == engine::AttentionKind::kDense;
    const bool lsh = lc.attention == engine::AttentionKind::kLsh;
    t.push_back({p + "attn.qkv.weight", {(lsh ? 2 : 3) * hd, d}});
    if (dense) t.push_back({p + "attn.r.weight", {hd, d}});
    t.push_back({p + "attn.o.weight", {d, hd}});
    t.push_back({p + "attn.ln.weight", {d}});
    t.push_back({p + "attn.ln.bias", {d}});
    if (dense && c.untie_r) {
      t.push_back({p + "attn.r_w_bias", {c.n_head, c.d_head}});
      t.push_back({p + "attn.r_r_bias", {c.n_head, c.d_head}});
    }
    if (lc.attention == engine::AttentionKind::kLinear) {
      if (lc.linear.feature_map != engine::FeatureMap::kElu) {
        t.push_back({p + "attn.features", {lc.linear.num_features, c.d_head}});
      }
      if (lc.linear.gated) {
        t.push_back({p + "attn.gate.weight", {c.n_head, d}});
        t.push_back({p + "attn.gate.bias", {c.n_head}});
      }
    }
    if (lsh) {
      t.push_back({p + "attn.rotations",
                   {c.n_head, c.d_head, lc.lsh.n_hashes,
                    kernels::LshRotationColumns(lc.lsh.bucket_factors,
                                                static_cast<int>(lc.lsh.n_buckets))}});
    }
    if (lc.dense.compress_taps() > 0) {  // last, so the other tensors draw the same values
      extra.push_back({p + "attn.compress.weight", {d, d, lc.dense.compress_taps()}});
      extra.push_back({p + "attn.compress.bias", {d}});
    }
    if (lc.attention == engine::AttentionKind::kRouting) {  // last, as above
      extra.push_back({p + "attn.centroids", {c.n_head, lc.routing.n_clusters, c.d_head}});
    }
    if (lc.attention == engine::AttentionKind::kMemoryCompressed) {  // last, as above
      const int64_t rate = lc.memory_compressed.compression_rate;
      for (const char* which : {"k", "v"}) {
        extra.push_back({absl::StrCat(p, "attn.compress_", which, ".weight"), {hd, hd, rate}});
        extra.push_back({absl::StrCat(p, "attn.compress_", which, ".bias"), {hd}});
      }
    }
    t.push_back({p + "ff.fc1.weight", {c.d_inner, d}});
    t.push_back({p + "ff.fc1.bias", {c.d_inner}});
    t.push_back({p + "ff.fc2.weight", {d, c.d_inner}});
    t.push_back({p + "ff.fc2.bias", {d}});
    t.push_back({p + "ff.ln.weight", {d}});
    t.push_back({p + "ff.ln.bias", {d}});
  }
  if (c.reformer) {
    t.push_back({"pos_emb.weights.0", {c.axial_pos_shape[0], 1, c.axial_pos_embds_dim[0]}});
    t.push_back({"pos_emb.weights.1", {1, c.axial_pos_shape[1], c.axial_pos_embds_dim[1]}});
    t.push_back({"final_ln.weight", {2 * d}});
    t.push_back({"final_ln.bias", {2 * d}});
  }
  if (!c.adaptive) {
    if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, c.head_width()}});
    t.push_back({"lm_head.bias", {c.vocab_size}});
  }
  t.insert(t.end(), extra.begin(), extra.end());
  return t;
}

std::vector<RawTensor> RandomWeights(const engine::ModelConfig& config, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<RawTensor> out;
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    if (name == "rotary.inv_freq") {  // float32 whatever the dtype: the standard frequencies
      std::vector<float> f(static_cast<size_t>(shape[0]));
      for (size_t i = 0; i < f.size(); ++i) {
        f[i] = static_cast<float>(
            std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(config.d_head)));
      }
      out.push_back(RawTensor{name, "F32", shape, FloatBytes(f, DType::kF32)});
      continue;
    }
    const bool is_ln_gamma = name.ends_with("ln.weight") || name.ends_with("norm.weight");
    // (a sliding-window decoder's RMSNorm weights are float32 whatever the dtype)
    const DType dtype = name.ends_with("norm.weight") ? DType::kF32 : config.dtype;
    const bool is_bias = name.ends_with(".bias") || name.ends_with("_bias");
    const float center = is_ln_gamma ? 1.0f : 0.0f;
    const float scale = is_ln_gamma ? 0.1f : is_bias ? 0.05f : 0.1f;
    std::uniform_real_distribution<float> dist(center - scale, center + scale);
    std::vector<float> values(static_cast<size_t>(NumElements(shape)));
    for (float& v : values) v = dist(rng);
    out.push_back(RawTensor{name, SafetensorsDTypeName(dtype), shape, FloatBytes(values, dtype)});
  }
  return out;
}

std::unique_ptr<engine::TransfoXlModel> LoadModel(const engine::ModelConfig& config,
                                                  uint32_t seed) {
  ScopedTempDir dir = WriteCheckpoint(config, seed);
  auto model = engine::TransfoXlModel::Load(dir.path());
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::unique_ptr<engine::TransfoXlModel> LoadCpuModel(const std::string& dir,
                                                     const engine::ModelOptions& options) {
  auto model = engine::TransfoXlModel::Load(dir, engine::MakeCpuBackend(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::unique_ptr<engine::TransfoXlModel> LoadCpuModel(const std::string& dir,
                                                     engine::CpuWeights weights) {
  engine::ModelOptions options;
  options.cpu_weights = weights;
  return LoadCpuModel(dir, options);
}

std::vector<std::string> TestBackends() { return {"cpu", "cuda"}; }

std::unique_ptr<engine::TransfoXlModel> LoadModelOn(const std::string& device,
                                                    const engine::ModelConfig& config,
                                                    uint32_t seed, std::string* unavailable) {
  auto backend = engine::MakeBackend(device);
  if (!backend.ok()) {
    *unavailable = absl::StrCat("no ", device, " backend here: ", backend.status().message());
    return nullptr;
  }
  ScopedTempDir dir = WriteCheckpoint(config, seed);
  auto model = engine::TransfoXlModel::Load(dir.path(), std::move(*backend));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

double ExactnessTolerance(const std::string& device) { return device == "cpu" ? 1e-5 : 1e-4; }

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (int32_t& t : out) t = dist(rng);
  return out;
}

ScopedTempDir::ScopedTempDir(const std::string& label) {
  std::string tmpl = ::testing::TempDir();
  if (!tmpl.empty() && tmpl.back() != '/') tmpl += '/';
  tmpl += "mnemo_" + label + "_XXXXXX";  // mkdtemp fills in the X's with a unique suffix
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* made = ::mkdtemp(buf.data());
  EXPECT_NE(made, nullptr) << "mkdtemp " << tmpl << ": " << std::strerror(errno);
  path_ = made != nullptr ? std::string(made) : tmpl;
}

ScopedTempDir::ScopedTempDir(ScopedTempDir&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}

ScopedTempDir::~ScopedTempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string ScopedTempDir::File(const std::string& name) const { return path_ + "/" + name; }

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  EXPECT_TRUE(out.good()) << "writing " << path;
}

ScopedTempDir WriteCheckpointFiles(const std::string& config_json,
                                   const std::vector<RawTensor>& tensors) {
  ScopedTempDir dir("ckpt");
  WriteFile(dir.File("config.json"), config_json);
  WriteFile(dir.File("model.safetensors"), SafetensorsBytes(tensors));
  return dir;
}

ScopedTempDir WriteCheckpoint(const engine::ModelConfig& config, uint32_t seed) {
  return WriteCheckpointFiles(ConfigJson(config), RandomWeights(config, seed));
}

::testing::AssertionResult NearRelative(const std::vector<float>& a, const std::vector<float>& b,
                                        double tol) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  }
  double max_b = 0.0, max_diff = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      return ::testing::AssertionFailure() << "NaN at " << i << ": " << a[i] << " vs " << b[i];
    }
    max_b = std::max(max_b, std::fabs(static_cast<double>(b[i])));
    const double diff = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (diff > max_diff) {
      max_diff = diff;
      worst = i;
    }
  }
  if (max_diff <= tol * max_b) {
    return ::testing::AssertionSuccess() << "max diff " << max_diff << " (max |b| " << max_b << ")";
  }
  return ::testing::AssertionFailure()
         << "max |a-b| = " << max_diff << " > " << tol << " * max|b| (" << max_b << ") at index "
         << worst << ": " << a[worst] << " vs " << b[worst];
}

namespace {

// Tensors of uniform noise around a base (1 for LayerNorm gains, 0 otherwise), in order.
class RandomTensors {
 public:
  explicit RandomTensors(uint32_t seed) : rng_(seed) {}
  void Add(const std::string& name, std::vector<int64_t> shape, float base = 0.0f) {
    std::uniform_real_distribution<float> uniform(-0.3f, 0.3f);
    int64_t count = 1;
    for (int64_t e : shape) count *= e;
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = base + uniform(rng_);
    tensors_.push_back({name, "F32", std::move(shape), FloatBytes(v, DType::kF32)});
  }
  // The output projection, the LayerNorms and the feed-forward of a d_model 16 layer (width 16).
  void AddBlockTail(const std::string& p) {
    Add(p + "attn.o.weight", {16, 16});
    Add(p + "attn.o.bias", {16});
    Add(p + "attn.ln.weight", {16}, 1);
    Add(p + "attn.ln.bias", {16});
    Add(p + "ff.fc1.weight", {32, 16});
    Add(p + "ff.fc1.bias", {32});
    Add(p + "ff.fc2.weight", {16, 32});
    Add(p + "ff.fc2.bias", {16});
    Add(p + "ff.ln.weight", {16}, 1);
    Add(p + "ff.ln.bias", {16});
  }
  ScopedTempDir Write(const std::string& config) const {
    return WriteCheckpointFiles(config, tensors_);
  }

 private:
  std::mt19937 rng_;
  std::vector<RawTensor> tensors_;
};

// A BERT-layout encoder of d_model 16 (2 heads of 8), 2 layers, 40 ids and `position_rows`
// positions; Longformer's global projections when `global`.
ScopedTempDir WriteRandomBertEncoder(const std::string& config, int64_t position_rows, bool global,
                                     uint32_t seed) {
  RandomTensors t(seed);
  t.Add("embeddings.word.weight", {40, 16});
  t.Add("embeddings.position.weight", {position_rows, 16});
  t.Add("embeddings.token_type.weight", {1, 16});
  t.Add("embeddings.ln.weight", {16}, 1);
  t.Add("embeddings.ln.bias", {16});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const char* proj : {"attn.qkv", "attn.global_qkv"}) {
      if (!global && std::string(proj) == "attn.global_qkv") continue;
      t.Add(p + proj + ".weight", {48, 16});
      t.Add(p + proj + ".bias", {48});
    }
    t.AddBlockTail(p);
  }
  return t.Write(config);
}

}  // namespace

ScopedTempDir WriteRandomLongformer(uint32_t seed) {
  return WriteRandomBertEncoder(
      R"({"architecture": "longformer", "vocab_size": 40, "d_model": 16,
      "n_layer": 2, "n_head": 2, "d_head": 8, "d_inner": 32, "activation": "gelu",
      "layer_norm_epsilon": 1e-5, "pad_token_id": 1, "position_rows": 32, "type_vocab_size": 1,
      "attention_window": [4, 6], "torch_dtype": "float32"})",
      32, /*global=*/true, seed);
}

ScopedTempDir WriteRandomBigBird(uint32_t seed) {
  return WriteRandomBertEncoder(
      R"({"architecture": "bigbird", "vocab_size": 40, "d_model": 16,
      "n_layer": 2, "n_head": 2, "d_head": 8, "d_inner": 32, "activation": "gelu_tanh",
      "layer_norm_epsilon": 1e-12, "pad_token_id": 0, "position_rows": 66, "type_vocab_size": 1,
      "attention_type": "block_sparse", "block_size": 4, "num_random_blocks": 1,
      "rescale_embeddings": true, "torch_dtype": "float32"})",
      66, /*global=*/false, seed);
}

ScopedTempDir WriteRandomFunnel(uint32_t seed) {
  RandomTensors t(seed);
  t.Add("embeddings.word.weight", {40, 16});
  t.Add("embeddings.ln.weight", {16}, 1);
  t.Add("embeddings.ln.bias", {16});
  for (const char* p : {"layers.0.", "layers.1.", "layers.2.", "decoder.0."}) {
    const std::string s(p);
    t.Add(s + "attn.qkv.weight", {48, 16});
    t.Add(s + "attn.qkv.bias", {48});
    t.Add(s + "attn.r.weight", {16, 16});
    for (const char* bias : {"attn.r_w_bias", "attn.r_r_bias", "attn.r_s_bias"}) {
      t.Add(s + bias, {16});
    }
    t.Add(s + "attn.seg_embed", {2, 16});
    t.AddBlockTail(s);
  }
  return t.Write(R"({"architecture": "funnel", "vocab_size": 40, "d_model": 16, "n_layer": 3,
      "n_head": 2, "d_head": 8, "d_inner": 32, "activation": "gelu_tanh",
      "layer_norm_epsilon": 1e-9, "pad_token_id": 0, "position_rows": 64, "type_vocab_size": 3,
      "block_sizes": [1, 1, 1], "block_repeats": [1, 2, 1], "decoder_layers": 1,
      "separate_cls": true, "truncate_seq": true, "pool_q_only": true, "pooling": "mean",
      "segment_len": 64, "torch_dtype": "float32"})");
}

}  // namespace mnemo::test
