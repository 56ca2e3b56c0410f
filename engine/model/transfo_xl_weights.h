// The weights of a Transformer-XL checkpoint, loaded from safetensors into host tensors
// (docs/checkpoint-format.md names and shapes), with every tensor checked by name, shape and dtype.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/backend/backend.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/model/model_config.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// Each attention kind's own tensors (read by the kind: engine/attention/*::ReadWeights); a layer
// holds its kind's, the others stay undefined.
struct DenseWeights {
  Tensor r;                        // [H·d_h, D]: projects the relative position sinusoids
  Tensor r_w_bias, r_r_bias;       // [H, d_h] (shared tensors when !untie_r)
  Tensor compress, compress_bias;  // [D, D, taps], [D] (conv1d / dilated_conv compression)
};
struct LinearWeights {
  Tensor features;                // [num_features, d_h] (favor / rfa)
  Tensor gate_weight, gate_bias;  // [H, D], [H] (gated rfa)
};
struct LshWeights {
  Tensor rotations;  // [H, d_h, n_hashes, n_buckets/2]
};
struct MemoryCompressedWeights {
  // The strided convolutions over keys and over values, as PyTorch's Conv1d stores them:
  // [H·d_h (out), H·d_h (in), c], [H·d_h].
  Tensor compress_k, compress_k_bias;
  Tensor compress_v, compress_v_bias;
};

struct RoutingWeights {
  Tensor centroids;  // [H, n_clusters, d_h]
};

struct TransfoXlLayerWeights {
  Tensor qkv;                          // [3·H·d_h, D] ([2·H·d_h, D]: shared qk | v for lsh)
  Tensor o;                            // [D, H·d_h]
  Tensor attn_ln_gamma, attn_ln_beta;  // [D]
  DenseWeights dense;
  LinearWeights linear;
  LshWeights lsh;
  MemoryCompressedWeights memory_compressed;
  RoutingWeights routing;
  Tensor fc1, fc1_bias;            // [d_inner, D], [d_inner]
  Tensor fc2, fc2_bias;            // [D, d_inner], [D]
  Tensor ff_ln_gamma, ff_ln_beta;  // [D]
  // gemma2: the RMSNorms of the attention's and of the MLP's output, before the residual add.
  Tensor attn_post_norm, ff_post_norm;  // [D]
};

// An adaptive embedding and projected adaptive log-softmax (ModelConfig::adaptive), per band i
// of ModelConfig::bands(). With div_val 1 every list but head_proj holds one tensor over the
// whole vocabulary, whose row ranges are the bands.
struct AdaptiveWeights {
  std::vector<Tensor> emb;        // [V_i, E_i]
  std::vector<Tensor> emb_proj;   // [D, E_i]; none when div_val is 1 and E = D
  std::vector<Tensor> head;       // [V_i, E_i]; emb's tensors when tie_word_embeddings
  std::vector<Tensor> head_bias;  // [V_i]
  std::vector<Tensor> head_proj;  // per band [E_i, D] (hidden → band width); none as emb_proj
  Tensor cluster_weight, cluster_bias;  // [K, E], [K]: the head's K = bands − 1 cluster logits
};

struct TransfoXlWeights {
  Tensor word_emb;                 // [V, E] (E = d_embed, usually D)
  Tensor emb_proj, emb_proj_bias;  // [D, E], [D] when d_embed ≠ d_model (factorised)
  // Per layer (n_layer entries); layers of one ALBERT group share their tensors' buffers.
  std::vector<TransfoXlLayerWeights> layers;
  // reformer: axial position embeddings [n0, 1, e0], [1, n1, e1] and the LayerNorm over [A | X].
  Tensor pos_emb0, pos_emb1;
  // [2·D] (mistral, gemma2: the final RMSNorm's gamma, [D], no beta)
  Tensor final_ln_gamma, final_ln_beta;
  Tensor rotary_inv_freq;  // mistral, gemma2: [d_h / 2] float32, the rotary frequencies
  Tensor lm_head;          // [V, D] ([V, 2·D] for a reformer); shares word_emb's buffer when tied
  Tensor lm_head_bias;     // [V] (none for mistral, gemma2)
  AdaptiveWeights adaptive;  // instead of word_emb, emb_proj and lm_head (ModelConfig::adaptive)
};

// Loads and checks every tensor. Errors (INVALID_ARGUMENT) name the tensor: missing, unexpected,
// wrong shape, a dtype other than config.dtype, or a non-finite value. Every tensor is copied
// (and widened to f32).
absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      const SafetensorsFile& file);
// As above, but the weight matrices and embeddings that are aligned in the file are used in
// place from the read-only mapping in their stored type (the weights keep `file` alive): no copy
// and no widening, so loading is fast, resident memory is the weights once (half as much for a
// 16-bit checkpoint as widened), and processes serving the same file share its page cache. The
// other tensors (biases, LayerNorms, the kinds' constants) are widened to float32. The weights are
// immutable; writing through such a tensor faults.
absl::StatusOr<TransfoXlWeights> LoadTransfoXlWeights(const ModelConfig& config,
                                                      std::shared_ptr<const SafetensorsFile> file);

// The tensors WeightsAs converts: the weight matrices and embeddings, or everything else.
enum class WeightSet : uint8_t { kMatrices, kVectors };
// A copy of host `weights` whose `set` tensors are stored as `dtype` (float32, bfloat16 or
// float16): widening is exact, narrowing rounds to nearest even (exact for a 16-bit checkpoint's
// values); tensors already of that type, and the other set, are shared, not copied. Tensors that
// share a buffer still share one after.
TransfoXlWeights WeightsAs(const TransfoXlWeights& weights, WeightSet set, DType dtype);

// A copy of host weights on `backend`'s device, every tensor in its host type (WeightsAs chooses
// the matrices' type first). Tensors that share a buffer (a tied output embedding, r biases
// shared across layers) still share one device buffer.
absl::StatusOr<TransfoXlWeights> CopyWeightsTo(const TransfoXlWeights& weights, Backend& backend);

}  // namespace mnemo::engine
