// CSR and 2:4 products y = x·Wᵀ (+ bias). Decode (n = 1) streams each sparse array once with a
// few independent f32 accumulators per output row (AVX2 gathers / permutes with software
// prefetch when the CPU has them, a scalar loop otherwise); n > 1 first packs x into tiles of kTile
// rows laid out column-major ([cols, kTile]), so each nonzero is read once per tile and multiplies
// a contiguous kTile-wide vector of x values.
#include "kernels/cpu/sparse_matmul.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define MNEMO_SPARSE_AVX2 1
#endif

// Not under sanitizers: ifunc resolvers run before the sanitizer runtime is initialised.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && \
    !defined(__clang__)
#define MNEMO_MULTIVERSION __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define MNEMO_MULTIVERSION
#endif

namespace mnemo::kernels {
namespace {

// Below about this many multiply-adds a product runs on the calling thread: waking workers
// costs more than the work.
constexpr int64_t kMinParallelWork = int64_t{1} << 15;
// The fixed cost of an output row (loop overhead, the store, the bias), counted in nonzeros when
// CSR rows are split between threads.
constexpr int64_t kRowCost = 8;
// x rows multiplied per pass over a weight row when n > 1: 8 floats, one AVX register.
constexpr int64_t kTile = 8;
constexpr int64_t kMaxCol16 = 65536;

// ---- CSR ----------------------------------------------------------------------------------------

// Rows [r0, r1) for n = 1: x [cols], y [rows]. Four accumulators hide the add latency.
template <typename Col>
inline __attribute__((always_inline)) void CsrDecodeImpl(const int64_t* row_start, const Col* col,
                                                         const float* values, const float* x,
                                                         const float* bias, float* y, int64_t r0,
                                                         int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    const int64_t begin = row_start[o], len = row_start[o + 1] - begin;
    const float* v = values + begin;
    const Col* c = col + begin;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    int64_t k = 0;
    for (; k + 4 <= len; k += 4) {
      a0 += v[k] * x[c[k]];
      a1 += v[k + 1] * x[c[k + 1]];
      a2 += v[k + 2] * x[c[k + 2]];
      a3 += v[k + 3] * x[c[k + 3]];
    }
    for (; k < len; ++k) a0 += v[k] * x[c[k]];
    const float sum = (a0 + a1) + (a2 + a3);
    y[o] = bias != nullptr ? sum + bias[o] : sum;
  }
}

// Rows [r0, r1) for n > 1: xt [tiles, cols, kTile] (packed x, zero rows past n), y [n, ldy].
// Two accumulator tiles (even and odd nonzeros) hide the multiply-add latency.
template <typename Col>
inline __attribute__((always_inline)) void CsrTiledImpl(const int64_t* row_start, const Col* col,
                                                        const float* values, const float* xt,
                                                        int64_t cols, int64_t n, const float* bias,
                                                        float* y, int64_t ldy, int64_t r0,
                                                        int64_t r1) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  for (int64_t o = r0; o < r1; ++o) {
    const int64_t begin = row_start[o], end = row_start[o + 1];
    const float b = bias != nullptr ? bias[o] : 0.0f;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const float* xp = xt + tile * cols * kTile;
      float acc0[kTile] = {}, acc1[kTile] = {};
      int64_t k = begin;
      for (; k + 2 <= end; k += 2) {
        const float v0 = values[k], v1 = values[k + 1];
        const float* x0 = xp + static_cast<int64_t>(col[k]) * kTile;
        const float* x1 = xp + static_cast<int64_t>(col[k + 1]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) {
          acc0[t] += v0 * x0[t];
          acc1[t] += v1 * x1[t];
        }
      }
      if (k < end) {
        const float v0 = values[k];
        const float* x0 = xp + static_cast<int64_t>(col[k]) * kTile;
        for (int64_t t = 0; t < kTile; ++t) acc0[t] += v0 * x0[t];
      }
      const int64_t here = std::min(kTile, n - tile * kTile);
      float* yp = y + tile * kTile * ldy + o;
      for (int64_t t = 0; t < here; ++t) yp[t * ldy] = (acc0[t] + acc1[t]) + b;
    }
  }
}

