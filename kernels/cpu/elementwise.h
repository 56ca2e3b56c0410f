// Vectorised float32 loops of the CPU backend: norms, activations, softmax, element-wise ops (the
// CPU twin of kernels/cuda/elementwise.h).
// Each function is compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at load time
// (GCC target_clones), so shipped binaries need no -march=native.
#pragma once

#include <cstdint>

#include "kernels/kinds.h"

namespace mnemo::kernels {

// y[i] = a[i] + b[i] (y may alias a or b).
void AddVectors(const float* a, const float* b, float* y, int64_t n);
// y[i] = exp(x[i]) for x ≤ 88; inputs below -87 give 0. Max relative error ~2 ulp.
void ExpInPlace(float* x, int64_t n);
// The largest of x[0 … n) (−infinity for n = 0; NaNs are skipped), through 16 running maxima.
float RowMax(const float* x, int64_t n);

// LayerNorm of one row: y = (x − mean)/sqrt(var + eps)·gamma + beta, statistics in float32
// with a two-pass variance (numerically safe for rows with a large mean). y may alias x.
void LayerNormRow(const float* x, const float* gamma, const float* beta, float eps, float* y,
                  int64_t n);

// RMSNorm of one row (Mistral, T5): y = x / sqrt(mean(x²) + eps) · gamma, statistics in float32.
// y may alias x.
void RmsNormRow(const float* x, const float* gamma, float eps, float* y, int64_t n);

// Gated MLP: y[i] = act(gate[i]) · up[i] (relu, gelu, silu or gelu_tanh).
// GELU's tanh form: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), torch's approximate="tanh".
void GatedActivationRow(const float* gate, const float* up, Activation act, float* y, int64_t n);

// In-place y = relu(y + bias) and y = gelu(y + bias) (exact erf form, as torch's default).
void BiasRelu(float* y, const float* bias, int64_t n);
void BiasGelu(float* y, const float* bias, int64_t n);
// In-place y = act(y + bias) for any activation (the gated MLPs' silu and gelu_tanh included).
void BiasActivate(float* y, const float* bias, Activation act, int64_t n);
// y += bias.
void AddBias(float* y, const float* bias, int64_t n);

// Numerically stable in-place softmax of one row (subtracts the row max before exp).
void SoftmaxRow(float* x, int64_t n);

}  // namespace mnemo::kernels
