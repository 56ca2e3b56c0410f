// Causal linear attention on the GPU (linear_attention.h): feature maps, gates, the state scan and
// the chunked prefill form; twin of kernels/cpu/linear_attention.
#include <cmath>

#include "kernels/cuda/linear_attention.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 64;  // tokens per chunk of the chunked prefill

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
  const int head_dim = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim;
  const float* x = p.qkv + t * 3 * w + (query ? 0 : w) + static_cast<int64_t>(h) * head_dim;
  float* phi = (query ? p.fq : p.fk) + (t * p.num_heads + h) * p.state_features;
  if (p.map == FeatureMap::kElu) {
    for (int i = threadIdx.x; i < head_dim; i += kThreads) {
      phi[i] = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
    }
    return;
  }
  const int64_t m = p.num_features;
  float* xh = sh;
  float* u = sh + head_dim;
  float* scratch = u + m;
  float local = 0.0f;
  for (int i = threadIdx.x; i < head_dim; i += kThreads) local += x[i] * x[i];
  const float sq = BlockReduce(local, false, scratch);  // ‖x‖²
  float norm = 0.0f;                                    // favor: ‖x̂‖²
  if (p.map == FeatureMap::kFavor) {
    const float scale = 1.0f / sqrtf(sqrtf(static_cast<float>(head_dim)));
    for (int i = threadIdx.x; i < head_dim; i += kThreads) xh[i] = x[i] * scale;
    norm = sq * scale * scale;
  } else {
    const float inv = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
    for (int i = threadIdx.x; i < head_dim; i += kThreads) xh[i] = x[i] * inv;
  }
  __syncthreads();
  float umax = -INFINITY;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const float* row = p.features + i * head_dim;
    float acc = 0.0f;
    for (int d = 0; d < head_dim; ++d) acc += row[d] * xh[d];
    u[i] = acc;
    umax = fmaxf(umax, acc);
  }
  const float norm_m = 1.0f / sqrtf(static_cast<float>(m));
  if (p.map == FeatureMap::kFavor) {
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
  const int head_dim = p.head_dim;
  const int64_t state_features = p.state_features;
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim;
  float* z = sh;
  float* q = z + state_features;
  float* k = q + state_features;
  float* S = p.s + static_cast<int64_t>(h) * state_features * head_dim;
  float* zg = p.z + static_cast<int64_t>(h) * state_features;
  for (int64_t i = d; i < state_features; i += blockDim.x) z[i] = zg[i];
  for (int64_t t = 0; t < p.query_len; ++t) {
    const float g = p.gated ? p.gate[t * p.num_heads + h] : 1.0f;
    const float a = g, b = p.gated ? 1.0f - g : 1.0f;
    const float* fq = p.fq + (t * p.num_heads + h) * state_features;
    const float* fk = p.fk + (t * p.num_heads + h) * state_features;
    __syncthreads();  // the previous token's reads of z, q, k are done
    for (int64_t i = d; i < state_features; i += blockDim.x) {
      q[i] = fq[i];
      k[i] = fk[i];
      z[i] = a * z[i] + b * fk[i];
    }
    __syncthreads();
    float den = 0.0f;
    for (int64_t i = 0; i < state_features; ++i) den += q[i] * z[i];
    const float v = p.qkv[t * 3 * w + 2 * w + static_cast<int64_t>(h) * head_dim + d];
    float num = 0.0f;
    for (int64_t i = 0; i < state_features; ++i) {
      float* s = S + i * head_dim + d;
      const float updated = a * *s + b * k[i] * v;
      *s = updated;
      num += q[i] * updated;
    }
    p.out[t * w + static_cast<int64_t>(h) * head_dim + d] = num / fmaxf(den, p.eps);
  }
  __syncthreads();
  for (int64_t i = d; i < state_features; i += blockDim.x) zg[i] = z[i];
}

// ---- Chunked prefill (segments longer than kChunk) ----------------------------------------
// Chunks of kChunk tokens. With decay(t, s) = a_{s+1}···a_t (1 when ungated):
//   S_t = A_t·S_c + Σ_{s ≤ t in chunk} decay(t, s)·b_s·φk_s v_sᵀ,  A_t = a_{t0}···a_t,
// so out_t = (A_t·φq_t S_c + Σ_s P[t, s] v_s) / max(A_t·φq_t·z_c + Σ_s P[t, s], eps), with
// P[t, s] = decay(t, s)·b_s·(φq_t·φk_s). Three launches: each chunk's state increment (parallel
// over chunks), the chunk-start states (sequential over chunks, parallel over the state's
// elements), and each chunk's outputs (parallel over chunks).

