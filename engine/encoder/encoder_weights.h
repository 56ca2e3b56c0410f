// EncoderWeights: an encoder checkpoint's tensors (docs/checkpoint-format.md "Encoders": names
// and shapes), float32 on the host, as EncoderModel::Load reads them.
#pragma once

#include <vector>

#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// One block's weights (docs/checkpoint-format.md "Encoders": names and shapes).
struct EncoderLayerWeights {
  Tensor qkv, qkv_bias;  // [3·D, D], [3·D]: query | key | value (Synthesizer: value only, [D, D])
  Tensor global_qkv, global_qkv_bias;  // Longformer: the global positions' own projections
  Tensor conv;                         // Nyströmformer: [H, taps] of the values' convolution
  Tensor proj_k, proj_v;               // Linformer: E, F [linformer_k, segment_len]
  Tensor synth1, synth1_bias;          // dense Synthesizer: [D, D], [D]
  Tensor synth2, synth2_bias;          // dense Synthesizer: [H, segment_len, d_head], [H, seg]
  Tensor random;                       // random Synthesizer: [H, segment_len, segment_len]
  // Funnel: the sinusoid's projection [H·d_h, D] and the three score biases [H·d_h]; the
  // token-type embeddings [2, H·d_h] (different, same type).
  Tensor r, r_w_bias, r_r_bias, r_s_bias, seg_embed;
  Tensor o, o_bias;                    // [D, D], [D]
  Tensor attn_ln_gamma, attn_ln_beta;  // [D]
  Tensor fc1, fc1_bias;                // [d_inner, D], [d_inner]
  Tensor fc2, fc2_bias;                // [D, d_inner], [D]
  Tensor ff_ln_gamma, ff_ln_beta;      // [D]
};

// The masked-LM head (config mlm_head): logits = W_emb · LN(act(W·h + b)) + decoder_bias
// (Funnel's: W_emb · h + decoder_bias).
struct MaskedLmWeights {
  Tensor dense, dense_bias;  // [D, D], [D] (not Funnel's)
  Tensor ln_gamma, ln_beta;  // [D] (not Funnel's)
  Tensor decoder_bias;       // [V]; the output matrix is the word embeddings
};

struct EncoderWeights {
  Tensor word_emb;                   // [V, D]
  Tensor position_emb;               // [position_rows, D] (not Funnel's)
  Tensor token_type_emb;             // [type_vocab_size, D] (not Funnel's)
  Tensor emb_ln_gamma, emb_ln_beta;  // [D]
  std::vector<EncoderLayerWeights> layers;
  std::vector<EncoderLayerWeights> decoder;  // Funnel's decoder layers
  MaskedLmWeights mlm;                       // empty without config mlm_head
};

}  // namespace mnemo::engine