MNEMO_MULTIVERSION void CsrDecode16(const int64_t* row_start, const uint16_t* col,
                                    const float* values, const float* x, const float* bias,
                                    float* y, int64_t r0, int64_t r1) {
  CsrDecodeImpl(row_start, col, values, x, bias, y, r0, r1);
}
MNEMO_MULTIVERSION void CsrDecode32(const int64_t* row_start, const int32_t* col,
                                    const float* values, const float* x, const float* bias,
                                    float* y, int64_t r0, int64_t r1) {
  CsrDecodeImpl(row_start, col, values, x, bias, y, r0, r1);
}
MNEMO_MULTIVERSION void CsrTiled16(const int64_t* row_start, const uint16_t* col,
                                   const float* values, const float* xt, int64_t cols, int64_t n,
                                   const float* bias, float* y, int64_t ldy, int64_t r0,
                                   int64_t r1) {
  CsrTiledImpl(row_start, col, values, xt, cols, n, bias, y, ldy, r0, r1);
}
MNEMO_MULTIVERSION void CsrTiled32(const int64_t* row_start, const int32_t* col,
                                   const float* values, const float* xt, int64_t cols, int64_t n,
                                   const float* bias, float* y, int64_t ldy, int64_t r0,
                                   int64_t r1) {
  CsrTiledImpl(row_start, col, values, xt, cols, n, bias, y, ldy, r0, r1);
}

// ---- 2:4 ----------------------------------------------------------------------------------------

// Rows [r0, r1) for n = 1: values [rows, cols/2], meta [rows, cols/4], x [cols], y [rows]. Two
// groups per iteration, one accumulator per kept value.
MNEMO_MULTIVERSION void Sparse24Decode(const float* values, const uint8_t* meta, int64_t cols,
                                       const float* x, const float* bias, float* y, int64_t r0,
                                       int64_t r1) {
  const int64_t groups = cols / 4;
  for (int64_t o = r0; o < r1; ++o) {
    const float* v = values + o * (cols / 2);
    const uint8_t* m = meta + o * groups;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
      const float* xg = x + 4 * g;
      const unsigned m0 = m[g], m1 = m[g + 1];
      a0 += v[2 * g] * xg[m0 & 3u];
      a1 += v[2 * g + 1] * xg[(m0 >> 2) & 3u];
      a2 += v[2 * g + 2] * xg[4 + (m1 & 3u)];
      a3 += v[2 * g + 3] * xg[4 + ((m1 >> 2) & 3u)];
    }
    if (g < groups) {
      const float* xg = x + 4 * g;
      const unsigned m0 = m[g];
      a0 += v[2 * g] * xg[m0 & 3u];
      a1 += v[2 * g + 1] * xg[(m0 >> 2) & 3u];
    }
    const float sum = (a0 + a1) + (a2 + a3);
    y[o] = bias != nullptr ? sum + bias[o] : sum;
  }
}

// Rows [r0, r1) for n > 1: xt [tiles, cols, kTile] as for CSR, y [n, ldy].
MNEMO_MULTIVERSION void Sparse24Tiled(const float* values, const uint8_t* meta, int64_t cols,
                                      const float* xt, int64_t n, const float* bias, float* y,
                                      int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t groups = cols / 4;
  const int64_t tiles = (n + kTile - 1) / kTile;
  for (int64_t o = r0; o < r1; ++o) {
    const float* v = values + o * (cols / 2);
    const uint8_t* m = meta + o * groups;
    const float b = bias != nullptr ? bias[o] : 0.0f;
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const float* xp = xt + tile * cols * kTile;
      float acc0[kTile] = {}, acc1[kTile] = {};
      for (int64_t g = 0; g < groups; ++g) {
        const unsigned mg = m[g];
        const float v0 = v[2 * g], v1 = v[2 * g + 1];
        const float* x0 = xp + (4 * g + (mg & 3u)) * kTile;
        const float* x1 = xp + (4 * g + ((mg >> 2) & 3u)) * kTile;
        for (int64_t t = 0; t < kTile; ++t) {
          acc0[t] += v0 * x0[t];
          acc1[t] += v1 * x1[t];
        }
      }
      const int64_t here = std::min(kTile, n - tile * kTile);
      float* yp = y + tile * kTile * ldy + o;
      for (int64_t t = 0; t < here; ++t) yp[t * ldy] = (acc0[t] + acc1[t]) + b;
    }
  }
}

