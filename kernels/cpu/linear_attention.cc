// Causal linear attention on the CPU (linear_attention.h): feature maps, the recurrent form for a
// single token and the chunked parallel form for prefill; the oracle of its CUDA twin.
#include "kernels/cpu/linear_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/blas.h"

namespace mnemo::kernels {
namespace {

// Tokens per chunk of the parallel form: the masked product is C×C per chunk.
constexpr int64_t kChunk = 64;

// φ(x) for one head vector x[d_h] into phi[m'].
void Features(const LinearAttentionShape& s, const float* x, const float* features, bool query,
              float* phi, std::vector<float>& work) {
  const int head_dim = s.head_dim;
  switch (s.map) {
    case FeatureMap::kElu:
      for (int i = 0; i < head_dim; ++i) phi[i] = x[i] > 0.0f ? x[i] + 1.0f : std::exp(x[i]);
      return;
    case FeatureMap::kFavor: {
      const int64_t m = s.num_features;
      work.resize(static_cast<size_t>(head_dim + m));
      float* xh = work.data();
      float* u = xh + head_dim;
      const float scale = 1.0f / std::sqrt(std::sqrt(static_cast<float>(head_dim)));
      float norm = 0.0f;
      for (int i = 0; i < head_dim; ++i) {
        xh[i] = x[i] * scale;
        norm += xh[i] * xh[i];
      }
      Gemv(m, head_dim, features, head_dim, xh, 0.0f, u);
      // Queries: the per-token stabiliser cancels between numerator and denominator (up to the
      // 1e-4 term). Keys: none, so the carried state never needs rescaling (d_h ≤ 128 keeps
      // exp(u − ‖x̂‖²/2) ≤ exp(d_h/2) far inside float32 range).
      float stab = 0.0f;
      if (query) stab = *std::max_element(u, u + m);
      const float norm_m = 1.0f / std::sqrt(static_cast<float>(m));
      for (int64_t i = 0; i < m; ++i)
        phi[i] = norm_m * (std::exp(u[i] - 0.5f * norm - stab) + 1e-4f);
      return;
    }
    case FeatureMap::kRfa: {
      const int64_t m = s.num_features;
      work.resize(static_cast<size_t>(head_dim + m));
      float* xn = work.data();
      float* u = xn + head_dim;
      float norm = 0.0f;
      for (int i = 0; i < head_dim; ++i) norm += x[i] * x[i];
      const float inv = 1.0f / std::max(std::sqrt(norm), 1e-12f);
      for (int i = 0; i < head_dim; ++i) xn[i] = x[i] * inv;
      Gemv(m, head_dim, features, head_dim, xn, 0.0f, u);
      const float norm_m = 1.0f / std::sqrt(static_cast<float>(m));
      for (int64_t i = 0; i < m; ++i) {
        phi[i] = norm_m * std::sin(u[i]);
        phi[m + i] = norm_m * std::cos(u[i]);
      }
      return;
    }
  }
}

void AttendHead(const LinearAttentionShape& s, int h, const float* qkv, const float* input,
                const float* features, const float* gate_w, const float* gate_b, float* state_s,
                float* state_z, float* out) {
  const int head_dim = s.head_dim;
  const int64_t w = static_cast<int64_t>(s.num_heads) * head_dim, t_len = s.query_len;
  const int64_t state_features = LinearStateFeatures(s);
  float* S = state_s + static_cast<int64_t>(h) * state_features * head_dim;  // [m', d_h]
  float* z = state_z + static_cast<int64_t>(h) * state_features;             // [m']
  thread_local std::vector<float> fq, fk, log_a, b, g, work, tile, num, proj, wk;
  fq.resize(static_cast<size_t>(t_len * state_features));
  fk.resize(static_cast<size_t>(t_len * state_features));
  log_a.assign(static_cast<size_t>(t_len), 0.0f);
  b.assign(static_cast<size_t>(t_len), 1.0f);
  for (int64_t t = 0; t < t_len; ++t) {
    const float* row = qkv + t * 3 * w + static_cast<int64_t>(h) * head_dim;
    Features(s, row, features, /*query=*/true, fq.data() + t * state_features, work);
    Features(s, row + w, features, /*query=*/false, fk.data() + t * state_features, work);
    if (s.gated) {
      float a = gate_b[h];
      const float* x = input + t * s.input_width;
      const float* gw = gate_w + static_cast<int64_t>(h) * s.input_width;
      for (int64_t i = 0; i < s.input_width; ++i) a += gw[i] * x[i];
      const float g = 1.0f / (1.0f + std::exp(-a));
      log_a[t] = std::log(g);
      b[t] = 1.0f - g;
    }
  }
  const float* v0 = qkv + 2 * w + static_cast<int64_t>(h) * head_dim;  // v row t at v0 + t·3w
  const int64_t ldv = 3 * w;
  if (t_len == 1) {  // recurrent form
    const float a = std::exp(log_a[0]);
    for (int64_t i = 0; i < state_features; ++i) {
      const float c = b[0] * fk[i];
      z[i] = a * z[i] + c;
      float* srow = S + i * head_dim;
      for (int d = 0; d < head_dim; ++d) srow[d] = a * srow[d] + c * v0[d];
    }
    float den = 0.0f;
    for (int64_t i = 0; i < state_features; ++i) den += fq[i] * z[i];
    float* o = out + static_cast<int64_t>(h) * head_dim;
    GemvT(state_features, head_dim, S, head_dim, fq.data(), 0.0f, o);
    const float inv = 1.0f / std::max(den, s.eps);
    for (int d = 0; d < head_dim; ++d) o[d] *= inv;
    return;
  }
  // Chunked parallel form. Within a chunk starting at c0, with G_i = Σ_{c0≤l≤i} log a_l:
  //   num_i = e^{G_i}·φq_iᵀS + Σ_{j≤i} b_j e^{G_i−G_j} (φq_i·φk_j) v_j,  den likewise with z.
  for (int64_t c0 = 0; c0 < t_len; c0 += kChunk) {
    const int64_t c = std::min(kChunk, t_len - c0);
    g.resize(static_cast<size_t>(c));
    float acc = 0.0f;
    for (int64_t i = 0; i < c; ++i) g[i] = acc += log_a[c0 + i];
    tile.resize(static_cast<size_t>(c * c));
    GemmNT(c, c, state_features, 1.0f, fq.data() + c0 * state_features, state_features,
           fk.data() + c0 * state_features, state_features, 0.0f, tile.data(), c);
    for (int64_t i = 0; i < c; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        float& a = tile[i * c + j];
        a = j <= i ? a * b[c0 + j] * std::exp(g[i] - g[j]) : 0.0f;
      }
    }
    num.resize(static_cast<size_t>(c * head_dim));
    proj.resize(static_cast<size_t>(c * head_dim));
    GemmNN(c, head_dim, c, 1.0f, tile.data(), c, v0 + c0 * ldv, ldv, 0.0f, num.data(), head_dim);
    GemmNN(c, head_dim, state_features, 1.0f, fq.data() + c0 * state_features, state_features, S,
           head_dim, 0.0f, proj.data(), head_dim);
    for (int64_t i = 0; i < c; ++i) {
      const float carry = std::exp(g[i]);
      float den = 0.0f;
      for (int64_t j = 0; j <= i; ++j) den += tile[i * c + j];
      const float* q = fq.data() + (c0 + i) * state_features;
      float qz = 0.0f;
      for (int64_t k = 0; k < state_features; ++k) qz += q[k] * z[k];
      den += carry * qz;
      const float inv = 1.0f / std::max(den, s.eps);
      float* o = out + (c0 + i) * w + static_cast<int64_t>(h) * head_dim;
      for (int d = 0; d < head_dim; ++d)
        o[d] = (num[i * head_dim + d] + carry * proj[i * head_dim + d]) * inv;
    }
    // Carry the state to the chunk's end: S ← e^{G_last}·S + Σ_j b_j e^{G_last−G_j} φk_j v_jᵀ.
    const float decay = std::exp(g[c - 1]);
    wk.resize(static_cast<size_t>(c * state_features));
    for (int64_t j = 0; j < c; ++j) {
      const float f = b[c0 + j] * std::exp(g[c - 1] - g[j]);
      for (int64_t k = 0; k < state_features; ++k)
        wk[j * state_features + k] = f * fk[(c0 + j) * state_features + k];
    }
    for (int64_t k = 0; k < state_features; ++k) {
      float sum = 0.0f;
      for (int64_t j = 0; j < c; ++j) sum += wk[j * state_features + k];
      z[k] = decay * z[k] + sum;
    }
    GemmTN(state_features, head_dim, c, 1.0f, wk.data(), state_features, v0 + c0 * ldv, ldv, decay,
           S, head_dim);
  }
}

}  // namespace

int64_t LinearStateFeatures(const LinearAttentionShape& shape) {
  switch (shape.map) {
    case FeatureMap::kElu:
      return shape.head_dim;
    case FeatureMap::kFavor:
      return shape.num_features;
    case FeatureMap::kRfa:
      return 2 * shape.num_features;
  }
  return shape.head_dim;
}

void LinearAttention(const LinearAttentionShape& shape, const float* qkv, const float* input,
                     const float* features, const float* gate_w, const float* gate_b, float* s,
                     float* z, float* out, ThreadPool& pool) {
  if (shape.query_len <= 0) return;
  pool.ParallelFor(shape.num_heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      AttendHead(shape, static_cast<int>(h), qkv, input, features, gate_w, gate_b, s, z, out);
    }
  });
}

}  // namespace mnemo::kernels
