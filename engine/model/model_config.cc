#include "engine/model/model_config.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/model/enum_names.h"

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

// Reads one "layers" entry's fields, naming the entry in errors and remembering which fields
// were read so that any other field is rejected.
class EntryReader {
 public:
  EntryReader(const Json& j, std::string where) : j_(j), where_(std::move(where)) {}

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json: ", where_, " ", what));
  }
  bool Has(const char* field) {
    used_.insert(field);
    return j_.contains(field);
  }
  // An integer in [min, max]; `fallback` when absent, or an error when no fallback is given.
  absl::StatusOr<int64_t> Int(const char* field, int64_t min, int64_t max,
                              std::optional<int64_t> fallback = std::nullopt) {
    if (!Has(field)) {
      if (fallback) return *fallback;
      return Error(absl::StrCat("needs \"", field, "\": an integer in [", min, ", ", max, "]"));
    }
    const Json& v = j_.at(field);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(max)) ||
        v.get<int64_t>() < min || v.get<int64_t>() > max) {
      return Error(absl::StrCat("\"", field, "\" must be an integer in [", min, ", ", max, "]"));
    }
    return v.get<int64_t>();
  }
  // A list of integers in [min, max] (sorted and deduplicated when `ascending`).
  absl::StatusOr<std::vector<int64_t>> IntList(const char* field, int64_t min, int64_t max) {
    std::vector<int64_t> out;
    if (!Has(field)) return out;
    const Json& v = j_.at(field);
    if (!v.is_array() || v.size() > 65536) {
      return Error(absl::StrCat("\"", field, "\" must be a list of at most 65536 integers"));
    }
    for (const Json& x : v) {
      if (!x.is_number_integer() || x.get<int64_t>() < min || x.get<int64_t>() > max) {
        return Error(
            absl::StrCat("\"", field, "\" entries must be integers in [", min, ", ", max, "]"));
      }
      out.push_back(x.get<int64_t>());
    }
    std::sort(out.begin(), out.end());
    if (std::adjacent_find(out.begin(), out.end()) != out.end()) {
      return Error(absl::StrCat("\"", field, "\" repeats an entry"));
    }
    return out;
  }
  absl::StatusOr<std::string> String(const char* field, std::optional<std::string> fallback,
                                     const std::vector<std::string>& allowed) {
    std::string value;
    if (!Has(field)) {
      if (!fallback) return Error(absl::StrCat("needs \"", field, "\""));
      value = *fallback;
    } else if (!j_.at(field).is_string()) {
      return Error(absl::StrCat("\"", field, "\" must be a string"));
    } else {
      value = j_.at(field).get<std::string>();
    }
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      std::string names;
      for (const std::string& a : allowed) absl::StrAppend(&names, names.empty() ? "" : ", ", a);
      return Error(absl::StrCat("\"", field, "\" must be one of ", names, "; got \"", value, "\""));
    }
    return value;
  }
  // Every field present must have been read.
  absl::Status CheckAllRead() const {
    for (const auto& item : j_.items()) {
      if (!used_.count(item.key())) {
        return Error(absl::StrCat("has unknown or misplaced field \"", item.key(), "\""));
      }
    }
    return absl::OkStatus();
  }

 private:
  const Json& j_;
  std::string where_;
  std::set<std::string> used_;
};

constexpr int64_t kMaxSpan = int64_t{1} << 20;

