// EncoderConfig: the validated config.json of an encoder checkpoint (docs/checkpoint-format.md
// "Encoders"): a bidirectional stack that reads a whole document (or a window of it) at once and
// returns one vector per token, in BERT-style post-LayerNorm blocks with learned absolute
// positions. Architecture "longformer": Longformer's sliding window with global positions;
// "nystromformer": Nyströmformer's landmark attention over passes padded to segment_len;
// "linformer": keys and values projected along the sequence; "synthesizer": synthesized (dense)
// or learned (random) attention weights; "bigbird": BigBird's full or block-sparse attention
// (global first and last blocks, a sliding window of blocks, random blocks drawn as Hugging Face
// draws them); "funnel": Funnel-Transformer's blocks that pool the sequence between them, its
// relative attention, and the up-sampling decoder. Linformer and Synthesizer have weights that
// span the sequence (segment_len positions at most), which is why they are encoder kinds and not
// decoder layers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"
#include "kernels/kinds.h"

namespace mnemo::engine {

struct EncoderConfig {
  // "longformer", "nystromformer", "linformer", "synthesizer", "bigbird" or "funnel"
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t d_head = 0;  // n_head · d_head = d_model (Funnel: any)
  int64_t d_inner = 0;
  kernels::Activation activation = kernels::Activation::kGelu;
  double layer_norm_epsilon = 1e-5;
  int64_t position_rows = 0;  // rows of the position table (Hugging Face max_position_embeddings)
  int64_t pad_token_id = 0;   // positions count from pad_token_id + 1 (RoBERTa's rule)
  int64_t type_vocab_size = 1;
  // Longformer, per layer: keys a local query sees on each side (Hugging Face attention_window /
  // 2).
  std::vector<int64_t> one_sided_window;
  // Nyströmformer: every pass holds segment_len positions (padded with pad_token_id, masked where
  // Hugging Face masks), num_landmarks of them (dividing segment_len; equal: exact attention), and
  // the taps of the values' depthwise convolution (odd; 0: none).
  int64_t segment_len = 0;
  int64_t num_landmarks = 0;
  int64_t conv_kernel_size = 0;
  // Linformer: the rows keys and values are projected to (E, F: [linformer_k, segment_len]).
  int64_t linformer_k = 0;
  // Synthesizer: "dense" or "random".
  std::string synthesizer;
  // BigBird: block-sparse (Hugging Face attention_type "block_sparse") or full attention, blocks
  // of block_size, num_random_blocks random blocks per query block; the word embeddings scaled by
  // sqrt(d_model) (rescale_embeddings).
  bool block_sparse = false;
  int64_t block_size = 0;
  int64_t num_random_blocks = 0;
  bool rescale_embeddings = false;
  // Funnel: encoder blocks of block_sizes[b] layers (n_layer in all), each layer run
  // block_repeats[b] times; every block after the first starts by pooling the sequence by 2
  // ("mean" or "max"; separate_cls keeps the first token apart, truncate_seq drops the last; with
  // pool_q_only the pooling layer's keys and values stay unpooled); then decoder_layers layers over
  // the sequence up-sampled back to every token (0: the base model, which returns only the pooled
  // sequence). Passes hold at most segment_len tokens.
  std::vector<int64_t> block_sizes, block_repeats;
  int64_t decoder_layers = 0;
  bool separate_cls = true;
  bool truncate_seq = true;
  bool pool_q_only = true;
  std::string pooling;
  DType dtype = DType::kF32;
  // Whether the checkpoint carries the masked-LM head (Longformer's and BigBird's: dense, the
  // activation mlm_activation, LayerNorm, the word embeddings as the output matrix with a bias;
  // Funnel's: the output matrix and bias alone, over the decoder's output).
  bool mlm_head = false;
  kernels::Activation mlm_activation = kernels::Activation::kGelu;

  bool longformer() const { return architecture == "longformer"; }
  bool nystromformer() const { return architecture == "nystromformer"; }
  bool linformer() const { return architecture == "linformer"; }
  bool synthesized() const { return architecture == "synthesizer"; }
  bool bigbird() const { return architecture == "bigbird"; }
  bool funnel() const { return architecture == "funnel"; }
  // Whether passes hold at most segment_len positions (Nyströmformer, Linformer, Synthesizer,
  // Funnel).
  bool fixed_length() const { return nystromformer() || linformer() || synthesized() || funnel(); }
  // Funnel: the rows a pooling step leaves of t.
  int64_t PooledLength(int64_t t) const {
    return (t + (separate_cls && !truncate_seq ? 1 : 0) + 1) / 2;
  }
  // The fewest tokens a pass holds: Funnel pools at every block only while the sequence is
  // longer than the separate first token and one more (Hugging Face skips the pooling otherwise,
  // which its relative positions do not support); 1 elsewhere.
  int64_t min_tokens() const;
  int64_t attn_width() const { return n_head * d_head; }
  // Tokens one pass may hold: Longformer, the position table's rows past the padding offset;
  // BigBird, the table's rows (whole blocks of them when block-sparse, as a pass is padded to
  // whole blocks); the others, segment_len.
  int64_t max_tokens() const {
    if (fixed_length()) return segment_len;
    if (bigbird()) return block_sparse ? position_rows / block_size * block_size : position_rows;
    return position_rows - pad_token_id - 1;
  }
  // Whether a BigBird window of `tokens` tokens runs block-sparse: Hugging Face runs windows of
  // at most (5 + 2r) blocks' worth of tokens with full attention.
  bool sparse_pass(int64_t tokens) const {
    return bigbird() && block_sparse && tokens > (5 + 2 * num_random_blocks) * block_size;
  }
  // Rows a window of `tokens` tokens takes in a pass: Nyströmformer pads it to segment_len,
  // block-sparse BigBird to whole blocks.
  int64_t pass_rows(int64_t tokens) const {
    if (nystromformer()) return segment_len;
    if (sparse_pass(tokens)) return (tokens + block_size - 1) / block_size * block_size;
    return tokens;
  }
};

// Whether an "architecture" value names an encoder ("longformer", "nystromformer", "linformer",
// "synthesizer", "bigbird", "funnel").
bool IsEncoderArchitecture(std::string_view architecture);

// Whether `<dir>/config.json` names an encoder architecture (false for a decoder's, or for a
// config that is not JSON: the decoder loader then says what is wrong with it). NOT_FOUND when
// the file cannot be read.
absl::StatusOr<bool> IsEncoderCheckpoint(const std::string& dir);

// Parses and validates config.json text. Errors are INVALID_ARGUMENT and name the field.
absl::StatusOr<EncoderConfig> ParseEncoderConfig(std::string_view json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<EncoderConfig> LoadEncoderConfig(const std::string& dir);

}  // namespace mnemo::engine
