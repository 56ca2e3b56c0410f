// Transformer-XL relative attention on the GPU (relative_attention.h), FlashAttention-style with
// split-key decode and its combine; twin of kernels/cpu/relative_attention.
#include <cuda_pipeline.h>

#include <cmath>

#include "kernels/cuda/relative_attention.h"
#include "kernels/cuda/ring_slot.cuh"

namespace mnemo::kernels::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// Warps per block: decode blocks (one query, chunks of 2 key tiles) run kDecodeWarps, so twice
// as many blocks fit an SM; prefill blocks 4 up to d_h 64 and 2 above, so a block's shared
// memory stays within what an sm_80 multiprocessor offers (163 KB).
__host__ __device__ constexpr int Warps(int bq, int dk) {
  return bq == kDecodeQueryTile ? kDecodeWarps : (dk <= 2 ? kWarpsPerBlock : 2);
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Key j's key and value rows: the compressed ring for j < cmem_len, the XL ring for
// j < memory_len, the segment after.
struct KvRow {
  const float* k;
  const float* v;
};
// The XL ring slot of key j (cmem_len ≤ j < memory_len).
__device__ __forceinline__ int64_t XlSlot(const AttentionSequence& s, int64_t j) {
  return RingSlot(s.ring_start, j - s.cmem_len, s.capacity);
}
__device__ __forceinline__ KvRow RowOf(const AttentionSequence& s, int64_t j, int64_t w) {
  if (j < s.cmem_len) {
    const int64_t slot = RingSlot(s.cmem_start, j, s.cmem_capacity);
    return {s.cmem_k + slot * w, s.cmem_v + slot * w};
  }
  if (j < s.memory_len) {
    const int64_t slot = XlSlot(s, j);
    return {s.mem_k + slot * w, s.mem_v + slot * w};
  }
  const float* row = s.qkv + (j - s.memory_len) * 3 * w;
  return {row + w, row + 2 * w};
}

// Shared memory: (q+u)·scale and (q+v)·scale for the tile's queries, then per warp a key tile
// and the band of distance-table rows its scores need, rows padded by one float (no bank
// conflicts when lane j reads row j), and the value tile (read along rows: no padding needed).
__host__ __device__ constexpr int WarpFloats(int bq, int head_dim) {
  return (kKeyTile + bq + kKeyTile - 1) * (head_dim + 1) + kKeyTile * head_dim;
}

// RealFormer's entry (head h, query i, key j) of a sequence's [H, T, memory_len + T] scores.
__device__ __forceinline__ int64_t ScoreIndex(const AttentionSequence& s, int h, int64_t i,
                                              int64_t j) {
  return (h * s.query_len + i) * (s.memory_len + s.query_len) + j;
}

// A visible score plus the previous layer's (RealFormer), kept for the next layer.
__device__ __forceinline__ float ResidualScore(const AttentionSequence& s, int h, int64_t i,
                                               int64_t j, float score) {
  if (s.prev_scores == nullptr && s.scores == nullptr) return score;
  const int64_t at = ScoreIndex(s, h, i, j);
  if (s.prev_scores != nullptr) score += s.prev_scores[at];
  if (s.scores != nullptr) s.scores[at] = score;
  return score;
}

// BQ queries per block, DK = ceil(d_h / 32) head dimensions per lane. kPositional = false (a
// launch without a distance table): plain q·k / sqrt(d_h), no biases (a sliding window's band).
template <int BQ, int DK, bool kPositional>
__global__ void __launch_bounds__(Warps(BQ, DK) * 32)
    RelativeAttentionKernel(RelativeAttentionLaunch p) {
  constexpr int kWarps = Warps(BQ, DK);
  constexpr int kThreads = kWarps * 32;
  extern __shared__ float smem[];
  const AttentionWorkItem item = p.items[blockIdx.x];
  const AttentionSequence s = p.seqs[item.seq];
  const int h = blockIdx.y;
  const int d_h = p.head_dim, dp = d_h + 1;
  const int64_t w = static_cast<int64_t>(p.num_heads) * d_h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = rsqrtf(static_cast<float>(d_h));

  float* qu = smem;                                        // [BQ, d_h]
  float* qv = qu + BQ * d_h;                               // [BQ, d_h]
  float* ks = qv + BQ * d_h + warp * WarpFloats(BQ, d_h);  // [32, d_h + 1]
  float* rs = ks + kKeyTile * dp;                          // [BQ + 31, d_h + 1]
  float* vs = rs + (BQ + kKeyTile - 1) * dp;               // [32, d_h]

  for (int idx = threadIdx.x; idx < BQ * d_h; idx += kThreads) {
    const int q = idx / d_h, d = idx % d_h;
    float u = 0.0f, v = 0.0f;
    if (q < item.q_count) {
      const float x = s.qkv[(item.q_begin + q) * 3 * w + h * d_h + d];
      u = (x + (kPositional ? p.r_w_bias[h * d_h + d] : 0.0f)) * scale;
      v = kPositional ? (x + p.r_r_bias[h * d_h + d]) * scale : 0.0f;
    }
    qu[idx] = u;
    qv[idx] = v;
  }
  __syncthreads();

  const int64_t m_len = s.memory_len;
  const int64_t clamp = p.clamp_len > 0 ? p.clamp_len : (int64_t{1} << 62);
  float m_run[BQ], l_run[BQ], acc[BQ][DK];
#pragma unroll
  for (int q = 0; q < BQ; ++q) {
    m_run[q] = -INFINITY;
    l_run[q] = 0.0f;
#pragma unroll
    for (int k = 0; k < DK; ++k) acc[q][k] = 0.0f;
  }

  for (int64_t j0 = item.k_begin + warp * kKeyTile; j0 < item.k_end; j0 += kWarps * kKeyTile) {
    const int64_t left = item.k_end - j0;
    const int rows = left < kKeyTile ? static_cast<int>(left) : kKeyTile;
    // The key, value and distance-table tiles go global → shared with asynchronous copies
    // (cp.async), all in flight at once: one memory latency per tile, not one per row.
    for (int r = 0; r < rows; ++r) {
      const KvRow row = RowOf(s, j0 + r, w);
      const float* krow = row.k + h * d_h;
      const float* vrow = row.v + h * d_h;
#pragma unroll
      for (int k = 0; k < DK; ++k) {
        const int d = lane + 32 * k;
        if (d < d_h) {
          __pipeline_memcpy_async(ks + r * dp + d, krow + d, sizeof(float));
          __pipeline_memcpy_async(vs + r * d_h + d, vrow + d, sizeof(float));
        }
      }
    }
    // Distances in this tile run from dmin (last key, first query) to dmin + BQ + 30.
    const int64_t dmin = m_len + item.q_begin - j0 - (kKeyTile - 1);
    for (int r = 0; r < (kPositional ? BQ + kKeyTile - 1 : 0); ++r) {
      int64_t dist = dmin + r;
      dist = dist < 0 ? 0 : (dist > clamp ? clamp : dist);  // negative: masked anyway
      const float* rrow = p.rel + dist * w + h * d_h;
#pragma unroll
      for (int k = 0; k < DK; ++k) {
        const int d = lane + 32 * k;
        if (d < d_h) __pipeline_memcpy_async(rs + r * dp + d, rrow + d, sizeof(float));
      }
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncwarp();

    // Lane `lane` scores key j0 + lane against every query of the tile.
    float sc[BQ];
#pragma unroll
    for (int q = 0; q < BQ; ++q) sc[q] = 0.0f;
    const float* krow = ks + lane * dp;  // rows ≥ `rows` hold stale data: masked below
    if constexpr (kPositional) {
      for (int d = 0; d < d_h; ++d) {
        const float kd = krow[d];
#pragma unroll
        for (int q = 0; q < BQ; ++q) {
          sc[q] += qu[q * d_h + d] * kd + qv[q * d_h + d] * rs[(q - lane + kKeyTile - 1) * dp + d];
        }
      }
    } else {
      for (int d = 0; d < d_h; ++d) {
        const float kd = krow[d];
#pragma unroll
        for (int q = 0; q < BQ; ++q) sc[q] += qu[q * d_h + d] * kd;
      }
    }
    const int64_t j = j0 + lane;
    float pr[BQ];
#pragma unroll
    for (int q = 0; q < BQ; ++q) {
      const int64_t i = item.q_begin + q;
      const bool visible =
          q < item.q_count && lane < rows && j <= m_len + i &&
          j >= FirstVisibleKey(i, m_len, s.query_len, p.mem_len_max, p.same_length);
      float score = visible ? sc[q] : -INFINITY;
      if (visible) score = ResidualScore(s, h, i, j, score);
      const float m_new = fmaxf(m_run[q], WarpMax(score));
      if (m_new == -INFINITY) {  // nothing visible yet for this query
        pr[q] = 0.0f;
        continue;
      }
      pr[q] = visible ? expf(score - m_new) : 0.0f;
      const float alpha = m_run[q] == -INFINITY ? 0.0f : expf(m_run[q] - m_new);
      l_run[q] = l_run[q] * alpha + WarpSum(pr[q]);
#pragma unroll
      for (int k = 0; k < DK; ++k) acc[q][k] *= alpha;
      m_run[q] = m_new;
    }
    // out += P · V.
    for (int jj = 0; jj < rows; ++jj) {
      const float* vrow = vs + jj * d_h;
      float v[DK];
#pragma unroll
      for (int k = 0; k < DK; ++k) {
        const int d = lane + 32 * k;
        v[k] = d < d_h ? vrow[d] : 0.0f;
      }
#pragma unroll
      for (int q = 0; q < BQ; ++q) {
        const float pj = __shfl_sync(kFullMask, pr[q], jj);
#pragma unroll
        for (int k = 0; k < DK; ++k) acc[q][k] += pj * v[k];
      }
    }
    __syncwarp();  // the next tile overwrites ks / rs
  }

  // Merge the warps' partial softmax states through shared memory (each warp its own region).
  float* mine = qv + BQ * d_h + warp * WarpFloats(BQ, d_h);  // [BQ, d_h + 2]: m, l, acc
#pragma unroll
  for (int q = 0; q < BQ; ++q) {
    if (lane == 0) {
      mine[q * (d_h + 2)] = m_run[q];
      mine[q * (d_h + 2) + 1] = l_run[q];
    }
#pragma unroll
    for (int k = 0; k < DK; ++k) {
      const int d = lane + 32 * k;
      if (d < d_h) mine[q * (d_h + 2) + 2 + d] = acc[q][k];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < item.q_count * d_h; idx += kThreads) {
    const int q = idx / d_h, d = idx % d_h;
    float m_all = -INFINITY;
    for (int wi = 0; wi < kWarps; ++wi) {
      m_all = fmaxf(m_all, qv[BQ * d_h + wi * WarpFloats(BQ, d_h) + q * (d_h + 2)]);
    }
    float l_all = 0.0f, a_all = 0.0f;
    if (m_all != -INFINITY) {
      for (int wi = 0; wi < kWarps; ++wi) {
        const float* rec = qv + BQ * d_h + wi * WarpFloats(BQ, d_h) + q * (d_h + 2);
        if (rec[0] == -INFINITY) continue;
        const float f = expf(rec[0] - m_all);
        l_all += rec[1] * f;
        a_all += rec[2 + d] * f;
      }
    }
    if (item.partial < 0) {
      s.out[(item.q_begin + q) * w + h * d_h + d] = l_all > 0.0f ? a_all / l_all : 0.0f;
    } else {
      float* rec = p.partials + ((item.partial + q) * p.num_heads + h) * (d_h + 2);
      if (d == 0) {
        rec[0] = m_all;
        rec[1] = l_all;
      }
      rec[2 + d] = a_all;
    }
  }
}

// Merges the split partial results of one query tile; grid (combines, heads). The splits'
// softmax statistics are loaded in parallel and become one weight per split in shared memory,
// so each output element is a sum of independent loads rather than a chain of dependent ones.
__global__ void CombineKernel(RelativeAttentionLaunch p) {
  __shared__ float weight[kPrefillQueryTile][kMaxSplits];
  __shared__ float mass[kPrefillQueryTile][kMaxSplits];
  const AttentionCombineItem c = p.combines[blockIdx.x];
  const AttentionSequence s = p.seqs[c.seq];
  const int h = blockIdx.y, d_h = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * d_h;
  auto rec = [&](int split, int q) {
    return p.partials + ((c.partial + split * c.q_count + q) * p.num_heads + h) * (d_h + 2);
  };
  // One thread per (query, split) loads that split's running max and mass.
  for (int idx = threadIdx.x; idx < c.q_count * c.splits; idx += blockDim.x) {
    const int q = idx / c.splits, sp = idx % c.splits;
    weight[q][sp] = rec(sp, q)[0];
    mass[q][sp] = rec(sp, q)[1];
  }
  __syncthreads();
  if (threadIdx.x < c.q_count) {  // per query: split weights exp(m_s − m) / Σ l_s·exp(m_s − m)
    const int q = threadIdx.x;
    float m_all = -INFINITY;
    for (int sp = 0; sp < c.splits; ++sp) m_all = fmaxf(m_all, weight[q][sp]);
    float l_all = 0.0f;
    for (int sp = 0; sp < c.splits; ++sp) {
      const float m = weight[q][sp];
      const float f = m == -INFINITY ? 0.0f : expf(m - m_all);
      weight[q][sp] = f;
      l_all += mass[q][sp] * f;
    }
    const float inv = l_all > 0.0f ? 1.0f / l_all : 0.0f;  // nothing visible: zeros
    for (int sp = 0; sp < c.splits; ++sp) weight[q][sp] *= inv;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < c.q_count * d_h; idx += blockDim.x) {
    const int q = idx / d_h, d = idx % d_h;
    float a = 0.0f;
#pragma unroll 4
    for (int sp = 0; sp < c.splits; ++sp) a += weight[q][sp] * rec(sp, q)[2 + d];
    s.out[(c.q_begin + q) * w + h * d_h + d] = a;
  }
}

// Grid (max T, H, sequences), one warp: the scores of query i against its visible keys, twice
// (the softmax's max and sum, then each XL-memory key's probability into usage).
__global__ void AttentionMassKernel(RelativeAttentionLaunch p) {
  const AttentionSequence s = p.seqs[blockIdx.z];
  const int64_t i = blockIdx.x;
  if (s.usage == nullptr || i >= s.query_len) return;
  const int h = blockIdx.y, lane = threadIdx.x;
  const int d_h = p.head_dim;
  const int64_t w = static_cast<int64_t>(p.num_heads) * d_h;
  const float scale = rsqrtf(static_cast<float>(d_h));
  __shared__ float qu[kMaxHeadDim], qv[kMaxHeadDim];
  for (int d = lane; d < d_h; d += 32) {
    const float x = s.qkv[i * 3 * w + h * d_h + d];
    qu[d] = (x + p.r_w_bias[h * d_h + d]) * scale;
    qv[d] = (x + p.r_r_bias[h * d_h + d]) * scale;
  }
  __syncwarp();
  const int64_t m_len = s.memory_len;
  const int64_t clamp = p.clamp_len > 0 ? p.clamp_len : (int64_t{1} << 62);
  const int64_t first = FirstVisibleKey(i, m_len, s.query_len, p.mem_len_max, p.same_length);
  const int64_t last = m_len + i;  // inclusive
  auto score_of = [&](int64_t j) {
    const KvRow row = RowOf(s, j, w);
    int64_t dist = m_len + i - j;
    dist = dist > clamp ? clamp : dist;
    const float* k = row.k + h * d_h;
    const float* r = p.rel + dist * w + h * d_h;
    float acc = 0.0f;
    for (int d = 0; d < d_h; ++d) acc += qu[d] * k[d] + qv[d] * r[d];
    if (s.prev_scores != nullptr) acc += s.prev_scores[ScoreIndex(s, h, i, j)];
    return acc;
  };
  float m_run = -INFINITY, l_run = 0.0f;
  for (int64_t j0 = first; j0 <= last; j0 += 32) {
    const int64_t j = j0 + lane;
    const float sc = j <= last ? score_of(j) : -INFINITY;
    const float m_new = fmaxf(m_run, WarpMax(sc));
    const float e = j <= last ? expf(sc - m_new) : 0.0f;
    l_run = l_run * (m_run == -INFINITY ? 0.0f : expf(m_run - m_new)) + WarpSum(e);
    m_run = m_new;
  }
  if (!(l_run > 0.0f)) return;
  const int64_t mem_end = m_len < last + 1 ? m_len : last + 1;
  for (int64_t j0 = (first > s.cmem_len ? first : s.cmem_len); j0 < mem_end; j0 += 32) {
    const int64_t j = j0 + lane;
    if (j >= mem_end) continue;
    atomicAdd(s.usage + XlSlot(s, j), expf(score_of(j) - m_run) / l_run);
  }
}

template <int BQ, int DK, bool kPositional>
cudaError_t LaunchKernel(const RelativeAttentionLaunch& p, cudaStream_t stream) {
  const size_t shared = RelativeAttentionSharedBytes(BQ, p.head_dim);
  // Opt in to more than 48 KB once per instantiation (the attribute is per function).
  static const cudaError_t attr = cudaFuncSetAttribute(
      RelativeAttentionKernel<BQ, DK, kPositional>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(RelativeAttentionSharedBytes(BQ, DK * 32)));
  if (attr != cudaSuccess) return attr;
  const dim3 grid(static_cast<unsigned>(p.num_items), static_cast<unsigned>(p.num_heads));
  RelativeAttentionKernel<BQ, DK, kPositional><<<grid, Warps(BQ, DK) * 32, shared, stream>>>(p);
  return cudaGetLastError();
}

template <int BQ, int DK>
cudaError_t LaunchAttention(const RelativeAttentionLaunch& p, cudaStream_t stream) {
  return p.rel != nullptr ? LaunchKernel<BQ, DK, true>(p, stream)
                          : LaunchKernel<BQ, DK, false>(p, stream);
}

template <int BQ>
cudaError_t LaunchForTile(const RelativeAttentionLaunch& p, cudaStream_t stream) {
  switch ((p.head_dim + 31) / 32) {
    case 1:
      return LaunchAttention<BQ, 1>(p, stream);
    case 2:
      return LaunchAttention<BQ, 2>(p, stream);
    case 3:
      return LaunchAttention<BQ, 3>(p, stream);
    default:
      return LaunchAttention<BQ, 4>(p, stream);
  }
}

}  // namespace

size_t RelativeAttentionSharedBytes(int query_tile, int head_dim) {
  return sizeof(float) * (2 * static_cast<size_t>(query_tile) * head_dim +
                          static_cast<size_t>(Warps(query_tile, (head_dim + 31) / 32)) *
                              WarpFloats(query_tile, head_dim));
}

cudaError_t RelativeAttention(const RelativeAttentionLaunch& p, cudaStream_t stream) {
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  if (p.num_items == 0) return cudaSuccess;
  cudaError_t err = p.query_tile == kDecodeQueryTile ? LaunchForTile<kDecodeQueryTile>(p, stream)
                                                     : LaunchForTile<kPrefillQueryTile>(p, stream);
  if (err != cudaSuccess || p.num_combines == 0) return err;
  const dim3 grid(static_cast<unsigned>(p.num_combines), static_cast<unsigned>(p.num_heads));
  CombineKernel<<<grid, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t AttentionMass(const RelativeAttentionLaunch& p, int num_seqs, int64_t max_query_len,
                          cudaStream_t stream) {
  if (num_seqs <= 0 || max_query_len <= 0) return cudaSuccess;
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || num_seqs > 65535 || p.rel == nullptr) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(max_query_len), static_cast<unsigned>(p.num_heads),
                  static_cast<unsigned>(num_seqs));
  AttentionMassKernel<<<grid, 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
