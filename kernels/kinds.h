// The enums the CPU kernels, the CUDA kernels and the engine share: one definition per concept,
// here at the lowest layer that needs it (engine/model/model_config.h aliases those of the
// configuration under its own names). Plain C++, includable from .cu files; values are stable
// (launch parameters and step fingerprints carry them).
#pragma once

#include <cstdint>

namespace mnemo::kernels {

// A feed-forward activation (applied after the bias).
enum class Activation : uint8_t {
  kRelu,      // max(x, 0)
  kGelu,      // x·Φ(x), erf form
  kSilu,      // x·sigmoid(x): the gate of a gated MLP (architecture "mistral")
  kGeluTanh,  // GELU's tanh approximation (gelu_pytorch_tanh: architecture "gemma2")
};

// How a weight table is stored: float32, or 16-bit (bfloat16 / float16) widened to float32 as
// it is read (half the bytes, the same arithmetic as float32 weights of those values).
enum class WeightType : uint8_t { kF32, kBF16, kF16 };

// Feature map φ of a linear (kernelised) attention layer (MODEL-SPEC §5.2–5.4); m' is the
// number of features per head the recurrent state keeps (state_features).
enum class FeatureMap : uint8_t {
  kElu,    // φ(x) = elu(x) + 1                                               m' = head_dim
  kFavor,  // Performer FAVOR+: x̂ = x·head_dim^(−1/4), u = Ωx̂: queries
           // m^(−1/2)(exp(u − ‖x̂‖²/2 − max u) + 1e-4), keys m^(−1/2)(exp(u − ‖x̂‖²/2) + 1e-4)
           //                                                                  m' = num_features
  kRfa,  // random Fourier features: x̂ = x/‖x‖, u = Wx̂: m^(−1/2)[sin u, cos u], optionally
         // gated                                                            m' = 2·num_features
};

// The pattern of a sparse attention layer (docs/checkpoint-format.md "Sparse patterns",
// MODEL-SPEC §3).
enum class SparsePatternKind : uint8_t {
  kWindow,   // (dilated) sliding window
  kStrided,  // Sparse Transformer: local(l) and/or strided(l)
  kFixed,    // Sparse Transformer: block(l) and/or summary(l, c)
  kBigBird,  // causal block window + seeded random blocks
};

}  // namespace mnemo::kernels
