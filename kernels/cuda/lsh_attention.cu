// Reformer LSH attention on the GPU (lsh_attention.h): hashing, both sorts, the wavelet-matrix
// window index and the per-query window search; twin of kernels/cpu/lsh_{,call_}attention.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/lsh_attention.h"
#include "kernels/cuda/lsh_window_index.h"
#include "kernels/cuda/ring_slot.cuh"
#include "kernels/cuda/warp_softmax.cuh"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kMaxRounds = 64;
constexpr int kHashThreads = 128;
constexpr int kIndexThreads = 1024;
constexpr int kAttendWarps = 4;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Where each piece of the scratch lies, for n keys and S = H·R (head, round) rows.
struct ScratchLayout {
  size_t buckets, seq, bits, ones, zeros, sorted, bytes;

  ScratchLayout(int64_t n, int64_t segments, int levels) {
    const auto rows = static_cast<size_t>(segments * n);
    const auto words = static_cast<size_t>(segments * levels * LshIndexWords(n));
    buckets = 0;
    seq = buckets + Align256(rows * sizeof(int32_t));
    bits = seq + Align256(2 * rows * sizeof(int32_t));
    ones = bits + Align256(words * sizeof(uint32_t));
    zeros = ones + Align256(words * sizeof(int32_t));
    sorted = zeros + Align256(static_cast<size_t>(segments * levels) * sizeof(int32_t));
    bytes = sorted + Align256(rows * sizeof(int32_t));
  }
};

// The index pieces of one launch, per (head, round) row s.
struct IndexArrays {
  int32_t* buckets;  // [S, n]
  int32_t* seq;      // [2, S, n]: the levels' sequences, ping-pong
  uint32_t* bits;    // [S, L, words]
  int32_t* ones;     // [S, L, words]
  int32_t* zeros;    // [S, L]
  int32_t* sorted;   // [S, n]
  int64_t n;
  int64_t words;
  int levels;
  int segments;

  __device__ LshWindowIndex View(int s) const {
    const int64_t level_words = static_cast<int64_t>(levels) * words;
    return {bits + s * level_words,
            ones + s * level_words,
            zeros + static_cast<int64_t>(s) * levels,
            sorted + s * n,
            buckets + s * n,
            n,
            words,
            levels};
  }
};

IndexArrays Arrays(void* scratch, int64_t n, int segments, int n_buckets) {
  const int levels = LshIndexLevels(n_buckets);
  const ScratchLayout at(n, segments, levels);
  auto* base = static_cast<char*>(scratch);
  return {reinterpret_cast<int32_t*>(base + at.buckets),
          reinterpret_cast<int32_t*>(base + at.seq),
          reinterpret_cast<uint32_t*>(base + at.bits),
          reinterpret_cast<int32_t*>(base + at.ones),
          reinterpret_cast<int32_t*>(base + at.zeros),
          reinterpret_cast<int32_t*>(base + at.sorted),
          n,
          LshIndexWords(n),
          levels,
          segments};
}

