#include "engine/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/attention/registry.h"
#include "engine/encoder/encoder_config.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {
namespace {

using Json = nlohmann::json;

// Sizes above this are certainly mistakes and would overflow products downstream.
constexpr int64_t kMaxDimension = int64_t{1} << 24;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field \"", field, "\" ", what));
}

absl::StatusOr<int64_t> GetInt(const Json& j, const char* field, int64_t min, int64_t max) {
  if (!j.contains(field)) return FieldError(field, "is missing");
  const Json& v = j.at(field);
  if (!v.is_number_integer()) return FieldError(field, "must be an integer");
  const int64_t x = v.get<int64_t>();
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) {
    return FieldError(field, absl::StrCat("must be at most ", max));
  }
  if (x < min || x > max) {
    return FieldError(field, absl::StrCat("must be in [", min, ", ", max, "], got ", x));
  }
  return x;
}

absl::StatusOr<bool> GetBool(const Json& j, const char* field) {
  if (!j.contains(field)) return FieldError(field, "is missing");
  if (!j.at(field).is_boolean()) return FieldError(field, "must be true or false");
  return j.at(field).get<bool>();
}

absl::StatusOr<std::string> GetString(const Json& j, const char* field) {
  if (!j.contains(field)) return FieldError(field, "is missing");
  if (!j.at(field).is_string()) return FieldError(field, "must be a string");
  return j.at(field).get<std::string>();
}

// One "layers" entry (MODEL-SPEC §2–5; docs/checkpoint-format.md): the kind, then its own fields
// (engine/attention/registry.h).
absl::StatusOr<LayerConfig> ParseLayer(const Json& j, int64_t index, const ModelConfig& c) {
  LayerEntryReader r(j, absl::StrCat("layers[", index, "]"));
  if (!j.is_object()) return r.Error("must be an object");
  LayerConfig layer;
  layer.source = j.dump();
  ASSIGN_OR_RETURN(std::string attention,
                   r.String("attention", std::nullopt, EnumNames<AttentionKind>()));
  layer.attention = *ParseEnum<AttentionKind>(attention);
  RETURN_IF_ERROR(ParseAttentionConfig(r, c, layer));
  RETURN_IF_ERROR(r.CheckAllRead());
  return layer;
}

// "cutoffs" and "div_val": the bands of an adaptive embedding and softmax.
absl::Status ParseAdaptive(const Json& j, ModelConfig& c) {
  const Json& v = j.at("cutoffs");
  if (!v.is_array() || v.size() > 64) {
    return FieldError("cutoffs", "must be a list of at most 64 integers");
  }
  c.adaptive = true;
  int64_t previous = 0;
  for (const Json& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() <= previous ||
        x.get<int64_t>() >= c.vocab_size) {
      return FieldError(
          "cutoffs",
          absl::StrCat("must ascend strictly within (0, vocab_size = ", c.vocab_size, ")"));
    }
    previous = x.get<int64_t>();
    c.cutoffs.push_back(previous);
  }
  if (j.contains("div_val")) {
    ASSIGN_OR_RETURN(c.div_val, GetInt(j, "div_val", 1, 1 << 16));
  }
  for (const VocabularyBand& band : c.bands()) {
    if (band.width < 1) {
      return FieldError("div_val", absl::StrCat("leaves band [", band.begin, ", ", band.end,
                                                ") no columns (d_embed / div_val^i < 1)"));
    }
  }
  if (c.reformer || c.layer_groups > 0) {
    return FieldError("cutoffs", "is for architecture transfo_xl without layer_groups");
  }
  return absl::OkStatus();
}

}  // namespace

int64_t SparseConfig::sparse_span() const {
  if (pattern != SparsePattern::kWindow) return span;
  int64_t dil = 1;
  for (int64_t d : dilations) dil = std::max(dil, d);
  return (window - 1) * dil;
}

int64_t DenseConfig::compress_taps() const {
  if (!compressive()) return 0;
  if (compression == Compression::kConv1d) return compression_rate;
  if (compression == Compression::kDilatedConv) return compression_kernel;
  return 0;
}