// ---- AVX2 decode paths (chosen at run time) -----------------------------------------------------
// The scalar decode loops above are limited by one load-index-load chain per nonzero (about half
// the memory bandwidth); these gather eight x values per instruction (CSR) or pick them out of
// contiguous x with in-register permutes (2:4), so n = 1 runs at the speed of the weight stream.
#ifdef MNEMO_SPARSE_AVX2

// How far ahead of the loads the weight streams are prefetched, in elements (the hardware
// prefetchers alone keep fewer lines in flight for two or three streams than for one).
constexpr int64_t kPrefetchFloats = 512;

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256i LoadCols(const uint16_t* c) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
}
__attribute__((target("avx2,fma"))) inline __m256i LoadCols(const int32_t* c) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
}

template <typename Col>
__attribute__((target("avx2,fma"))) void CsrDecodeAvx2(const int64_t* row_start, const Col* col,
                                                       const float* values, const float* x,
                                                       const float* bias, float* y, int64_t r0,
                                                       int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    const int64_t begin = row_start[o], len = row_start[o + 1] - begin;
    const float* v = values + begin;
    const Col* c = col + begin;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(v + k + kPrefetchFloats), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + k + kPrefetchFloats), _MM_HINT_T0);
      acc0 =
          _mm256_fmadd_ps(_mm256_loadu_ps(v + k), _mm256_i32gather_ps(x, LoadCols(c + k), 4), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + k + 8),
                             _mm256_i32gather_ps(x, LoadCols(c + k + 8), 4), acc1);
    }
    if (k + 8 <= len) {
      acc0 =
          _mm256_fmadd_ps(_mm256_loadu_ps(v + k), _mm256_i32gather_ps(x, LoadCols(c + k), 4), acc0);
      k += 8;
    }
    float sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
    for (; k < len; ++k) sum += v[k] * x[c[k]];
    y[o] = bias != nullptr ? sum + bias[o] : sum;
  }
}

// Four groups at a time: their 8 kept values are one vector; the 8 matching x values come from
// the 16 contiguous x of those groups, as two 8-wide loads each permuted by the in-group indices
// (lane j takes group j/2's index j%2, offset 4 for the second group of each load) and blended.
__attribute__((target("avx2,fma"))) void Sparse24DecodeAvx2(const float* values,
                                                            const uint8_t* meta, int64_t cols,
                                                            const float* x, const float* bias,
                                                            float* y, int64_t r0, int64_t r1) {
  const int64_t groups = cols / 4;
  const __m256i shifts = _mm256_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26);
  const __m256i three = _mm256_set1_epi32(3);
  const __m256i offsets = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
  auto four_groups = [&](const float* v, const uint8_t* m, const float* xg, __m256 acc)
      __attribute__((target("avx2,fma"))) {
    uint32_t m4;
    std::memcpy(&m4, m, sizeof(m4));
    const __m256i index = _mm256_add_epi32(
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(m4)), shifts), three),
        offsets);
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xg), index);
    const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xg + 8), index);
    return _mm256_fmadd_ps(_mm256_loadu_ps(v), _mm256_blend_ps(lo, hi, 0xF0), acc);
  };
  for (int64_t o = r0; o < r1; ++o) {
    const float* v = values + o * (cols / 2);
    const uint8_t* m = meta + o * groups;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(v + 2 * g + kPrefetchFloats), _MM_HINT_T0);
      if (g % 64 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(m + g + kPrefetchFloats), _MM_HINT_T0);
      acc0 = four_groups(v + 2 * g, m + g, x + 4 * g, acc0);
      acc1 = four_groups(v + 2 * g + 8, m + g + 4, x + 4 * g + 16, acc1);
    }
    if (g + 4 <= groups) {
      acc0 = four_groups(v + 2 * g, m + g, x + 4 * g, acc0);
      g += 4;
    }
    float sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
    for (; g < groups; ++g) {
      const unsigned mg = m[g];
      sum += v[2 * g] * x[4 * g + (mg & 3u)] + v[2 * g + 1] * x[4 * g + ((mg >> 2) & 3u)];
    }
    y[o] = bias != nullptr ? sum + bias[o] : sum;
  }
}