// Grid (T, H, R), kHashThreads threads: the bucket of new row i, head h, round r (per factor the
// argmax of [y, −y] over its run of columns, the first maximum on ties, combined as digits), and
// for r = 0 the row's normalised key.
__global__ void HashKernel(LshAttentionLaunch p) {
  const int64_t i = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y), r = static_cast<int>(blockIdx.z);
  const int head_dim = p.head_dim, rounds = p.n_hashes;
  const LshBucketFactors factors = LshResolvedFactors(p.factors, p.n_buckets);
  const int columns = LshRotationColumns(factors, p.n_buckets);
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim,
                head = static_cast<int64_t>(h) * head_dim;
  __shared__ float x[128];
  __shared__ float best_value[kHashThreads / 32];
  __shared__ int best_index[kHashThreads / 32];
  __shared__ float square_sums[kHashThreads / 32];
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  for (int d = tid; d < head_dim; d += blockDim.x) x[d] = p.x[i * p.ldx + head + d];
  __syncthreads();
  if (r == 0) {  // k = x / sqrt(mean(x²) + 1e-6) / sqrt(d_h)
    float sq = 0.0f;
    for (int d = tid; d < head_dim; d += blockDim.x) sq += x[d] * x[d];
    for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(kFullWarpMask, sq, o);
    if (lane == 0) square_sums[warp] = sq;
    __syncthreads();
    float sum = 0.0f;
    for (int k = 0; k < static_cast<int>(blockDim.x / 32); ++k) sum += square_sums[k];
    const float scale = (1.0f / sqrtf(static_cast<float>(head_dim))) /
                        sqrtf(sum / static_cast<float>(head_dim) + 1e-6f);
    for (int d = tid; d < head_dim; d += blockDim.x) p.new_k[i * w + head + d] = x[d] * scale;
  }
  // y_k = Σ_d x_d · rot[h, d, r, k], summed in d order, products and sums rounded apart.
  const float* rot = p.rotations + (static_cast<int64_t>(h) * head_dim * rounds + r) * columns;
  const int64_t ld = static_cast<int64_t>(rounds) * columns;
  int bucket = 0, place = 1, offset = 0;
  for (int f = 0; f < factors.count; ++f) {
    const int half = factors.sizes[f] / 2;
    float value = -INFINITY;
    int index = 2 * half;
    for (int k = tid; k < half; k += blockDim.x) {
      float y = 0.0f;
      for (int d = 0; d < head_dim; ++d) {
        y = __fadd_rn(y, __fmul_rn(x[d], rot[d * ld + offset + k]));
      }
      if (y > value || (y == value && k < index)) {
        value = y;
        index = k;
      }
      if (-y > value || (-y == value && half + k < index)) {
        value = -y;
        index = half + k;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(kFullWarpMask, value, o);
      const int k = __shfl_xor_sync(kFullWarpMask, index, o);
      if (v > value || (v == value && k < index)) {
        value = v;
        index = k;
      }
    }
    if (lane == 0) {
      best_value[warp] = value;
      best_index[warp] = index;
    }
    __syncthreads();
    if (tid == 0) {
      for (int k = 1; k < static_cast<int>(blockDim.x / 32); ++k) {
        if (best_value[k] > value || (best_value[k] == value && best_index[k] < index)) {
          value = best_value[k];
          index = best_index[k];
        }
      }
      // (Only NaN products leave no maximum: digit 0 then, as on the CPU.)
      bucket += place * (index < 2 * half ? index : 0);
      place *= 2 * half;
    }
    offset += half;
    __syncthreads();  // best_value / best_index are reused by the next factor
  }
  if (tid == 0) {
    p.new_bucket[i * p.num_heads * rounds + static_cast<int64_t>(h) * rounds + r] = bucket;
  }
}

// One thread per (key j, row s): row s of the index's buckets, from the ring or the call.
__global__ void GatherKernel(LshAttentionLaunch p, IndexArrays a) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= a.n * a.segments) return;
  const int64_t j = e % a.n, s = e / a.n;
  int32_t b;
  if (j < p.memory_len) {
    b = p.mem_bucket[RingSlot(p.ring_start, j, p.capacity) * a.segments + s];
  } else {
    b = p.new_bucket[(j - p.memory_len) * a.segments + s];
  }
  a.buckets[s * a.n + j] = b;
}

// Grid S, kIndexThreads threads: the wavelet matrix of row s. Level l: the bits of its
// sequence (a ballot per word), the ones before each word (a block scan), and the next level's
// sequence (zeros first, stably).
__global__ void BuildIndexKernel(IndexArrays a) {
  const int s = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int threads = static_cast<int>(blockDim.x), warps = threads / 32;
  const int64_t n = a.n, words = a.words;
  __shared__ int32_t partial[kIndexThreads];
  __shared__ int32_t zeros;
  const int64_t per = (words + threads - 1) / threads;
  for (int l = 0; l < a.levels; ++l) {
    const int shift = a.levels - 1 - l;
    const int32_t* src =
        l == 0 ? a.buckets + s * n : a.seq + ((l - 1) % 2) * a.segments * n + s * n;
    int32_t* dst = a.seq + (l % 2) * a.segments * n + s * n;
    uint32_t* bits = a.bits + (static_cast<int64_t>(s) * a.levels + l) * words;
    int32_t* ones = a.ones + (static_cast<int64_t>(s) * a.levels + l) * words;
    for (int64_t wd = warp; wd < words; wd += warps) {
      const int64_t i = wd * 32 + lane;
      const bool bit = i < n && ((src[i] >> shift) & 1) != 0;
      const uint32_t word = __ballot_sync(kFullWarpMask, bit);
      if (lane == 0) {
        bits[wd] = word;
        ones[wd] = __popc(word);
      }
    }
    __syncthreads();
    // Exclusive scan of the word counts: each thread owns `per` consecutive words.
    const int64_t w0 = tid * per, w1 = w0 + per < words ? w0 + per : words;
    int32_t own = 0;
    for (int64_t wd = w0; wd < w1; ++wd) own += ones[wd];
    partial[tid] = own;
    __syncthreads();
    if (tid == 0) {
      int32_t total = 0;
      for (int k = 0; k < threads; ++k) {
        const int32_t c = partial[k];
        partial[k] = total;
        total += c;
      }
      zeros = static_cast<int32_t>(n) - total;
      a.zeros[static_cast<int64_t>(s) * a.levels + l] = zeros;
    }
    __syncthreads();
    int32_t before = partial[tid];
    for (int64_t wd = w0; wd < w1; ++wd) {
      const int32_t c = ones[wd];
      ones[wd] = before;
      before += c;
    }
    __syncthreads();
    if (l + 1 < a.levels) {
      for (int64_t i = tid; i < n; i += threads) {
        const int32_t v = src[i];
        const uint32_t below = (uint32_t{1} << (i % 32)) - 1u;
        const int64_t r1 = ones[i / 32] + __popc(bits[i / 32] & below);
        dst[((v >> shift) & 1) ? zeros + r1 : i - r1] = v;
      }
    }
    __syncthreads();
  }
}

