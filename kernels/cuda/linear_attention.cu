#include <cmath>

#include "kernels/cuda/linear_attention.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kThreads = 128;

// Block-wide sum / max of one value per thread (kThreads threads); every thread gets the result.
__device__ float BlockReduce(float v, bool max, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = max ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = max ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

// Grid (T, H, 2): blockIdx.z 0 maps the query, 1 the key, of token t and head h into
// fq / fk [t, h, :]. Shared: the head vector, prepared (d_h), then u = Ω·x̂ (m), then scratch.
__global__ void FeaturesKernel(LinearAttentionLaunch p) {
  extern __shared__ float sh[];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const bool query = blockIdx.z == 0;
  const int dh = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * dh;
  const float* x = p.qkv + t * 3 * w + (query ? 0 : w) + static_cast<int64_t>(h) * dh;
  float* phi = (query ? p.fq : p.fk) + (t * p.num_heads + h) * p.state_features;
  if (p.map == LinearMap::kElu) {
    for (int i = threadIdx.x; i < dh; i += kThreads) {
      phi[i] = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
    }
    return;
  }
  const int64_t m = p.num_features;
  float* xh = sh;
  float* u = sh + dh;
  float* scratch = u + m;
  float local = 0.0f;
  for (int i = threadIdx.x; i < dh; i += kThreads) local += x[i] * x[i];
  const float sq = BlockReduce(local, false, scratch);  // ‖x‖²
  float norm = 0.0f;                                    // favor: ‖x̂‖²
  if (p.map == LinearMap::kFavor) {
    const float scale = 1.0f / sqrtf(sqrtf(static_cast<float>(dh)));
    for (int i = threadIdx.x; i < dh; i += kThreads) xh[i] = x[i] * scale;
    norm = sq * scale * scale;
  } else {
    const float inv = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
    for (int i = threadIdx.x; i < dh; i += kThreads) xh[i] = x[i] * inv;
  }
  __syncthreads();
  float umax = -INFINITY;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const float* row = p.features + i * dh;
    float acc = 0.0f;
    for (int d = 0; d < dh; ++d) acc += row[d] * xh[d];
    u[i] = acc;
    umax = fmaxf(umax, acc);
  }
  const float norm_m = 1.0f / sqrtf(static_cast<float>(m));
  if (p.map == LinearMap::kFavor) {
    // Queries: the per-token stabiliser cancels between numerator and denominator (up to the
    // 1e-4 term); keys: none, so the carried state never needs rescaling.
    const float stab = query ? BlockReduce(umax, true, scratch) : 0.0f;
    for (int64_t i = threadIdx.x; i < m; i += kThreads) {
      phi[i] = norm_m * (expf(u[i] - 0.5f * norm - stab) + 1e-4f);
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    phi[i] = norm_m * sinf(u[i]);
    phi[m + i] = norm_m * cosf(u[i]);
  }
}

// Grid (T, H): gate[t, h] = sigmoid(w_h · x_t + c_h).
__global__ void GateKernel(LinearAttentionLaunch p) {
  __shared__ float scratch[kThreads / 32];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const float* x = p.input + t * p.input_width;
  const float* gw = p.gate_w + static_cast<int64_t>(h) * p.input_width;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < p.input_width; i += kThreads) acc += gw[i] * x[i];
  const float a = BlockReduce(acc, false, scratch) + p.gate_b[h];
  if (threadIdx.x == 0) p.gate[t * p.num_heads + h] = 1.0f / (1.0f + expf(-a));
}

// Grid (H), d_h threads: thread d owns column d of S; z and the token's features sit in shared
// memory ([m'] each, three arrays).
__global__ void ScanKernel(LinearAttentionLaunch p) {
  extern __shared__ float sh[];
  const int h = blockIdx.x;
  const int d = threadIdx.x;
  const int dh = p.head_dim;
  const int64_t mf = p.state_features;
  const int64_t w = static_cast<int64_t>(p.num_heads) * dh;
  float* z = sh;
  float* q = z + mf;
  float* k = q + mf;
  float* S = p.s + static_cast<int64_t>(h) * mf * dh;
  float* zg = p.z + static_cast<int64_t>(h) * mf;
  for (int64_t i = d; i < mf; i += blockDim.x) z[i] = zg[i];
  for (int64_t t = 0; t < p.query_len; ++t) {
    const float g = p.gated ? p.gate[t * p.num_heads + h] : 1.0f;
    const float a = g, b = p.gated ? 1.0f - g : 1.0f;
    const float* fq = p.fq + (t * p.num_heads + h) * mf;
    const float* fk = p.fk + (t * p.num_heads + h) * mf;
    __syncthreads();  // the previous token's reads of z, q, k are done
    for (int64_t i = d; i < mf; i += blockDim.x) {
      q[i] = fq[i];
      k[i] = fk[i];
      z[i] = a * z[i] + b * fk[i];
    }
    __syncthreads();
    float den = 0.0f;
    for (int64_t i = 0; i < mf; ++i) den += q[i] * z[i];
    const float v = p.qkv[t * 3 * w + 2 * w + static_cast<int64_t>(h) * dh + d];
    float num = 0.0f;
    for (int64_t i = 0; i < mf; ++i) {
      float* s = S + i * dh + d;
      const float updated = a * *s + b * k[i] * v;
      *s = updated;
      num += q[i] * updated;
    }
    p.out[t * w + static_cast<int64_t>(h) * dh + d] = num / fmaxf(den, p.eps);
  }
  __syncthreads();
  for (int64_t i = d; i < mf; i += blockDim.x) zg[i] = z[i];
}

}  // namespace

cudaError_t LinearAttention(const LinearAttentionLaunch& p, cudaStream_t stream) {
  if (p.query_len <= 0) return cudaSuccess;
  if (p.head_dim <= 0 || p.head_dim > 1024 || p.query_len > 2147483647 || p.num_heads > 65535) {
    return cudaErrorInvalidValue;
  }
  const size_t feature_shared =
      sizeof(float) *
      (static_cast<size_t>(p.head_dim) + static_cast<size_t>(p.num_features) + kThreads / 32);
  const size_t scan_shared = sizeof(float) * 3 * static_cast<size_t>(p.state_features);
  if (feature_shared > 48 * 1024 || scan_shared > 48 * 1024) return cudaErrorInvalidValue;
  const dim3 features(static_cast<unsigned>(p.query_len), static_cast<unsigned>(p.num_heads), 2);
  FeaturesKernel<<<features, kThreads, feature_shared, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (p.gated) {
    const dim3 gates(static_cast<unsigned>(p.query_len), static_cast<unsigned>(p.num_heads));
    GateKernel<<<gates, kThreads, 0, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  ScanKernel<<<static_cast<unsigned>(p.num_heads), static_cast<unsigned>(p.head_dim), scan_shared,
               stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