#endif  // MNEMO_SPARSE_AVX2

// ---- dispatch -----------------------------------------------------------------------------------

void CsrDecode(const int64_t* row_start, const uint16_t* col, const float* values, const float* x,
               const float* bias, float* y, int64_t r0, int64_t r1) {
#ifdef MNEMO_SPARSE_AVX2
  if (HasAvx2()) return CsrDecodeAvx2(row_start, col, values, x, bias, y, r0, r1);
#endif
  CsrDecode16(row_start, col, values, x, bias, y, r0, r1);
}
void CsrDecode(const int64_t* row_start, const int32_t* col, const float* values, const float* x,
               const float* bias, float* y, int64_t r0, int64_t r1) {
#ifdef MNEMO_SPARSE_AVX2
  if (HasAvx2()) return CsrDecodeAvx2(row_start, col, values, x, bias, y, r0, r1);
#endif
  CsrDecode32(row_start, col, values, x, bias, y, r0, r1);
}
void Sparse24DecodeAny(const float* values, const uint8_t* meta, int64_t cols, const float* x,
                       const float* bias, float* y, int64_t r0, int64_t r1) {
#ifdef MNEMO_SPARSE_AVX2
  if (HasAvx2()) return Sparse24DecodeAvx2(values, meta, cols, x, bias, y, r0, r1);
#endif
  Sparse24Decode(values, meta, cols, x, bias, y, r0, r1);
}

// ---- shared -------------------------------------------------------------------------------------

// x [n, ldx] → [tiles, cols, kTile] with xt[tile][k][t] = x[tile·kTile + t][k], zero past row n.
std::vector<float> PackTiles(const float* x, int64_t n, int64_t ldx, int64_t cols) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  std::vector<float> xt(static_cast<size_t>(tiles * cols * kTile), 0.0f);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    float* dst = xt.data() + tile * cols * kTile;
    const int64_t here = std::min(kTile, n - tile * kTile);
    for (int64_t t = 0; t < here; ++t) {
      const float* src = x + (tile * kTile + t) * ldx;
      for (int64_t k = 0; k < cols; ++k) dst[k * kTile + t] = src[k];
    }
  }
  return xt;
}

// y[i, o] = bias[o] or 0 for every i < n, o < rows: the product with no columns.
void FillBias(const float* bias, int64_t rows, int64_t n, float* y, int64_t ldy) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < rows; ++o) y[i * ldy + o] = bias != nullptr ? bias[o] : 0.0f;
  }
}

}  // namespace

size_t CsrMatrix::bytes() const {
  return row_start.size() * sizeof(int64_t) + col16.size() * sizeof(uint16_t) +
         col32.size() * sizeof(int32_t) + values.size() * sizeof(float);
}

size_t Sparse24Matrix::bytes() const {
  return values.size() * sizeof(float) + meta.size() * sizeof(uint8_t);
}

CsrMatrix ToCsr(const float* w, int64_t rows, int64_t cols) {
  CsrMatrix out;
  out.rows = rows;
  out.cols = cols;
  out.row_start.assign(static_cast<size_t>(rows + 1), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t count = 0;
    for (int64_t k = 0; k < cols; ++k) count += w[r * cols + k] != 0.0f;
    out.row_start[r + 1] = out.row_start[r] + count;
  }
  const auto nnz = static_cast<size_t>(out.row_start[rows]);
  const bool wide = cols > kMaxCol16;
  out.values.reserve(nnz);
  if (wide) {
    out.col32.reserve(nnz);
  } else {
    out.col16.reserve(nnz);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; ++k) {
      const float v = w[r * cols + k];
      if (v == 0.0f) continue;
      out.values.push_back(v);
      if (wide) {
        out.col32.push_back(static_cast<int32_t>(k));
      } else {
        out.col16.push_back(static_cast<uint16_t>(k));
      }
    }
  }
  return out;
}

bool Is24Sparse(const float* w, int64_t rows, int64_t cols) {
  if (cols % 4 != 0) return false;
  for (int64_t i = 0; i < rows * cols; i += 4) {
    const int count = (w[i] != 0.0f) + (w[i + 1] != 0.0f) + (w[i + 2] != 0.0f) + (w[i + 3] != 0.0f);
    if (count > 2) return false;
  }
  return true;
}

