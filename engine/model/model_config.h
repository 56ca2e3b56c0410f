// ModelConfig: the validated contents of a checkpoint's config.json (docs/checkpoint-format.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "base/dtype.h"
#include "kernels/kinds.h"
#include "kernels/lsh_bucket_factors.h"

namespace mnemo::engine {

using Activation = kernels::Activation;

// First-segment convention of XL memory (MODEL-SPEC §1.3).
enum class MemoryInit : uint8_t {
  kZeros,  // mem_len zero rows, as Hugging Face and the TF code (what wt103 weights expect)
  kEmpty,  // no rows, as the original PyTorch code
};

// What a layer's attention is (MODEL-SPEC §1, §5). More kinds follow.
enum class AttentionKind : uint8_t {
  kDense,   // Transformer-XL relative attention over [memory | segment]
  kLinear,  // kernelised causal attention carried as a recurrent state (S, z) per head
  kSparse,  // softmax attention under a sparse pattern, kept as a rolling K/V buffer (+ globals)
  kLsh,     // Reformer LSH attention over a window of stored positions
  // Liu et al.'s memory-compressed attention: keys and values of past blocks compressed by a
  // strided convolution, the query's own block attended uncompressed
  kMemoryCompressed,
  // Routing attention (Roy et al.'s Routing Transformer, causal): queries and keys routed to their
  // nearest centroid, a query attending to the keys of its cluster within a window
  kRouting,
};

// The pattern of a sparse layer (docs/checkpoint-format.md "Sparse patterns", MODEL-SPEC §3).
using SparsePattern = kernels::SparsePatternKind;

// What a dense layer remembers beyond its segment (MODEL-SPEC §1.2, §2).
enum class MemoryKind : uint8_t { kXl, kCompressive };

// How a compressive layer turns `compression_rate` evicted rows into one (MODEL-SPEC §2.2).
enum class Compression : uint8_t { kMaxPool, kMeanPool, kConv1d, kDilatedConv, kMostUsed };

// Feature map of a linear layer (MODEL-SPEC §5.2–5.4).
using FeatureMap = kernels::FeatureMap;

// Each attention kind's slice of a "layers" entry: the fields only that kind reads, parsed and
// validated by the kind itself (engine/attention/*::ParseConfig) and handed to the backends'
// ops of that kind. A LayerConfig holds the slice of its `attention` kind; the others keep
// their defaults.

// dense (engine/attention/dense_attention): what the layer remembers beyond its segment
// (MODEL-SPEC §1.2, §2).
struct DenseConfig {
  MemoryKind memory = MemoryKind::kXl;
  Compression compression = Compression::kMeanPool;
  int64_t compression_rate = 0;
  int64_t cmem_len = 0;
  int64_t compression_kernel = 0;  // dilated_conv: K taps (the conv weight's last dimension)

  bool compressive() const { return memory == MemoryKind::kCompressive; }
  // compressive: taps of the learned compression (conv1d: c, dilated_conv: K), else 0.
  int64_t compress_taps() const;
};

// linear (engine/attention/linear_attention, MODEL-SPEC §5).
struct LinearConfig {
  FeatureMap feature_map = FeatureMap::kElu;
  int64_t num_features = 0;  // favor, rfa: rows of the stored feature matrix
  double eps = 1e-6;         // the denominator is clamped to at least eps
  bool gated = false;        // rfa: decay the state by a learned per-head gate
};

// sparse (engine/attention/sparse_attention, MODEL-SPEC §3).
struct SparseConfig {
  SparsePattern pattern = SparsePattern::kWindow;
  int64_t window = 0;              // window: keys a query sees, itself included
  std::vector<int64_t> dilations;  // window: per head (n_head entries)
  int64_t stride = 0;              // strided: l
  int64_t block = 0;               // fixed: l; bigbird: b
  int64_t summary = 0;             // fixed: c
  int64_t span = 0;                // strided, fixed, bigbird: S
  int64_t window_blocks = 3;       // bigbird: w
  int64_t random_blocks = 2;       // bigbird: r
  uint64_t seed = 0;               // bigbird
  // strided / fixed: per head, bit 0 = the first component (local, block), bit 1 = the second
  // (strided, summary).
  std::vector<uint8_t> head_components;
  std::vector<int64_t> global_positions;  // ascending
  std::vector<int32_t> global_tokens;     // ascending
  int64_t max_global = 0;                 // global positions kept beyond the span