const LayerConfig& ModelConfig::layer(int64_t l) const {
  static const LayerConfig kDense;
  return l < static_cast<int64_t>(layers.size()) ? layers[static_cast<size_t>(l)] : kDense;
}

std::vector<VocabularyBand> ModelConfig::bands() const {
  std::vector<VocabularyBand> out;
  if (!adaptive) return out;
  int64_t begin = 0, width = embed_width();
  for (size_t i = 0; i <= cutoffs.size(); ++i) {
    const int64_t end = i < cutoffs.size() ? cutoffs[i] : vocab_size;
    out.push_back({begin, end, width});
    begin = end;
    width /= div_val;
  }
  return out;
}

bool ModelConfig::has_dense_layer() const {
  for (int64_t l = 0; l < n_layer; ++l) {
    if (is_dense(l)) return true;
  }
  return false;
}

int64_t ModelConfig::linear_features(int64_t index) const {
  const LayerConfig& l = layer(index);
  switch (l.linear.feature_map) {
    case FeatureMap::kElu:
      return d_head;
    case FeatureMap::kFavor:
      return l.linear.num_features;
    case FeatureMap::kRfa:
      return 2 * l.linear.num_features;
  }
  return d_head;
}

// What architectures "mistral" and "gemma2" are built from (docs/checkpoint-format.md
// "Sliding-window decoders"): pre-norm blocks of contiguous sliding windows, nothing of
// Transformer-XL's.
absl::Status CheckRotaryDecoder(const ModelConfig& c) {
  if (!c.pre_lnorm || c.mem_len != 0 || c.embed_width() != c.d_model || c.layer_groups > 0 ||
      c.adaptive) {
    return FieldError("architecture",
                      absl::StrCat(c.architecture,
                                   " needs pre_lnorm true, mem_len 0 and no d_embed, layer_groups "
                                   "or cutoffs"));
  }
  if (c.d_head % 2 != 0) return FieldError("d_head", "must be even (rotary positions)");
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerConfig& lc = c.layers[l];
    const bool window = lc.attention == AttentionKind::kSparse &&
                        lc.sparse.pattern == SparsePattern::kWindow && !lc.sparse.has_globals() &&
                        !lc.residual_attention &&
                        std::all_of(lc.sparse.dilations.begin(), lc.sparse.dilations.end(),
                                    [](int64_t d) { return d == 1; });
    if (!window) {
      return FieldError("layers", absl::StrCat("[", l, "]: a ", c.architecture,
                                               "'s layers are sparse windows of dilation 1 "
                                               "without globals or residual_attention"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");
  if (j.contains("architecture") && j.at("architecture").is_string() &&
      IsEncoderArchitecture(j.at("architecture").get<std::string>())) {
    return FieldError("architecture",
                      "names an encoder (docs/checkpoint-format.md \"Encoders\"): it has no "
                      "sessions; encode documents with `mnemo encode`");
  }

  static const std::set<std::string> kKnown = {"architecture",
                                               "vocab_size",
                                               "d_model",
                                               "n_layer",
                                               "n_head",
                                               "d_head",
                                               "d_inner",
                                               "mem_len",
                                               "clamp_len",
                                               "same_length",
                                               "pre_lnorm",
                                               "untie_r",
                                               "activation",
                                               "layer_norm_epsilon",
                                               "memory_init",
                                               "tie_word_embeddings",
                                               "torch_dtype",
                                               "eos_token_id",
                                               "layers",
                                               "layer_groups",
                                               "d_embed",
                                               "axial_pos_shape",
                                               "axial_pos_embds_dim",
                                               "cutoffs",
                                               "div_val",
                                               "tokenizer",
                                               "n_kv_head",
                                               "max_positions",
                                               "query_pre_attn_scalar",
                                               "attn_logit_softcapping",
                                               "final_logit_softcapping"};
  for (const auto& item : j.items()) {
    if (!kKnown.count(item.key())) return FieldError(item.key(), "is not a known field");
  }

  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, GetString(j, "architecture"));
  if (c.architecture != "transfo_xl" && c.architecture != "reformer" &&
      c.architecture != "mistral" && c.architecture != "gemma2") {
    return FieldError("architecture",
                      absl::StrCat("names unknown architecture \"", c.architecture,
                                   "\" (supported: transfo_xl, reformer, mistral, gemma2)"));
  }
  c.reformer = c.architecture == "reformer";
  c.gemma2 = c.architecture == "gemma2";
  c.rotary_decoder = c.architecture == "mistral" || c.gemma2;
  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, "vocab_size", 1, kMaxDimension));
  ASSIGN_OR_RETURN(c.d_model, GetInt(j, "d_model", 2, 1 << 16));
  if (c.d_model % 2 != 0) return FieldError("d_model", "must be even (sinusoid table)");
  ASSIGN_OR_RETURN(c.n_layer, GetInt(j, "n_layer", 1, 1024));
  ASSIGN_OR_RETURN(c.n_head, GetInt(j, "n_head", 1, 1024));
  ASSIGN_OR_RETURN(c.d_head, GetInt(j, "d_head", 1, 4096));
  if (c.n_head * c.d_head > (1 << 16)) {
    return FieldError("n_head", "times d_head must be at most 65536");
  }
  c.n_kv_head = c.n_head;
  if (j.contains("n_kv_head")) {
    ASSIGN_OR_RETURN(c.n_kv_head, GetInt(j, "n_kv_head", 1, c.n_head));
    if (c.n_head % c.n_kv_head != 0) return FieldError("n_kv_head", "must divide n_head");
  }
  ASSIGN_OR_RETURN(c.d_inner, GetInt(j, "d_inner", 1, 1 << 18));
  ASSIGN_OR_RETURN(c.mem_len, GetInt(j, "mem_len", 0, 1 << 20));
  ASSIGN_OR_RETURN(c.clamp_len, GetInt(j, "clamp_len", 0, 1 << 20));
  ASSIGN_OR_RETURN(c.same_length, GetBool(j, "same_length"));
  if (c.same_length && c.mem_len == 0) {
    // Every query would see mem_len = 0 keys, not even itself.
    return FieldError("same_length", "requires mem_len > 0");
  }
  ASSIGN_OR_RETURN(c.pre_lnorm, GetBool(j, "pre_lnorm"));
  ASSIGN_OR_RETURN(c.untie_r, GetBool(j, "untie_r"));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, "tie_word_embeddings"));

  ASSIGN_OR_RETURN(std::string activation, GetString(j, "activation"));
  if (auto parsed = ParseEnum<Activation>(activation)) {
    c.activation = *parsed;
  } else {
    return FieldError("activation",
                      absl::StrCat("must be \"relu\", \"gelu\", \"silu\" or \"gelu_tanh\", got \"",
                                   activation, "\""));
  }
  if ((c.activation == Activation::kSilu || c.activation == Activation::kGeluTanh) &&
      !c.rotary_decoder) {
    return FieldError("activation", absl::StrCat("\"", activation,
                                                 "\" is for architectures mistral and gemma2 (a "
                                                 "gated MLP)"));
  }

  ASSIGN_OR_RETURN(std::string memory_init, GetString(j, "memory_init"));
  if (auto parsed = ParseEnum<MemoryInit>(memory_init)) {
    c.memory_init = *parsed;
  } else {
    return FieldError("memory_init",
                      absl::StrCat("must be \"zeros\" or \"empty\", got \"", memory_init, "\""));
  }

  if (!j.contains("layer_norm_epsilon")) return FieldError("layer_norm_epsilon", "is missing");
  if (!j.at("layer_norm_epsilon").is_number()) {
    return FieldError("layer_norm_epsilon", "must be a number");
  }
  c.layer_norm_epsilon = j.at("layer_norm_epsilon").get<double>();
  if (!(c.layer_norm_epsilon > 0.0 && c.layer_norm_epsilon < 1.0)) {
    return FieldError("layer_norm_epsilon", "must be in (0, 1)");
  }

  ASSIGN_OR_RETURN(std::string dtype, GetString(j, "torch_dtype"));
  auto parsed = ParseDTypeName(dtype);
  if (!parsed.ok() || *parsed == DType::kI32) {
    return FieldError("torch_dtype",
                      absl::StrCat("must be float32, float16 or bfloat16, got \"", dtype, "\""));
  }
  c.dtype = *parsed;

  if (j.contains("tokenizer")) {
    ASSIGN_OR_RETURN(std::string tokenizer, GetString(j, "tokenizer"));
    if (tokenizer != "bytes") {
      return FieldError("tokenizer", absl::StrCat("names unknown tokenizer \"", tokenizer,
                                                  "\" (supported: bytes)"));
    }
    if (c.vocab_size < 258) {
      return FieldError("tokenizer", absl::StrCat("\"bytes\" needs vocab_size ≥ 258 (byte b is id "
                                                  "b + 2), not ",
                                                  c.vocab_size));
    }
    c.byte_tokenizer = true;
  }
  if (j.contains("eos_token_id") && !j.at("eos_token_id").is_null()) {
    ASSIGN_OR_RETURN(int64_t eos, GetInt(j, "eos_token_id", 0, c.vocab_size - 1));
    c.eos_token_id = eos;
  }

  if (j.contains("layer_groups")) {
    ASSIGN_OR_RETURN(c.layer_groups, GetInt(j, "layer_groups", 1, c.n_layer));
    if (c.n_layer % c.layer_groups != 0) return FieldError("layer_groups", "must divide n_layer");
  }
  c.d_embed = c.d_model;
  if (j.contains("d_embed")) {
    ASSIGN_OR_RETURN(c.d_embed, GetInt(j, "d_embed", 1, 1 << 16));
  }
  if (j.contains("cutoffs")) {
    RETURN_IF_ERROR(ParseAdaptive(j, c));
  } else if (j.contains("div_val")) {
    return FieldError("div_val", "needs \"cutoffs\" (an adaptive embedding and softmax)");
  }
  if (!c.adaptive && c.d_embed != c.d_model && c.tie_word_embeddings) {
    return FieldError("d_embed", "must equal d_model when tie_word_embeddings is true");
  }

  c.layers.assign(static_cast<size_t>(c.n_layer), LayerConfig{});
  if (j.contains("layers")) {
    const Json& layers = j.at("layers");
    if (!layers.is_array() || static_cast<int64_t>(layers.size()) != c.n_layer) {
      return FieldError("layers",
                        absl::StrCat("must be a list of n_layer = ", c.n_layer, " layer objects"));
    }
    for (int64_t l = 0; l < c.n_layer; ++l) {
      ASSIGN_OR_RETURN(c.layers[static_cast<size_t>(l)],
                       ParseLayer(layers[static_cast<size_t>(l)], l, c));
    }
  }
  for (const char* field : {"axial_pos_shape", "axial_pos_embds_dim"}) {
    if (j.contains(field) != c.reformer) {
      return FieldError(field, c.reformer ? "is missing" : "is only for architecture reformer");
    }
  }
  if (c.reformer) {
    auto pair = [&](const char* field, int64_t max) -> absl::StatusOr<std::vector<int64_t>> {
      const Json& v = j.at(field);
      if (!v.is_array() || v.size() != 2 || !std::all_of(v.begin(), v.end(), [&](const Json& x) {
            return x.is_number_integer() && x.get<int64_t>() >= 1 && x.get<int64_t>() <= max;
          })) {
        return FieldError(field, absl::StrCat("must be two integers in [1, ", max, "]"));
      }
      return std::vector<int64_t>{v[0].get<int64_t>(), v[1].get<int64_t>()};
    };
    ASSIGN_OR_RETURN(c.axial_pos_shape, pair("axial_pos_shape", 1 << 20));
    ASSIGN_OR_RETURN(c.axial_pos_embds_dim, pair("axial_pos_embds_dim", c.d_model));
    if (c.axial_pos_embds_dim[0] + c.axial_pos_embds_dim[1] != c.d_model) {
      return FieldError("axial_pos_embds_dim", "must add up to d_model");
    }
    if (c.axial_pos_shape[0] * c.axial_pos_shape[1] > (int64_t{1} << 30)) {
      return FieldError("axial_pos_shape", "allows at most 2^30 positions");
    }
    if (!c.pre_lnorm || c.tie_word_embeddings || c.mem_len != 0 || c.embed_width() != c.d_model ||
        c.layer_groups > 0) {
      return FieldError("architecture",
                        "reformer needs pre_lnorm true, tie_word_embeddings "
                        "false, mem_len 0 and no d_embed or layer_groups");
    }
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const AttentionKind kind = c.layers[l].attention;
      if ((kind != AttentionKind::kLsh && kind != AttentionKind::kSparse) ||
          c.layers[l].residual_attention) {
        return FieldError("layers", absl::StrCat("[", l,
                                                 "]: a reformer's layers are lsh or "
                                                 "sparse (without residual_attention)"));
      }
    }
  }

  if (j.contains("max_positions")) {
    ASSIGN_OR_RETURN(c.position_limit, GetInt(j, "max_positions", 1, int64_t{1} << 30));
    if (c.reformer) return FieldError("max_positions", "is axial_pos_shape's for a reformer");
  }
  if (c.n_kv_head != c.n_head && !c.rotary_decoder) {
    return FieldError("n_kv_head",
                      "differs from n_head, which only architectures mistral and gemma2 allow");
  }
  if (c.rotary_decoder) RETURN_IF_ERROR(CheckRotaryDecoder(c));
  for (const char* field :
       {"query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"}) {
    if (j.contains(field) && !c.gemma2) return FieldError(field, "is only for architecture gemma2");
  }
  if (c.gemma2) {
    auto positive = [&](const char* field, bool required) -> absl::StatusOr<double> {
      if (!j.contains(field) || j.at(field).is_null()) {
        if (required) return FieldError(field, "is missing");
        return 0.0;
      }
      if (!j.at(field).is_number()) return FieldError(field, "must be a number");
      const double v = j.at(field).get<double>();
      if (!(v > 0.0 && v < 1e9)) return FieldError(field, "must be in (0, 1e9)");
      return v;
    };
    ASSIGN_OR_RETURN(const double scalar, positive("query_pre_attn_scalar", true));
    c.attn_scale = 1.0 / std::sqrt(scalar);
    ASSIGN_OR_RETURN(c.attn_softcap, positive("attn_logit_softcapping", false));
    ASSIGN_OR_RETURN(c.final_softcap, positive("final_logit_softcapping", false));
  }

  // RealFormer: a residual layer adds scores over the same keys as the layer before it.
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (!c.layers[l].residual_attention) continue;
    const std::string where = absl::StrCat("[", l, "] has residual_attention");
    if (l == 0) return FieldError("layers", where + " but is the first layer");
    auto without_flag = [&](int64_t i) {
      Json entry = j.at("layers")[static_cast<size_t>(i)];
      entry.erase("residual_attention");
      return entry.dump();
    };
    if (without_flag(l) != without_flag(l - 1)) {
      return FieldError("layers", where +
                                      " but differs from the layer before it (their keys "
                                      "must agree)");
    }
    if (c.layers[l].sparse.has_globals()) {
      return FieldError("layers", where + " and global positions (not supported)");
    }
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int64_t first = c.param_layer(l) * c.n_layer / c.groups();  // the group's first layer
    if (c.layers[l].source != c.layers[first].source) {
      return FieldError("layers", absl::StrCat("[", l, "] shares the parameters of layer ", first,
                                               " (layer_groups) but differs from it"));
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  auto config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

}  // namespace mnemo::engine