Sparse24Matrix To24(const float* w, int64_t rows, int64_t cols) {
  assert(Is24Sparse(w, rows, cols));
  Sparse24Matrix out;
  out.rows = rows;
  out.cols = cols;
  const int64_t groups = rows * (cols / 4);
  out.values.assign(static_cast<size_t>(2 * groups), 0.0f);
  out.meta.assign(static_cast<size_t>(groups), 0);
  for (int64_t g = 0; g < groups; ++g) {
    const float* wg = w + 4 * g;  // groups never straddle rows: cols is a multiple of 4
    unsigned index[2] = {0, 1};
    float value[2] = {0.0f, 0.0f};
    int count = 0;
    for (unsigned j = 0; j < 4 && count < 2; ++j) {
      if (wg[j] == 0.0f) continue;
      index[count] = j;
      value[count] = wg[j];
      ++count;
    }
    if (count == 1 && index[0] != 0) {
      // Pad with a zero at index 0, in front, so the indices still ascend.
      index[1] = index[0];
      value[1] = value[0];
      index[0] = 0;
      value[0] = 0.0f;
    } else if (count == 1) {
      index[1] = 1;
    }
    out.values[2 * g] = value[0];
    out.values[2 * g + 1] = value[1];
    out.meta[g] = static_cast<uint8_t>(index[0] | (index[1] << 2));
  }
  return out;
}

void CsrMatmul(const CsrMatrix& w, const float* x, int64_t n, int64_t ldx, const float* bias,
               float* y, int64_t ldy, ThreadPool& pool) {
  if (n <= 0 || w.rows <= 0) return;
  if (w.cols == 0) return FillBias(bias, w.rows, n, y, ldy);
  // Split rows into blocks of about equal cost, cost(r) = nonzeros before r + kRowCost·r.
  const int64_t* row_start = w.row_start.data();
  const int64_t total = w.nnz() + kRowCost * w.rows;
  const int64_t parts = std::clamp<int64_t>(total * n / kMinParallelWork, 1, pool.max_chunks());
  std::vector<int64_t> bounds(static_cast<size_t>(parts + 1), w.rows);
  bounds[0] = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    int64_t lo = bounds[p - 1], hi = w.rows;  // first r in [lo, hi] with cost(r) ≥ target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (row_start[mid] + kRowCost * mid < target) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    bounds[p] = lo;
  }
  const bool wide = w.cols > kMaxCol16;
  const float* values = w.values.data();
  std::vector<float> xt;
  if (n > 1) xt = PackTiles(x, n, ldx, w.cols);
  pool.ParallelFor(parts, 1, [&](int64_t p0, int64_t p1) {
    const int64_t r0 = bounds[p0], r1 = bounds[p1];
    if (n == 1 && wide) {
      CsrDecode(row_start, w.col32.data(), values, x, bias, y, r0, r1);
    } else if (n == 1) {
      CsrDecode(row_start, w.col16.data(), values, x, bias, y, r0, r1);
    } else if (wide) {
      CsrTiled32(row_start, w.col32.data(), values, xt.data(), w.cols, n, bias, y, ldy, r0, r1);
    } else {
      CsrTiled16(row_start, w.col16.data(), values, xt.data(), w.cols, n, bias, y, ldy, r0, r1);
    }
  });
}

void Sparse24Matmul(const Sparse24Matrix& w, const float* x, int64_t n, int64_t ldx,
                    const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  if (n <= 0 || w.rows <= 0) return;
  if (w.cols == 0) return FillBias(bias, w.rows, n, y, ldy);
  const int64_t row_work = (w.cols / 2 + kRowCost) * n;
  const int64_t min_rows = std::max<int64_t>(1, kMinParallelWork / row_work);
  std::vector<float> xt;
  if (n > 1) xt = PackTiles(x, n, ldx, w.cols);
  pool.ParallelFor(w.rows, min_rows, [&](int64_t r0, int64_t r1) {
    if (n == 1) {
      Sparse24DecodeAny(w.values.data(), w.meta.data(), w.cols, x, bias, y, r0, r1);
    } else {
      Sparse24Tiled(w.values.data(), w.meta.data(), w.cols, xt.data(), n, bias, y, ldy, r0, r1);
    }
  });
}

}  // namespace mnemo::kernels
