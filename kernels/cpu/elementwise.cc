// The CPU's vectorised row-wise and element-wise loops (elementwise.h), each cloned for AVX-512,
// AVX2+FMA and baseline x86-64; the oracle of kernels/cuda/elementwise.cu.
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

// Not under sanitizers: ifunc resolvers run before the sanitizer runtime is initialised.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && \
    !defined(__clang__)
#define MNEMO_MULTIVERSION __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define MNEMO_MULTIVERSION
#endif

namespace mnemo::kernels {
namespace {

// exp(x) = 2^n · e^r with n = round(x/ln2), |r| ≤ ln2/2; e^r by a degree-6 minimax-quality
// Taylor polynomial (error below 2^-24 on that interval). Written branch-free so it vectorises.
inline float ExpScalar(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Clamped with the constant first, so a NaN x clamps to a number: converting a NaN n to an
  // integer below is undefined. The NaN itself comes back (a state or weights that overflowed).
  const float clamped = std::min(88.0f, std::max(-87.0f, x));
  const float n = std::nearbyint(clamped * kLog2e);
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : (x == x ? p * scale : x);
}

}  // namespace

MNEMO_MULTIVERSION void AddVectors(const float* a, const float* b, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

MNEMO_MULTIVERSION void ExpInPlace(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = ExpScalar(x[i]);
}

MNEMO_MULTIVERSION void LayerNormRow(const float* x, const float* gamma, const float* beta,
                                     float eps, float* y, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(n);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const float inv_std = 1.0f / std::sqrt(sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * inv_std * gamma[i] + beta[i];
}

MNEMO_MULTIVERSION void BiasRelu(float* y, const float* bias, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(y[i] + bias[i], 0.0f);
}

namespace {

// σ(z) = 1 / (1 + e^−z) through the vectorised exp: silu(v) = v·σ(v) and
// gelu_tanh(v) = ½·v·(1 + tanh(u)) = v·σ(2u), u = √(2/π)·(v + 0.044715·v³). (libm's scalar tanhf
// took a quarter of an encoder pass.) Both forms stay accurate in the tails: σ underflows to 0
// or saturates at 1 without cancellation.
inline float SiluScalar(float v) { return v / (1.0f + ExpScalar(-v)); }
inline float GeluTanhScalar(float v) {
  return v / (1.0f + ExpScalar(-1.5957691216057308f * (v + 0.044715f * v * v * v)));
}

// One activation of one value: the definition every row function below applies.
float Activate(float v, Activation act) {
  switch (act) {
    case Activation::kRelu:
      return std::max(v, 0.0f);
    case Activation::kGelu:
      return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::kSilu:
      return SiluScalar(v);
    case Activation::kGeluTanh:
      return GeluTanhScalar(v);
  }
  return v;
}

MNEMO_MULTIVERSION void BiasSiluRow(float* y, const float* bias, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = SiluScalar(y[i] + bias[i]);
}

MNEMO_MULTIVERSION void BiasGeluTanhRow(float* y, const float* bias, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = GeluTanhScalar(y[i] + bias[i]);
}

MNEMO_MULTIVERSION void GatedSiluRow(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = SiluScalar(gate[i]) * up[i];
}

MNEMO_MULTIVERSION void GatedGeluTanhRow(const float* gate, const float* up, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = GeluTanhScalar(gate[i]) * up[i];
}

}  // namespace

void BiasGelu(float* y, const float* bias, int64_t n) {
  BiasActivate(y, bias, Activation::kGelu, n);
}

void BiasActivate(float* y, const float* bias, Activation act, int64_t n) {
  if (act == Activation::kSilu) return BiasSiluRow(y, bias, n);
  if (act == Activation::kGeluTanh) return BiasGeluTanhRow(y, bias, n);
  for (int64_t i = 0; i < n; ++i) y[i] = Activate(y[i] + bias[i], act);
}

MNEMO_MULTIVERSION void RmsNormRow(const float* x, const float* gamma, float eps, float* y,
                                   int64_t n) {
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) sq += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * gamma[i];
}

void GatedActivationRow(const float* gate, const float* up, Activation act, float* y, int64_t n) {
  if (act == Activation::kSilu) return GatedSiluRow(gate, up, y, n);
  if (act == Activation::kGeluTanh) return GatedGeluTanhRow(gate, up, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = Activate(gate[i], act) * up[i];
}

MNEMO_MULTIVERSION void AddBias(float* y, const float* bias, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += bias[i];
}

MNEMO_MULTIVERSION float RowMax(const float* x, int64_t n) {
  // 16 running maxima: a single one (even as an omp simd reduction) compiled to a scalar loop
  // bound by the compare's latency, three quarters of a prefill's softmax time.
  constexpr int kLanes = 16;
  float lanes[kLanes];
  std::fill_n(lanes, kLanes, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] = std::max(lanes[k], x[i + k]);
  }
  float max = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < kLanes; ++k) max = std::max(max, lanes[k]);
  for (; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

MNEMO_MULTIVERSION void SoftmaxRow(float* x, int64_t n) {
  const float max = RowMax(x, n);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    x[i] = ExpScalar(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace mnemo::kernels
