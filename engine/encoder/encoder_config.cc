#include "engine/encoder/encoder_config.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "base/read_file.h"
#include "base/status_macros.h"
#include "engine/model/enum_names.h"
#include "engine/model/layer_entry_reader.h"

namespace mnemo::engine {

bool IsEncoderArchitecture(std::string_view architecture) {
  return architecture == "longformer" || architecture == "nystromformer" ||
         architecture == "linformer" || architecture == "synthesizer" ||
         architecture == "bigbird" || architecture == "funnel";
}

absl::StatusOr<EncoderConfig> ParseEncoderConfig(std::string_view json_text) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  // The reader names the object in errors and refuses fields nobody read.
  LayerEntryReader r(j, "(encoder)");
  EncoderConfig c;
  ASSIGN_OR_RETURN(c.architecture, r.String("architecture", std::nullopt,
                                            {"longformer", "nystromformer", "linformer",
                                             "synthesizer", "bigbird", "funnel"}));
  ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size", 1, int64_t{1} << 24));
  ASSIGN_OR_RETURN(c.d_model, r.Int("d_model", 1, 65536));
  ASSIGN_OR_RETURN(c.n_layer, r.Int("n_layer", 1, 1024));
  ASSIGN_OR_RETURN(c.n_head, r.Int("n_head", 1, 1024));
  ASSIGN_OR_RETURN(c.d_head, r.Int("d_head", 1, 4096));
  if (!c.funnel() && c.n_head * c.d_head != c.d_model) {
    return r.Error("needs n_head × d_head = d_model");
  }
  ASSIGN_OR_RETURN(c.d_inner, r.Int("d_inner", 1, int64_t{1} << 20));
  ASSIGN_OR_RETURN(std::string act, r.String("activation", "gelu", EnumNames<Activation>()));
  c.activation = *ParseEnum<Activation>(act);
  if (r.Has("layer_norm_epsilon")) {
    const nlohmann::json& eps = j.at("layer_norm_epsilon");
    if (!eps.is_number() || !(eps.get<double>() > 0.0) || eps.get<double>() > 1.0) {
      return r.Error("\"layer_norm_epsilon\" must be a number in (0, 1]");
    }
    c.layer_norm_epsilon = eps.get<double>();
  }
  ASSIGN_OR_RETURN(c.pad_token_id, r.Int("pad_token_id", 0, c.vocab_size - 1));
  ASSIGN_OR_RETURN(c.position_rows, r.Int("position_rows", c.pad_token_id + 2, int64_t{1} << 24));
  ASSIGN_OR_RETURN(c.type_vocab_size, r.Int("type_vocab_size", 1, 1024, 1));
  if (c.nystromformer()) {
    // Positions count from 2 (Hugging Face's table has max_position_embeddings + 2 rows).
    ASSIGN_OR_RETURN(c.segment_len, r.Int("segment_len", 1, c.position_rows - 2));
    ASSIGN_OR_RETURN(c.num_landmarks, r.Int("num_landmarks", 1, c.segment_len));
    if (c.segment_len % c.num_landmarks != 0) {
      return r.Error("needs \"num_landmarks\" dividing \"segment_len\"");
    }
    ASSIGN_OR_RETURN(c.conv_kernel_size, r.Int("conv_kernel_size", 0, c.segment_len, 0));
    if (c.conv_kernel_size > 0 && c.conv_kernel_size % 2 == 0) {
      return r.Error("\"conv_kernel_size\" must be odd (or 0: no convolution)");
    }
  } else if (c.linformer() || c.synthesized()) {
    // Positions count from 0 (BERT's): the table holds every position of a pass.
    ASSIGN_OR_RETURN(c.segment_len, r.Int("segment_len", 1, c.position_rows));
    if (c.linformer()) {
      ASSIGN_OR_RETURN(c.linformer_k, r.Int("linformer_k", 1, c.segment_len));
    } else {
      ASSIGN_OR_RETURN(c.synthesizer, r.String("synthesizer", std::nullopt, {"dense", "random"}));
    }
  } else if (c.funnel()) {
    // Relative positions: no table (position_rows is the most a pass holds, as segment_len).
    if (c.d_model % 2 != 0) return r.Error("needs an even d_model (the sinusoid's sin | cos)");
    ASSIGN_OR_RETURN(c.block_sizes, r.IntList("block_sizes", 1, 1024, /*as_written=*/true));
    ASSIGN_OR_RETURN(c.block_repeats, r.IntList("block_repeats", 1, 1024, /*as_written=*/true));
    int64_t layers = 0;
    for (int64_t b : c.block_sizes) layers += b;
    if (c.block_sizes.empty() || c.block_sizes.size() > 16 || layers != c.n_layer ||
        c.block_repeats.size() != c.block_sizes.size()) {
      return r.Error(
          "needs 1 … 16 \"block_sizes\" summing to n_layer and one \"block_repeats\" "
          "entry per block");
    }
    ASSIGN_OR_RETURN(c.decoder_layers, r.Int("decoder_layers", 0, 1024));
    ASSIGN_OR_RETURN(c.separate_cls, r.Bool("separate_cls", true));
    ASSIGN_OR_RETURN(c.truncate_seq, r.Bool("truncate_seq", true));
    ASSIGN_OR_RETURN(c.pool_q_only, r.Bool("pool_q_only", true));
    ASSIGN_OR_RETURN(c.pooling, r.String("pooling", "mean", {"mean", "max"}));
    ASSIGN_OR_RETURN(c.segment_len, r.Int("segment_len", c.min_tokens(), c.position_rows));
  } else if (c.bigbird()) {
    // Positions count from 0 (BERT's) over the pass, padding included.
    ASSIGN_OR_RETURN(std::string type,
                     r.String("attention_type", std::nullopt, {"original_full", "block_sparse"}));
    c.block_sparse = type == "block_sparse";
    // At most 4096 blocks and 64 random ones per row: the random-block draw walks every block
    // row of the table (Hugging Face's paper plan), so its cost stays bounded by the checkpoint.
    ASSIGN_OR_RETURN(c.block_size,
                     r.Int("block_size", (c.position_rows + 4095) / 4096, c.position_rows));
    ASSIGN_OR_RETURN(c.num_random_blocks, r.Int("num_random_blocks", c.block_sparse ? 1 : 0, 64));
    ASSIGN_OR_RETURN(c.rescale_embeddings, r.Bool("rescale_embeddings", false));
  } else {
    ASSIGN_OR_RETURN(std::vector<int64_t> windows,
                     r.IntList("attention_window", 2, 2 * kMaxSpan, /*as_written=*/true));
    if (static_cast<int64_t>(windows.size()) != c.n_layer) {
      return r.Error(absl::StrCat("needs \"attention_window\": n_layer = ", c.n_layer,
                                  " even integers, one per layer"));
    }
    for (int64_t w : windows) {
      if (w % 2 != 0) return r.Error("\"attention_window\" entries must be even");
      c.one_sided_window.push_back(w / 2);
    }
  }
  ASSIGN_OR_RETURN(std::string dtype,
                   r.String("torch_dtype", std::nullopt, {"float32", "float16", "bfloat16"}));
  c.dtype = *ParseDTypeName(dtype);
  ASSIGN_OR_RETURN(c.mlm_head, r.Bool("mlm_head", false));
  if (c.mlm_head && c.fixed_length() && !c.funnel()) {
    return r.Error("\"mlm_head\": the masked-LM head is Longformer's, BigBird's and Funnel's only");
  }
  if (c.mlm_head && c.funnel() && c.decoder_layers == 0) {
    return r.Error("\"mlm_head\": Funnel's masked-LM head reads the decoder's per-token output");
  }
  if (c.mlm_head && !c.funnel()) {  // (Funnel's head has no transform, so no activation)
    ASSIGN_OR_RETURN(std::string mlm_act,
                     r.String("mlm_activation", "gelu", EnumNames<Activation>()));
    c.mlm_activation = *ParseEnum<Activation>(mlm_act);
  }
  RETURN_IF_ERROR(r.CheckAllRead());
  return c;
}

int64_t EncoderConfig::min_tokens() const {
  if (!funnel()) return 1;
  int64_t fewest = 1;  // going back from the last block: each pooling needs more than `floor`
  const int64_t floor = separate_cls ? 2 : 1;
  for (size_t b = block_sizes.size(); b-- > 1;) {
    int64_t t = std::max(fewest, floor + 1);
    while (PooledLength(t) < fewest) ++t;
    fewest = t;
  }
  return fewest;
}

absl::StatusOr<bool> IsEncoderCheckpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(dir + "/config.json"));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("architecture") && j.at("architecture").is_string() &&
         IsEncoderArchitecture(j.at("architecture").get<std::string>());
}

absl::StatusOr<EncoderConfig> LoadEncoderConfig(const std::string& dir) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(dir + "/config.json"));
  auto config = ParseEncoderConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

}  // namespace mnemo::engine