// Where the chunk scratch lies: [chunks, H, m', d_h] increments and start states, [chunks, H, m']
// z increments and start sums, [chunks, H] chunk decays.
struct ChunkScratch {
  float* ds;
  float* dz;
  float* decay;
  float* s_start;
  float* z_start;

  __host__ __device__ ChunkScratch(float* base, int64_t chunks, int64_t num_heads,
                                   int64_t state_features, int64_t head_dim) {
    ds = base;
    s_start = ds + chunks * num_heads * state_features * head_dim;
    dz = s_start + chunks * num_heads * state_features * head_dim;
    z_start = dz + chunks * num_heads * state_features;
    decay = z_start + chunks * num_heads * state_features;
  }
  static int64_t Floats(int64_t chunks, int64_t num_heads, int64_t state_features,
                        int64_t head_dim) {
    return chunks * num_heads * (2 * state_features * head_dim + 2 * state_features + 1);
  }
};

__device__ __forceinline__ float GateA(const LinearAttentionLaunch& p, int64_t t, int h) {
  return p.gated ? p.gate[t * p.num_heads + h] : 1.0f;
}
__device__ __forceinline__ float GateB(const LinearAttentionLaunch& p, int64_t t, int h) {
  return p.gated ? 1.0f - p.gate[t * p.num_heads + h] : 1.0f;
}

// Grid (chunks, H), d_h threads: the chunk's ΔS = Σ_s decay(t1 − 1, s)·b_s·φk_s v_sᵀ, Δz alike,
// and the chunk's decay a_{t0}···a_{t1−1}.
__global__ void ChunkSumsKernel(LinearAttentionLaunch p) {
  __shared__ float weight[kChunk];
  const int64_t chunk = blockIdx.x, t0 = chunk * kChunk;
  const int64_t t1 = t0 + kChunk < p.query_len ? t0 + kChunk : p.query_len;
  const int h = blockIdx.y, d = threadIdx.x, head_dim = p.head_dim;
  const int64_t state_features = p.state_features, num_heads = p.num_heads,
                w = num_heads * head_dim;
  const int64_t chunks = (p.query_len + kChunk - 1) / kChunk;
  const ChunkScratch c(p.chunk_scratch, chunks, num_heads, state_features, head_dim);
  if (threadIdx.x == 0) {
    float decay = 1.0f;
    for (int64_t s = t1 - 1; s >= t0; --s) {
      weight[s - t0] = decay * GateB(p, s, h);
      decay *= GateA(p, s, h);
    }
    c.decay[chunk * num_heads + h] = decay;
  }
  __syncthreads();
  const int64_t head_state = (chunk * num_heads + h) * state_features;
  for (int64_t i = 0; i < state_features; ++i) {
    float acc = 0.0f;
    for (int64_t s = t0; s < t1; ++s) {
      const float v = p.qkv[s * 3 * w + 2 * w + static_cast<int64_t>(h) * head_dim + d];
      acc += weight[s - t0] * p.fk[(s * num_heads + h) * state_features + i] * v;
    }
    c.ds[(head_state + i) * head_dim + d] = acc;
  }
  for (int64_t i = d; i < state_features; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = t0; s < t1; ++s)
      acc += weight[s - t0] * p.fk[(s * num_heads + h) * state_features + i];
    c.dz[head_state + i] = acc;
  }
}

// Grid (H, ⌈(m'·d_h + m') / kThreads⌉): element e of head h's state (S, then z) walks the chunks
// in order, leaving each chunk's start value and, at the end, the carried state.
__global__ void ChunkCarryKernel(LinearAttentionLaunch p) {
  const int h = blockIdx.x;
  const int64_t e = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t state_features = p.state_features, head_dim = p.head_dim, num_heads = p.num_heads;
  const int64_t chunks = (p.query_len + kChunk - 1) / kChunk, sd = state_features * head_dim;
  if (e >= sd + state_features) return;
  const ChunkScratch c(p.chunk_scratch, chunks, num_heads, state_features, head_dim);
  const bool in_s = e < sd;
  float* state = in_s ? p.s + h * sd + e : p.z + h * state_features + (e - sd);
  float value = *state;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t at = (k * num_heads + h);
    if (in_s) {
      c.s_start[at * sd + e] = value;
      value = c.decay[at] * value + c.ds[at * sd + e];
    } else {
      c.z_start[at * state_features + (e - sd)] = value;
      value = c.decay[at] * value + c.dz[at * state_features + (e - sd)];
    }
  }
  *state = value;
}