  // Positions before the current segment the layer keeps in its ring: (window − 1)·max
  // dilation for a window, `span` for the other patterns.
  int64_t sparse_span() const;
  bool has_globals() const { return max_global > 0; }
};

// lsh (engine/attention/lsh_attention, docs/checkpoint-format.md "lsh").
struct LshConfig {
  int64_t n_hashes = 0;
  int64_t n_buckets = 0;
  // n_buckets as factors when config.json lists them (Hugging Face's factorised hashing);
  // count 0 for an integer n_buckets.
  kernels::LshBucketFactors bucket_factors;
  int64_t chunk_len = 0;
  int64_t history = 0;
  bool lsh_call_sort = false;  // "sort": "call": Hugging Face's whole-call algorithm
};

// memory_compressed (engine/attention/memory_compressed_attention, docs/checkpoint-format.md
// "memory_compressed"): blocks of `compression_rate` positions, each compressed into one key and
// one value row by a strided convolution; a query sees the last `cmem_len` compressed blocks
// before its own block and its own block's positions up to itself.
struct MemoryCompressedConfig {
  int64_t compression_rate = 0;  // c: positions per block (the convolution's kernel and stride)
  int64_t cmem_len = 0;          // S: compressed blocks a query sees
};

// routing (engine/attention/routing_attention, docs/checkpoint-format.md "routing"): each head's
// queries and keys go to the nearest of `n_clusters` centroids (stored in the checkpoint); a
// query sees the keys of its own cluster among the last `history` positions, itself always.
struct RoutingConfig {
  int64_t n_clusters = 0;
  int64_t history = 0;  // positions a query's window spans, itself included
};

// One entry of config.json's "layers".
struct LayerConfig {
  AttentionKind attention = AttentionKind::kDense;
  DenseConfig dense;
  LinearConfig linear;
  SparseConfig sparse;
  LshConfig lsh;
  MemoryCompressedConfig memory_compressed;
  RoutingConfig routing;
  // RealFormer: add the previous layer's pre-softmax scores to this layer's (dense, sparse).
  bool residual_attention = false;
  // The entry as written (canonical JSON), to check that shared layers agree.
  std::string source;
};

// One band of an adaptive vocabulary (docs/checkpoint-format.md "Adaptive embedding and
// softmax"): ids [begin, end) embedded at `width` columns and projected to d_model.
struct VocabularyBand {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t width = 0;
};

struct ModelConfig {
  std::string architecture;  // "transfo_xl", "reformer", "mistral" or "gemma2"
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  // Key/value heads (grouped-query attention; "n_kv_head", default n_head): query head h reads
  // key/value head h / (n_head / n_kv_head).
  int64_t n_kv_head = 0;
  int64_t d_head = 0;
  int64_t d_inner = 0;
  int64_t mem_len = 0;
  int64_t clamp_len = 0;  // 0 = no clamp
  bool same_length = false;
  bool pre_lnorm = false;
  bool untie_r = true;
  Activation activation = Activation::kRelu;
  double layer_norm_epsilon = 1e-5;
  MemoryInit memory_init = MemoryInit::kZeros;
  bool tie_word_embeddings = false;
  DType dtype = DType::kF32;  // storage dtype of the weights
  std::optional<int64_t> eos_token_id;
  // "tokenizer": "bytes": the model's ids are UTF-8 bytes + 2 (engine/tokenizer/byte_tokenizer.h),
  // with no tokenizer file.
  bool byte_tokenizer = false;
  // Per layer; empty or shorter than n_layer means dense for the missing layers (a config built
  // in code without them; ParseModelConfig always fills n_layer entries).
  std::vector<LayerConfig> layers;
  // ALBERT sharing: layer l runs the parameters of group ⌊l·G / n_layer⌋ (G = n_layer: none).
  int64_t layer_groups = 0;
  // Factorised embeddings: word_emb is [vocab, d_embed], projected to d_model (= d_model: none).
  int64_t d_embed = 0;
  // Architecture "reformer": reversible two-stream blocks, axial position embeddings
  // [n0, n1] × [e0, e1], a head over [A | X].
  bool reformer = false;
  std::vector<int64_t> axial_pos_shape;
  std::vector<int64_t> axial_pos_embds_dim;
  // Architectures "mistral" and "gemma2" (docs/checkpoint-format.md "Sliding-window decoders"):
  // pre-RMSNorm blocks, rotary positions on every layer's queries and keys, a gated MLP
  // (activation(gate) · up), sliding-window layers with grouped-query attention, a final RMSNorm,
  // no biases.
  bool rotary_decoder = false;
  // Architecture "gemma2" besides: the embedding scaled by sqrt(d_model), a second RMSNorm after
  // the attention and after the MLP, attention scores scaled by 1/sqrt(query_pre_attn_scalar)
  // and soft-capped, the logits soft-capped (cap · tanh(x / cap); 0: none).
  bool gemma2 = false;
  double attn_scale = 0.0;  // 0: 1/sqrt(d_head)
  double attn_softcap = 0.0;
  double final_softcap = 0.0;
  // "max_positions": positions a session may hold (a model whose full-attention layers run as
  // windows of its maximum context); 0 for no limit.
  int64_t position_limit = 0;
  // Adaptive embedding and projected adaptive log-softmax (Transformer-XL as published): set by
  // a "cutoffs" field. Band i holds ids [cutoffs[i-1], cutoffs[i]) (0 and vocab_size at the
  // ends) at width d_embed / div_val^i; the head gives log-probabilities, not logits.
  bool adaptive = false;
  std::vector<int64_t> cutoffs;  // ascending, in (0, vocab_size)
  int64_t div_val = 1;