// One thread per (key j, row s): j's place in the (bucket, index) order.
__global__ void SortKernel(IndexArrays a) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= a.n * a.segments) return;
  const int64_t j = e % a.n;
  const int s = static_cast<int>(e / a.n);
  const LshWindowIndex view = a.View(s);
  a.sorted[s * a.n + view.SortedSlotOf(j)] = static_cast<int32_t>(j);
}

__device__ __forceinline__ const float* KeyRow(const LshAttentionLaunch& p, int64_t j, int64_t w,
                                               bool value) {
  if (j < p.memory_len) {
    return (value ? p.mem_v : p.mem_k) + RingSlot(p.ring_start, j, p.capacity) * w;
  }
  const int64_t i = j - p.memory_len;
  return value ? p.new_v + i * p.ldx : p.new_k + i * w;
}

// Grid (⌈T / kAttendWarps⌉, H), one warp per (query, head).
__global__ void AttendKernel(LshAttentionLaunch p, IndexArrays a) {
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kAttendWarps + warp;
  if (i >= p.query_len) return;  // the whole warp: no block-wide synchronisation below
  const int h = static_cast<int>(blockIdx.y), head_dim = p.head_dim, rounds = p.n_hashes;
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim,
                head = static_cast<int64_t>(h) * head_dim;
  const int64_t self = p.memory_len + i;
  __shared__ float queries[kAttendWarps][128];
  __shared__ LshRoundWindow windows[kAttendWarps][kMaxRounds];
  float* q = queries[warp];
  LshRoundWindow* window = windows[warp];
  for (int d = lane; d < head_dim; d += 32) q[d] = p.x[i * p.ldx + head + d];
  for (int r = lane; r < rounds; r += 32) {
    window[r] = LshQueryWindow(a.View(h * rounds + r), self, p.history, p.chunk_len);
  }
  __syncwarp();
  WarpSoftmax softmax;
  for (int r = 0; r < rounds; ++r) {
    const LshWindowIndex index = a.View(h * rounds + r);
    const LshRoundWindow wr = window[r];
    for (int64_t k0 = wr.lo; k0 < wr.hi; k0 += 32) {
      const int64_t k = k0 + lane;
      bool valid = k < wr.hi && k != wr.rank;
      float score = 0.0f;
      const float* vrow = nullptr;
      if (valid) {
        const int64_t j = index.Select(wr.a, self + 1, k);
        for (int e = 0; e < r && valid; ++e) {  // an earlier round's key counts there
          valid = !LshIsCandidate(a.View(h * rounds + e), window[e], self, j);
        }
        if (valid) {
          const float* krow = KeyRow(p, j, w, false) + head;
          for (int d = 0; d < head_dim; ++d) score += q[d] * krow[d];
          vrow = KeyRow(p, j, w, true) + head;
        }
      }
      softmax.AddTile(valid, score, vrow, head_dim);
    }
  }
  float* out = p.out + i * w + head;
  if (!softmax.empty()) {
    softmax.Write(out, head_dim);
    return;
  }
  const float* own = p.new_v + i * p.ldx + head;  // nothing else in any round: its own value
  for (int d = lane; d < head_dim; d += 32) out[d] = own[d];
}