absl::Status ParseSparse(EntryReader& r, const Json& j, const ModelConfig& c, LayerConfig& layer) {
  layer.attention = AttentionKind::kSparse;
  ASSIGN_OR_RETURN(std::string pattern, r.String("pattern", "window", EnumNames<SparsePattern>()));
  const int64_t n_head = c.n_head;
  layer.pattern = *ParseEnum<SparsePattern>(pattern);
  if (pattern == "window") {
    ASSIGN_OR_RETURN(layer.window, r.Int("window", 1, kMaxSpan));
    layer.dilations.assign(static_cast<size_t>(n_head), 1);
    if (r.Has("dilation")) {
      const Json& d = j.at("dilation");
      auto positive = [](const Json& v) {
        return v.is_number_integer() && v.get<int64_t>() >= 1 && v.get<int64_t>() <= kMaxSpan;
      };
      if (positive(d)) {
        layer.dilations.assign(static_cast<size_t>(n_head), d.get<int64_t>());
      } else if (d.is_array() && static_cast<int64_t>(d.size()) == n_head &&
                 std::all_of(d.begin(), d.end(), positive)) {
        for (int64_t h = 0; h < n_head; ++h) layer.dilations[h] = d[h].get<int64_t>();
      } else {
        return r.Error(absl::StrCat(
            "\"dilation\" must be an integer ≥ 1 or a list of n_head = ", n_head, " of them"));
      }
    }
    if (layer.sparse_span() > kMaxSpan) {
      return r.Error("window × dilation must be at most 1048576");
    }
  } else {
    ASSIGN_OR_RETURN(layer.span, r.Int("span", 1, kMaxSpan));
    if (pattern == "strided" || pattern == "fixed") {
      const bool strided = pattern == "strided";
      layer.pattern = strided ? SparsePattern::kStrided : SparsePattern::kFixed;
      if (strided) {
        ASSIGN_OR_RETURN(layer.stride, r.Int("stride", 1, kMaxSpan));
      } else {
        ASSIGN_OR_RETURN(layer.block, r.Int("block", 1, kMaxSpan));
        ASSIGN_OR_RETURN(layer.summary, r.Int("summary", 1, layer.block));
      }
      const std::vector<std::string> names = strided ? std::vector<std::string>{"local", "strided"}
                                                     : std::vector<std::string>{"block", "summary"};
      std::vector<uint8_t> parts = {1, 2};
      if (r.Has("components")) {
        const Json& v = j.at("components");
        parts.clear();
        if (!v.is_array() || v.empty() || v.size() > 2) {
          return r.Error(absl::StrCat("\"components\" must list one or both of \"", names[0],
                                      "\", \"", names[1], "\""));
        }
        for (const Json& x : v) {
          const int idx = !x.is_string()                     ? -1
                          : x.get<std::string>() == names[0] ? 0
                          : x.get<std::string>() == names[1] ? 1
                                                             : -1;
          if (idx < 0 || std::count(parts.begin(), parts.end(), uint8_t(1u << idx)) > 0) {
            return r.Error(absl::StrCat("\"components\" must list one or both of \"", names[0],
                                        "\", \"", names[1], "\" (each once)"));
          }
          parts.push_back(static_cast<uint8_t>(1u << idx));
        }
      }
      ASSIGN_OR_RETURN(std::string split, r.String("split", "heads", {"heads", "union"}));
      layer.head_components.assign(static_cast<size_t>(n_head), 0);
      for (int64_t h = 0; h < n_head; ++h) {
        if (split == "heads") {
          layer.head_components[h] = parts[static_cast<size_t>(h) % parts.size()];
        } else {
          for (uint8_t p : parts) layer.head_components[h] |= p;
        }
      }
    } else {
      layer.pattern = SparsePattern::kBigBird;
      ASSIGN_OR_RETURN(layer.block, r.Int("block", 1, kMaxSpan));
      ASSIGN_OR_RETURN(layer.window_blocks, r.Int("window_blocks", 1, kMaxSpan, 3));
      ASSIGN_OR_RETURN(layer.random_blocks, r.Int("random_blocks", 0, 4096, 2));
      ASSIGN_OR_RETURN(int64_t seed, r.Int("seed", 0, std::numeric_limits<int64_t>::max(), 0));
      layer.seed = static_cast<uint64_t>(seed);
    }
  }
  ASSIGN_OR_RETURN(layer.global_positions,
                   r.IntList("global_positions", 0, std::numeric_limits<int64_t>::max() / 4));
  ASSIGN_OR_RETURN(std::vector<int64_t> tokens, r.IntList("global_tokens", 0, c.vocab_size - 1));
  layer.global_tokens.assign(tokens.begin(), tokens.end());
  const int64_t default_kept = static_cast<int64_t>(layer.global_positions.size());
  ASSIGN_OR_RETURN(layer.max_global,
                   r.Int("max_global", 0, 65536, std::min<int64_t>(default_kept, 65536)));
  if (!layer.global_tokens.empty() && layer.max_global < 1) {
    return r.Error("\"global_tokens\" needs \"max_global\" ≥ 1");
  }
  return absl::OkStatus();
}

absl::Status ParseLsh(EntryReader& r, LayerConfig& layer) {
  layer.attention = AttentionKind::kLsh;
  ASSIGN_OR_RETURN(layer.n_hashes, r.Int("n_hashes", 1, 64));
  ASSIGN_OR_RETURN(layer.n_buckets, r.Int("n_buckets", 2, 65536));
  if (layer.n_buckets % 2 != 0) return r.Error("\"n_buckets\" must be even");
  ASSIGN_OR_RETURN(layer.chunk_len, r.Int("chunk_len", 1, kMaxSpan));
  ASSIGN_OR_RETURN(layer.history, r.Int("history", 1, kMaxSpan, 4096));
  ASSIGN_OR_RETURN(std::string sort, r.String("sort", "window", {"window", "call"}));
  layer.lsh_call_sort = sort == "call";
  return absl::OkStatus();
}

absl::Status ParseLinear(EntryReader& r, const ModelConfig& c, LayerConfig& layer) {
  layer.attention = AttentionKind::kLinear;
  ASSIGN_OR_RETURN(std::string map, r.String("feature_map", std::nullopt, EnumNames<FeatureMap>()));
  layer.feature_map = *ParseEnum<FeatureMap>(map);
  if (layer.feature_map == FeatureMap::kElu) {
    if (r.Has("num_features")) return r.Error("(elu) has d_head features: no \"num_features\"");
  } else {
    ASSIGN_OR_RETURN(layer.num_features, r.Int("num_features", 1, 65536));
  }
  if (layer.feature_map == FeatureMap::kFavor && c.d_head > 128) {
    // Keys carry no stabiliser (so the state can be carried): exp(u − ‖k̂‖²/2) ≤ exp(d_h/2)
    // must stay far inside float32 range even summed over millions of tokens.
    return r.Error("(favor) needs d_head ≤ 128");
  }
  return absl::OkStatus();
}

