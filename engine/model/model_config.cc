#include "engine/model/model_config.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"

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

// One "layers" entry (MODEL-SPEC §5; CHECKPOINT-FORMAT.md).
absl::StatusOr<LayerConfig> ParseLayer(const Json& j, int64_t index, int64_t d_head,
                                       int64_t n_head) {
  const std::string where = absl::StrCat("layers[", index, "]");
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", where, " ", what));
  };
  if (!j.is_object()) return error("must be an object");
  static const std::set<std::string> kKnown = {"attention", "feature_map", "num_features", "eps",
                                               "gated",     "window",      "dilation"};
  for (const auto& item : j.items()) {
    if (!kKnown.count(item.key()))
      return error(absl::StrCat("has unknown field \"", item.key(), "\""));
  }
  LayerConfig layer;
  if (!j.contains("attention") || !j.at("attention").is_string()) {
    return error("needs \"attention\": \"dense\", \"linear\" or \"sparse\"");
  }
  const std::string attention = j.at("attention").get<std::string>();
  if (attention == "dense") {
    if (j.size() != 1) return error("(dense) takes no other field");
    return layer;
  }
  if (attention == "sparse") {
    layer.attention = AttentionKind::kSparse;
    for (const char* field : {"feature_map", "num_features", "eps", "gated"}) {
      if (j.contains(field)) return error(absl::StrCat("(sparse) has no \"", field, "\""));
    }
    auto positive = [](const Json& v) {
      return v.is_number_integer() && v.get<int64_t>() >= 1 && v.get<int64_t>() <= (1 << 20);
    };
    if (!j.contains("window") || !positive(j.at("window"))) {
      return error("(sparse) needs \"window\": an integer in [1, 1048576] (keys incl. itself)");
    }
    layer.window = j.at("window").get<int64_t>();
    layer.dilations.assign(static_cast<size_t>(n_head), 1);
    if (j.contains("dilation")) {
      const Json& d = j.at("dilation");
      if (positive(d)) {
        layer.dilations.assign(static_cast<size_t>(n_head), d.get<int64_t>());
      } else if (d.is_array() && static_cast<int64_t>(d.size()) == n_head &&
                 std::all_of(d.begin(), d.end(), positive)) {
        for (int64_t h = 0; h < n_head; ++h) layer.dilations[h] = d[h].get<int64_t>();
      } else {
        return error(absl::StrCat(
            "\"dilation\" must be an integer ≥ 1 or a list of n_head = ", n_head, " of them"));
      }
    }
    if (layer.sparse_span() > (int64_t{1} << 20)) {
      return error("window × dilation must be at most 1048576");
    }
    return layer;
  }
  for (const char* field : {"window", "dilation"}) {
    if (j.contains(field)) return error(absl::StrCat("(", attention, ") has no \"", field, "\""));
  }
  if (attention != "linear") {
    return error(absl::StrCat("\"attention\" must be \"dense\", \"linear\" or \"sparse\", got \"",
                              attention, "\""));
  }
  layer.attention = AttentionKind::kLinear;
  if (!j.contains("feature_map") || !j.at("feature_map").is_string()) {
    return error("(linear) needs \"feature_map\": \"elu\", \"favor\" or \"rfa\"");
  }
  const std::string map = j.at("feature_map").get<std::string>();
  if (map == "elu") {
    layer.feature_map = FeatureMap::kElu;
  } else if (map == "favor") {
    layer.feature_map = FeatureMap::kFavor;
  } else if (map == "rfa") {
    layer.feature_map = FeatureMap::kRfa;
  } else {
    return error(absl::StrCat("\"feature_map\" must be elu, favor or rfa, got \"", map, "\""));
  }
  if (layer.feature_map == FeatureMap::kElu) {
    if (j.contains("num_features")) return error("(elu) has d_head features: no \"num_features\"");
  } else {
    if (!j.contains("num_features")) return error("needs \"num_features\"");
    const Json& v = j.at("num_features");
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 65536) {
      return error("\"num_features\" must be an integer in [1, 65536]");
    }
    layer.num_features = v.get<int64_t>();
  }
  if (layer.feature_map == FeatureMap::kFavor && d_head > 128) {
    // Keys carry no stabiliser (so the state can be carried): exp(u − ‖k̂‖²/2) ≤ exp(d_h/2)
    // must stay far inside float32 range even summed over millions of tokens.
    return error("(favor) needs d_head ≤ 128");
  }
  if (j.contains("eps")) {
    if (!j.at("eps").is_number() || !(j.at("eps").get<double>() > 0.0)) {
      return error("\"eps\" must be a number > 0");
    }
    layer.eps = j.at("eps").get<double>();
  }
  if (j.contains("gated")) {
    if (!j.at("gated").is_boolean()) return error("\"gated\" must be true or false");
    layer.gated = j.at("gated").get<bool>();
    if (layer.gated && layer.feature_map != FeatureMap::kRfa) {
      return error("\"gated\" is only for rfa");
    }
  }
  return layer;
}

}  // namespace