// Hugging Face's per-call sort ("sort": "call", lsh_call_attention.h): grid (⌈T / kAttendWarps⌉,
// H), one warp per (query, head). The rounds' (bucket, index) orders laid end to end are the
// R·n slots; the query's slot in round r is chunk ⌊slot / c⌋, and it attends to that chunk and
// the one before (cyclically), causally, its own key at logit −1e5. Weighting each round's
// softmax by the softmax of the rounds' log-sum-exps is one softmax over all the rounds' slots
// (a key counted once per slot), so one online softmax runs over them all.
__global__ void CallAttendKernel(LshAttentionLaunch p, IndexArrays a) {
  constexpr float kSelfLogit = -1e5f;  // Hugging Face's self_mask_value (float32)
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kAttendWarps + warp;
  if (i >= p.query_len) return;
  const int h = static_cast<int>(blockIdx.y), head_dim = p.head_dim, rounds = p.n_hashes;
  const int64_t w = static_cast<int64_t>(p.num_heads) * head_dim,
                head = static_cast<int64_t>(h) * head_dim;
  const int64_t self = p.memory_len + i, n = a.n, c = p.chunk_len;
  const int64_t slots = rounds * n, chunks = (slots + c - 1) / c;
  __shared__ float queries[kAttendWarps][128];
  float* q = queries[warp];
  for (int d = lane; d < head_dim; d += 32) q[d] = p.x[i * p.ldx + head + d];
  __syncwarp();
  WarpSoftmax softmax;
  // Scores key j (at or before the query) against the query.
  auto add_tile = [&](bool valid, int64_t j) {
    float score = 0.0f;
    const float* vrow = nullptr;
    if (valid) {
      if (j == self) {
        score = kSelfLogit;
      } else {
        const float* krow = KeyRow(p, j, w, false) + head;
        for (int d = 0; d < head_dim; ++d) score += q[d] * krow[d];
      }
      vrow = KeyRow(p, j, w, true) + head;
    }
    softmax.AddTile(valid, score, vrow, head_dim);
  };
  if (n <= c) {  // Hugging Face's standard path: causal attention over every key
    for (int64_t j0 = 0; j0 <= self; j0 += 32) add_tile(j0 + lane <= self, j0 + lane);
  } else {
    for (int r = 0; r < rounds; ++r) {
      const int64_t chunk = (r * n + a.View(h * rounds + r).SortedSlotOf(self)) / c;
      for (const int64_t k : {(chunk - 1 + chunks) % chunks, chunk}) {
        const int64_t end = (k + 1) * c < slots ? (k + 1) * c : slots;
        for (int64_t s0 = k * c; s0 < end; s0 += 32) {
          const int64_t slot = s0 + lane;
          int64_t j = 0;
          if (slot < end) {
            const int64_t round = slot / n;
            j = a.sorted[(h * rounds + round) * n + slot % n];
          }
          add_tile(slot < end && j <= self, j);
        }
      }
    }
  }
  softmax.Write(p.out + i * w + head, head_dim);
}

unsigned Blocks(int64_t items, int threads) {
  return static_cast<unsigned>((items + threads - 1) / threads);
}

}  // namespace

size_t LshAttentionScratchBytes(int64_t max_keys, int num_heads, int n_hashes, int n_buckets) {
  const ScratchLayout at(max_keys, static_cast<int64_t>(num_heads) * n_hashes,
                         LshIndexLevels(n_buckets));
  return at.bytes;
}

cudaError_t LshAttention(const LshAttentionLaunch& p, cudaStream_t stream) {
  const int64_t t = p.query_len, n = p.memory_len + t;
  if (t <= 0) return cudaSuccess;
  const int64_t segments = static_cast<int64_t>(p.num_heads) * p.n_hashes;
  if (p.head_dim <= 0 || p.head_dim > 128 || p.n_hashes <= 0 || p.n_hashes > kMaxRounds ||
      p.n_buckets < 2 || p.n_buckets % 2 != 0 || p.factors.count < 0 ||
      p.factors.count > LshBucketFactors::kMaxFactors || p.num_heads > 65535 || p.chunk_len <= 0 ||
      p.history <= 0 || t > 2147483647 || n > 2147483647 || segments > 2147483647 / n) {
    return cudaErrorInvalidValue;
  }
  const IndexArrays a = Arrays(p.scratch, n, static_cast<int>(segments), p.n_buckets);
  const LshBucketFactors factors = LshResolvedFactors(p.factors, p.n_buckets);
  int half = 0;  // the widest run of columns one argmax spans
  for (int f = 0; f < factors.count; ++f) half = std::max(half, factors.sizes[f] / 2);
  const int hash_threads = half >= kHashThreads ? kHashThreads : (half + 31) / 32 * 32;
  HashKernel<<<dim3(static_cast<unsigned>(t), static_cast<unsigned>(p.num_heads),
                    static_cast<unsigned>(p.n_hashes)),
               hash_threads, 0, stream>>>(p);
  GatherKernel<<<Blocks(n * segments, 256), 256, 0, stream>>>(p, a);
  BuildIndexKernel<<<static_cast<unsigned>(segments), kIndexThreads, 0, stream>>>(a);
  SortKernel<<<Blocks(n * segments, 256), 256, 0, stream>>>(a);
  const dim3 grid(Blocks(t, kAttendWarps), static_cast<unsigned>(p.num_heads));
  if (p.call_sort) {
    CallAttendKernel<<<grid, 32 * kAttendWarps, 0, stream>>>(p, a);
  } else {
    AttendKernel<<<grid, 32 * kAttendWarps, 0, stream>>>(p, a);
  }
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