  int64_t attn_width() const { return n_head * d_head; }  // H·d_h
  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t kv_width() const { return kv_heads() * d_head; }  // H_kv·d_h
  // Columns of a layer's projected q | k | v rows.
  int64_t qkv_width() const { return attn_width() + 2 * kv_width(); }
  int64_t groups() const { return layer_groups > 0 ? layer_groups : n_layer; }
  // The parameter set (layers.g.*) layer l runs.
  int64_t param_layer(int64_t l) const { return l * groups() / n_layer; }
  int64_t embed_width() const { return d_embed > 0 ? d_embed : d_model; }
  // The adaptive vocabulary's bands (cutoffs.size() + 1 of them; empty when !adaptive).
  std::vector<VocabularyBand> bands() const;
  // Tokens per forward call when feeding a document: the memory length for models with dense
  // layers (segment-level recurrence is what they were trained with), 512 otherwise (every other
  // kind gives the same outputs however a document is split, so only speed matters).
  int64_t default_segment_tokens() const {
    return has_dense_layer() ? std::max<int64_t>(1, mem_len) : 512;
  }
  // Width the output head reads: [A | X] for a reformer.
  int64_t head_width() const { return reformer ? 2 * d_model : d_model; }
  // Positions a session may hold (axial position embeddings), or 0 for no limit.
  int64_t max_positions() const {
    return reformer ? axial_pos_shape[0] * axial_pos_shape[1] : position_limit;
  }
  // Where max_positions comes from, for the errors that name it.
  const char* max_positions_source() const {
    return reformer ? "axial_pos_shape" : "max_positions: its maximum context";
  }
  // RealFormer: layer l adds layer l − 1's scores / passes its own to layer l + 1.
  bool adds_scores(int64_t l) const { return layer(l).residual_attention; }
  bool passes_scores(int64_t l) const { return l + 1 < n_layer && adds_scores(l + 1); }
  const LayerConfig& layer(int64_t l) const;
  bool is_dense(int64_t l) const { return layer(l).attention == AttentionKind::kDense; }
  bool has_dense_layer() const;
  // Features per head of linear layer `layer` (the rows of its state S).
  int64_t linear_features(int64_t layer) const;
};

// Parses and validates config.json text. Errors are INVALID_ARGUMENT and name the field.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace mnemo::engine