int64_t LayerConfig::sparse_span() const {
  int64_t dil = 1;
  for (int64_t d : dilations) dil = std::max(dil, d);
  return (window - 1) * dil;
}

const LayerConfig& ModelConfig::layer(int64_t l) const {
  static const LayerConfig kDense;
  return l < static_cast<int64_t>(layers.size()) ? layers[static_cast<size_t>(l)] : kDense;
}

bool ModelConfig::has_dense_layer() const {
  for (int64_t l = 0; l < n_layer; ++l) {
    if (is_dense(l)) return true;
  }
  return false;
}

int64_t ModelConfig::linear_features(int64_t index) const {
  const LayerConfig& l = layer(index);
  switch (l.feature_map) {
    case FeatureMap::kElu:
      return d_head;
    case FeatureMap::kFavor:
      return l.num_features;
    case FeatureMap::kRfa:
      return 2 * l.num_features;
  }
  return d_head;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");

  static const std::set<std::string> kKnown = {"architecture", "vocab_size",
                                               "d_model",      "n_layer",
                                               "n_head",       "d_head",
                                               "d_inner",      "mem_len",
                                               "clamp_len",    "same_length",
                                               "pre_lnorm",    "untie_r",
                                               "activation",   "layer_norm_epsilon",
                                               "memory_init",  "tie_word_embeddings",
                                               "torch_dtype",  "eos_token_id",
                                               "layers"};
  for (const auto& item : j.items()) {
    if (!kKnown.count(item.key())) return FieldError(item.key(), "is not a known field");
  }

  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, GetString(j, "architecture"));
  if (c.architecture != "transfo_xl") {
    return FieldError("architecture", absl::StrCat("names unknown architecture \"", c.architecture,
                                                   "\" (supported: transfo_xl)"));
  }
  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, "vocab_size", 1, kMaxDimension));
  ASSIGN_OR_RETURN(c.d_model, GetInt(j, "d_model", 2, 1 << 16));
  if (c.d_model % 2 != 0) return FieldError("d_model", "must be even (sinusoid table)");
  ASSIGN_OR_RETURN(c.n_layer, GetInt(j, "n_layer", 1, 1024));
  ASSIGN_OR_RETURN(c.n_head, GetInt(j, "n_head", 1, 1024));
  ASSIGN_OR_RETURN(c.d_head, GetInt(j, "d_head", 1, 4096));
  if (c.n_head * c.d_head > (1 << 16)) {
    return FieldError("n_head", "times d_head must be at most 65536");
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
  if (activation == "relu") {
    c.activation = Activation::kRelu;
  } else if (activation == "gelu") {
    c.activation = Activation::kGelu;
  } else {
    return FieldError("activation",
                      absl::StrCat("must be \"relu\" or \"gelu\", got \"", activation, "\""));
  }

  ASSIGN_OR_RETURN(std::string memory_init, GetString(j, "memory_init"));
  if (memory_init == "zeros") {
    c.memory_init = MemoryInit::kZeros;
  } else if (memory_init == "empty") {
    c.memory_init = MemoryInit::kEmpty;
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

  if (j.contains("eos_token_id") && !j.at("eos_token_id").is_null()) {
    ASSIGN_OR_RETURN(int64_t eos, GetInt(j, "eos_token_id", 0, c.vocab_size - 1));
    c.eos_token_id = eos;
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
                       ParseLayer(layers[static_cast<size_t>(l)], l, c.d_head, c.n_head));
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
