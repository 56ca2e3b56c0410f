// config.json parsing and validation (engine/model/model_config, engine/encoder/encoder_config)
// on arbitrary text: every input gets a status from both parsers; an accepted config satisfies
// the invariants the loader and the backends rely on (the accessors below run on it as the model
// does).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "engine/encoder/encoder_config.h"
#include "engine/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto encoder = mnemo::engine::ParseEncoderConfig(text);
  if (encoder.ok()) {
    const mnemo::engine::EncoderConfig& e = *encoder;
    if ((!e.funnel() && e.n_head * e.d_head != e.d_model) || e.max_tokens() < 1 ||
        e.pad_token_id >= e.vocab_size) {
      std::abort();
    }
    // Each architecture's own fields, as its attention kernel relies on them.
    auto funnel_ok = [&] {
      int64_t layers = 0;
      for (int64_t b : e.block_sizes) layers += b;
      return !e.block_sizes.empty() && e.block_repeats.size() == e.block_sizes.size() &&
             layers == e.n_layer && e.d_model % 2 == 0 && e.segment_len >= e.min_tokens() &&
             (e.pooling == "mean" || e.pooling == "max") && e.decoder_layers >= 0;
    };
    const bool ok = e.nystromformer()
                        ? e.segment_len <= e.position_rows - 2 && e.num_landmarks >= 1 &&
                              e.segment_len % e.num_landmarks == 0 &&
                              (e.conv_kernel_size == 0 || e.conv_kernel_size % 2 == 1)
                    : e.linformer() ? e.linformer_k >= 1 && e.linformer_k <= e.segment_len &&
                                          e.segment_len <= e.position_rows
                    : e.synthesized() ? (e.synthesizer == "dense" || e.synthesizer == "random") &&
                                            e.segment_len <= e.position_rows
                    : e.bigbird() ? e.block_size >= 1 && e.block_size <= e.position_rows &&
                                        (e.num_random_blocks >= 1 || !e.block_sparse) &&
                                        e.pass_rows(e.max_tokens()) <= e.position_rows
                    : e.funnel() ? funnel_ok()
                                 : static_cast<int64_t>(e.one_sided_window.size()) == e.n_layer;
    if (!ok || (e.mlm_head && e.fixed_length() && !(e.funnel() && e.decoder_layers > 0))) {
      std::abort();
    }
  } else if (encoder.status().code() != absl::StatusCode::kInvalidArgument) {
    std::abort();
  }
  auto parsed = mnemo::engine::ParseModelConfig(text);
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  const mnemo::engine::ModelConfig& c = *parsed;
  if (c.vocab_size < 1 || c.d_model < 2 || c.n_layer < 1 || c.n_head < 1 || c.d_head < 1) {
    std::abort();
  }
  if (static_cast<int64_t>(c.layers.size()) != c.n_layer) std::abort();
  if (c.eos_token_id && (*c.eos_token_id < 0 || *c.eos_token_id >= c.vocab_size)) std::abort();
  volatile int64_t sink = c.attn_width() + c.embed_width() + c.head_width() +
                          c.default_segment_tokens() + c.max_positions() + c.has_dense_layer();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int64_t p = c.param_layer(l);
    if (p < 0 || p >= c.groups()) std::abort();
    sink = sink + c.linear_features(l) + c.layer(l).sparse.sparse_span() +
           c.layer(l).dense.compress_taps() + c.adds_scores(l) + c.passes_scores(l) +
           c.layer(l).memory_compressed.compression_rate + c.layer(l).routing.history;
  }
  (void)sink;
  return 0;
}