absl::Status ParseLinearOptions(EntryReader& r, const Json& j, LayerConfig& layer) {
  if (r.Has("eps")) {
    if (!j.at("eps").is_number() || !(j.at("eps").get<double>() > 0.0)) {
      return r.Error("\"eps\" must be a number > 0");
    }
    layer.eps = j.at("eps").get<double>();
  }
  if (r.Has("gated")) {
    if (!j.at("gated").is_boolean()) return r.Error("\"gated\" must be true or false");
    layer.gated = j.at("gated").get<bool>();
    if (layer.gated && layer.feature_map != FeatureMap::kRfa) {
      return r.Error("\"gated\" is only for rfa");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseMemory(EntryReader& r, const ModelConfig& c, LayerConfig& layer) {
  ASSIGN_OR_RETURN(std::string memory, r.String("memory", "xl", EnumNames<MemoryKind>()));
  layer.memory = *ParseEnum<MemoryKind>(memory);
  if (layer.memory == MemoryKind::kXl) return absl::OkStatus();
  if (c.mem_len < 1) return r.Error("(compressive) needs mem_len ≥ 1");
  if (c.same_length) return r.Error("(compressive) needs same_length false");
  ASSIGN_OR_RETURN(std::string f, r.String("compression", std::nullopt, EnumNames<Compression>()));
  layer.compression = *ParseEnum<Compression>(f);
  ASSIGN_OR_RETURN(layer.compression_rate, r.Int("compression_rate", 1, c.mem_len));
  ASSIGN_OR_RETURN(layer.cmem_len, r.Int("cmem_len", 1, kMaxSpan));
  if (layer.compression == Compression::kDilatedConv) {
    ASSIGN_OR_RETURN(layer.compression_kernel,
                     r.Int("compression_kernel", 1, layer.compression_rate, 2));
    if (layer.compression_rate % layer.compression_kernel != 0) {
      return r.Error("\"compression_kernel\" must divide \"compression_rate\"");
    }
  }
  return absl::OkStatus();
}

// One "layers" entry (MODEL-SPEC §2–5; docs/checkpoint-format.md).
absl::StatusOr<LayerConfig> ParseLayer(const Json& j, int64_t index, const ModelConfig& c) {
  EntryReader r(j, absl::StrCat("layers[", index, "]"));
  if (!j.is_object()) return r.Error("must be an object");
  LayerConfig layer;
  layer.source = j.dump();
  ASSIGN_OR_RETURN(std::string attention,
                   r.String("attention", std::nullopt, EnumNames<AttentionKind>()));
  if (attention == "dense" || attention == "sparse") {
    if (r.Has("residual_attention")) {
      if (!j.at("residual_attention").is_boolean()) {
        return r.Error("\"residual_attention\" must be true or false");
      }
      layer.residual_attention = j.at("residual_attention").get<bool>();
    }
  }
  if (attention == "dense") {
    RETURN_IF_ERROR(ParseMemory(r, c, layer));
  } else if (attention == "sparse") {
    RETURN_IF_ERROR(ParseSparse(r, j, c, layer));
  } else if (attention == "lsh") {
    RETURN_IF_ERROR(ParseLsh(r, layer));
  } else {
    RETURN_IF_ERROR(ParseLinear(r, c, layer));
    RETURN_IF_ERROR(ParseLinearOptions(r, j, layer));
  }
  RETURN_IF_ERROR(r.CheckAllRead());
  return layer;
}

}  // namespace

int64_t LayerConfig::sparse_span() const {
  if (pattern != SparsePattern::kWindow) return span;
  int64_t dil = 1;
  for (int64_t d : dilations) dil = std::max(dil, d);
  return (window - 1) * dil;
}

int64_t LayerConfig::compress_taps() const {
  if (!compressive()) return 0;
  if (compression == Compression::kConv1d) return compression_rate;
  if (compression == Compression::kDilatedConv) return compression_kernel;
  return 0;
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
                                               "axial_pos_embds_dim"};
  for (const auto& item : j.items()) {
    if (!kKnown.count(item.key())) return FieldError(item.key(), "is not a known field");
  }

  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, GetString(j, "architecture"));
  if (c.architecture != "transfo_xl" && c.architecture != "reformer") {
    return FieldError("architecture", absl::StrCat("names unknown architecture \"", c.architecture,
                                                   "\" (supported: transfo_xl, reformer)"));
  }
  c.reformer = c.architecture == "reformer";
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
  if (auto parsed = ParseEnum<Activation>(activation)) {
    c.activation = *parsed;
  } else {
    return FieldError("activation",
                      absl::StrCat("must be \"relu\" or \"gelu\", got \"", activation, "\""));
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
    if (c.d_embed != c.d_model && c.tie_word_embeddings) {
      return FieldError("d_embed", "must equal d_model when tie_word_embeddings is true");
    }
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
    if (c.layers[l].has_globals()) {
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