// Grid (chunks, H), d_h threads: the chunk's outputs from its start state and P (shared).
__global__ void ChunkOutputKernel(LinearAttentionLaunch p) {
  __shared__ float pm[kChunk][kChunk];
  __shared__ float decay_q[kChunk];  // A_t
  __shared__ float den0[kChunk];     // A_t·φq_t·z_c
  const int64_t chunk = blockIdx.x, t0 = chunk * kChunk;
  const int64_t t1 = t0 + kChunk < p.query_len ? t0 + kChunk : p.query_len;
  const int n = static_cast<int>(t1 - t0);
  const int h = blockIdx.y, d = threadIdx.x, head_dim = p.head_dim;
  const int64_t state_features = p.state_features, num_heads = p.num_heads,
                w = num_heads * head_dim;
  const int64_t chunks = (p.query_len + kChunk - 1) / kChunk;
  const ChunkScratch c(p.chunk_scratch, chunks, num_heads, state_features, head_dim);
  const int64_t at = chunk * num_heads + h;
  auto fq = [&](int t) { return p.fq + ((t0 + t) * num_heads + h) * state_features; };
  auto fk = [&](int s) { return p.fk + ((t0 + s) * num_heads + h) * state_features; };
  for (int pair = threadIdx.x; pair < n * n; pair += blockDim.x) {
    const int t = pair / n, s = pair % n;
    float value = 0.0f;
    if (s <= t) {
      const float* q = fq(t);
      const float* k = fk(s);
      float dot = 0.0f;
      for (int64_t i = 0; i < state_features; ++i) dot += q[i] * k[i];
      float decay = 1.0f;
      for (int u = s + 1; u <= t; ++u) decay *= GateA(p, t0 + u, h);
      value = decay * GateB(p, t0 + s, h) * dot;
    }
    pm[t][s] = value;
  }
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    float decay = 1.0f;
    for (int u = 0; u <= t; ++u) decay *= GateA(p, t0 + u, h);
    const float* q = fq(t);
    const float* z = c.z_start + at * state_features;
    float dot = 0.0f;
    for (int64_t i = 0; i < state_features; ++i) dot += q[i] * z[i];
    decay_q[t] = decay;
    den0[t] = decay * dot;
  }
  __syncthreads();
  const float* s_col = c.s_start + at * state_features * head_dim + d;
  for (int t = 0; t < n; ++t) {
    const float* q = fq(t);
    float carried = 0.0f;
    for (int64_t i = 0; i < state_features; ++i) carried += q[i] * s_col[i * head_dim];
    float num = decay_q[t] * carried, den = den0[t];
    for (int s = 0; s <= t; ++s) {
      const float v = p.qkv[(t0 + s) * 3 * w + 2 * w + static_cast<int64_t>(h) * head_dim + d];
      num += pm[t][s] * v;
      den += pm[t][s];
    }
    p.out[(t0 + t) * w + static_cast<int64_t>(h) * head_dim + d] = num / fmaxf(den, p.eps);
  }
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
  if (p.query_len > kChunk) {  // chunked: parallel over the segment
    const int64_t chunks = (p.query_len + kChunk - 1) / kChunk;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.num_heads));
    const auto threads = static_cast<unsigned>(p.head_dim);
    ChunkSumsKernel<<<grid, threads, 0, stream>>>(p);
    const int64_t elements = p.state_features * (p.head_dim + 1);
    const dim3 carry(static_cast<unsigned>(p.num_heads),
                     static_cast<unsigned>((elements + kThreads - 1) / kThreads));
    ChunkCarryKernel<<<carry, kThreads, 0, stream>>>(p);
    ChunkOutputKernel<<<grid, threads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  ScanKernel<<<static_cast<unsigned>(p.num_heads), static_cast<unsigned>(p.head_dim), scan_shared,
               stream>>>(p);
  return cudaGetLastError();
}

int64_t LinearAttentionChunkScratchFloats(int64_t query_len, int num_heads, int64_t state_features,
                                          int head_dim) {
  if (query_len <= kChunk) return 0;
  return ChunkScratch::Floats((query_len + kChunk - 1) / kChunk, num_heads, state_features,
                              head_dim);
}

}  // namespace mnemo::kernels::cuda
