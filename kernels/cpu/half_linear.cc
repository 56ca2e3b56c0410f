// 16-bit weight products (half_linear.h): a decode kernel per instruction set (on float32 weights
// too), widened tiles + sgemm for prefill.
#include "kernels/cpu/half_linear.h"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/blas.h"

namespace mnemo::kernels {

namespace {

// How a weight of each type is stored.
template <WeightType T>
using Elem = std::conditional_t<T == WeightType::kF32, float, uint16_t>;

// Weight columns widened at a time for sgemm: 128 rows of `in` floats stay within a core's L2
// (1 MiB at in = 2048) while sgemm still gets a wide enough product.
constexpr int64_t kTileCols = 128;
// Activation rows the decode kernel carries at once: eight on AVX-512, four on AVX2 (each with a
// pair of accumulators there: 8 of its 16 vector registers). Up to that many rows read each
// weight row once.
constexpr int kRowGroupAvx512 = 8;
constexpr int kRowGroupAvx2 = 4;

// Weight rows the AVX-512 kernel reads side by side for a group of R activation rows. One row at a
// time leaves too few reads in flight for a core to reach the memory's bandwidth: on Mistral 7B's
// layer products (bf16, 2 threads of the 2-vCPU Xeon, 30 GB/s) one row read 19 GB/s, four 25,
// eight 25–29 with the prefetch below. Registers bound it: R·NR accumulators, NR weight vectors
// and R activation vectors within 32. Groups of 5–8 rows (batched decode) read 3, not 2: 32 rows
// of float32 products alone, 70 → 76 GFLOP/s at in = 512, 58 → 69 at in = 2048 (one thread).
constexpr int WeightRowsAvx512(int rows) { return rows <= 2 ? 8 : rows <= 4 ? 4 : 3; }

// Contiguous weight rows are also prefetched ahead of the reads, in one of two ways chosen by CPU
// (NextTilePrefetch):
// - Intel: each row this many elements (bytes × 2) ahead, into L1. On the products above
//   25 → 27–29 GB/s with four or eight rows (256–768 bytes measured alike).
// - AMD: the next tile's rows, one line per row per step, into L2. Zen 4's prefetchers follow
//   eight interleaved rows of 1–2 KB poorly (the 12-layer model's rows): with the row-ahead
//   prefetch one session's bf16 decode read 15 GB/s where one row at a time reads 29 (2 threads,
//   in = 512), and 27 with the next tile asked for instead (also beside the row-ahead prefetch:
//   23). One session's decode of the 12-layer model: bf16 125 → 175 tok/s, f32 79 → 102.
constexpr int64_t kPrefetchAhead = 256;

// The decode kernel runs over panels of this many weight rows (a multiple of every
// WeightRowsAvx512), each against every group of activation rows in turn: the panel stays in the
// core's cache for the groups after the first (24 rows of 4096 bf16 weights: 192 KiB).
constexpr int64_t kPanelRows = 24;

// Rows apart (not contiguous: the keys of one attention head) the hardware prefetchers follow
// poorly, so the decode kernel asks for the next panel's rows before each panel: +28% tokens/s for
// 32 sessions' bf16 memory in one step (16 rows ahead measured better than 8).
constexpr int64_t kPrefetchRows = kPanelRows;

// Whether contiguous weight rows are prefetched a tile ahead (kPrefetchAhead above).
bool NextTilePrefetch() {
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd");
  }();
  return amd;
}

// Asks for every line of a row of n elements: kLocality 3 into L1 (prefetcht0), 2 into L2
// (prefetcht1).
template <int kLocality, typename E>
inline void PrefetchRow(const E* row, int64_t n) {
  const auto* bytes = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(E)); b += 64) {
    __builtin_prefetch(bytes + b, 0, kLocality);
  }
}

// The attention head kernels (HeadDots, HeadRowSums) ask for the row this many rows ahead into
// L2 before reading each row. Each block of 64 key rows is a new stream (another session's ring,
// or the same ring's values); 32 sessions' bf16 attention alone, 12 layers (Zen 4, 2 threads):
// 28 → 22.5 ms a step (medians of six; 16 rows ahead alike, 4 less, into L1 slower than none).
constexpr int64_t kHeadRowsAhead = 8;

// One weight, widened exactly (kernels/ depends on no project library, so not base/dtype.h's).
float Widen(uint16_t h, WeightType type) {
  if (type == WeightType::kBF16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero and subnormals
  } else if (exponent == 0x1f) {
    magnitude = mantissa == 0 ? INFINITY : NAN;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 0x400), exponent - 25);
  }
  return (h & 0x8000) != 0 ? -magnitude : magnitude;
}

// ---- plain C++ ----

void GemvScalar(const float* x, int64_t ldx, const uint16_t* w, int64_t ldw, WeightType type,
                const float* bias, float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  for (int64_t o = 0; o < out; ++o) {
    const uint16_t* wr = w + o * ldw;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * ldx;
      float sum = 0.0f;
      for (int64_t i = 0; i < in; ++i) sum += Widen(wr[i], type) * xr[i];
      y[r * ldy + o] = sum + (bias != nullptr ? bias[o] : 0.0f);
    }
  }
}

void WidenScalar(const uint16_t* src, WeightType type, float scale, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Widen(src[i], type) * scale;
}

void RowSumScalar(const float* p, const uint16_t* w, int64_t ldw, WeightType type, int64_t n,
                  int64_t cols, float* y) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < cols; ++c) y[c] += p[r] * Widen(w[r * ldw + c], type);
  }
}

// ---- AVX2 + FMA + F16C: 8 lanes ----

template <WeightType T>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (T == WeightType::kBF16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R rows of x against every weight row: each weight vector is widened once for all R rows.
template <WeightType T, int R>
__attribute__((target("avx2,fma,f16c"))) void GemvAvx2(const float* x, int64_t ldx,
                                                       const uint16_t* w, int64_t ldw,
                                                       const float* bias, float* y, int64_t ldy,
                                                       int64_t in, int64_t out) {
  const int64_t pairs = in / 16 * 16, singles = in / 8 * 8;
  for (int64_t o = 0; o < out; ++o) {
    const uint16_t* wr = w + o * ldw;
    __m256 a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i < pairs; i += 16) {  // two independent chains per row hide the FMA latency
      const __m256 w0 = Widen8<T>(wr + i), w1 = Widen8<T>(wr + i + 8);
      for (int r = 0; r < R; ++r) {
        a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * ldx + i), a0[r]);
        a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + r * ldx + i + 8), a1[r]);
      }
    }
    for (; i < singles; i += 8) {
      const __m256 w0 = Widen8<T>(wr + i);
      for (int r = 0; r < R; ++r) {
        a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * ldx + i), a0[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float sum = Sum8(_mm256_add_ps(a0[r], a1[r]));
      for (int64_t j = i; j < in; ++j) sum += Widen(wr[j], T) * x[r * ldx + j];
      y[r * ldy + o] = sum + (bias != nullptr ? bias[o] : 0.0f);
    }
  }
}

// y[c] += Σ_r p[r]·w[r, c]: 32 columns at a time in four accumulators, each 16-bit row read once.
template <WeightType T>
__attribute__((target("avx2,fma,f16c"))) void RowSumAvx2(const float* p, const uint16_t* w,
                                                         int64_t ldw, int64_t n, int64_t cols,
                                                         float* y) {
  int64_t c0 = 0;
  for (; c0 + 32 <= cols; c0 += 32) {
    __m256 a[4];
    for (int k = 0; k < 4; ++k) a[k] = _mm256_loadu_ps(y + c0 + 8 * k);
    for (int64_t r = 0; r < n; ++r) {
      const __m256 pr = _mm256_set1_ps(p[r]);
      for (int k = 0; k < 4; ++k) {
        a[k] = _mm256_fmadd_ps(pr, Widen8<T>(w + r * ldw + c0 + 8 * k), a[k]);
      }
    }
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + c0 + 8 * k, a[k]);
  }
  for (; c0 + 8 <= cols; c0 += 8) {
    __m256 a = _mm256_loadu_ps(y + c0);
    for (int64_t r = 0; r < n; ++r) {
      a = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), Widen8<T>(w + r * ldw + c0), a);
    }
    _mm256_storeu_ps(y + c0, a);
  }
  if (c0 < cols) RowSumScalar(p, w + c0, ldw, T, n, cols - c0, y + c0);
}

template <WeightType T>
__attribute__((target("avx2,fma,f16c"))) void WidenAvx2(const uint16_t* src, float scale,
                                                        float* dst, int64_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(Widen8<T>(src + i), s));
  for (; i < n; ++i) dst[i] = Widen(src[i], T) * scale;
}

// ---- AVX-512 (F, BW, VL): 16 lanes, masked tails ----

// GCC 12's AVX-512 intrinsics self-initialise an "undefined" operand, which -Wmaybe-uninitialized
// and -Wuninitialized report wherever they are inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define MNEMO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

template <WeightType T>
MNEMO_AVX512 inline __m512 Widen16(__m256i h) {
  if constexpr (T == WeightType::kBF16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(h);
  }
}

// 16 weights from `p` as float32: loaded as they are (kF32) or widened (kBF16, kF16).
template <WeightType T>
MNEMO_AVX512 inline __m512 Load16(const Elem<T>* p) {
  if constexpr (T == WeightType::kF32) {
    return _mm512_loadu_ps(p);
  } else {
    return Widen16<T>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

template <WeightType T>
MNEMO_AVX512 inline __m512 LoadMasked16(const Elem<T>* p, __mmask16 m) {
  if constexpr (T == WeightType::kF32) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    return Widen16<T>(_mm256_maskz_loadu_epi16(m, p));
  }
}

// Lane k: the sum of v[k]'s 16 lanes. The 16 sums share each level of one tree of adds (lanes
// i and i + 8, then i + 4, i + 2, i + 1, as _mm512_reduce_add_ps adds them one vector at a time)
// through 15 vector adds and their shuffles instead of 16 × 4, so every sum is the same whatever
// vectors sit beside it.
MNEMO_AVX512 inline __attribute__((always_inline)) __m512 SumLanes16(const __m512 (&v)[16]) {
  __m512 s[8], t[4], u[2];
  for (int k = 0; k < 8; ++k) {  // 256-bit halves: s[k] holds v[2k]'s 8 sums, then v[2k + 1]'s
    s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int k = 0; k < 4; ++k) {  // 128-bit halves: 128-bit block b of t[k] holds v[4k + b]'s 4
    t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int k = 0; k < 2; ++k) {  // lanes 0 + 2 and 1 + 3 of each block
    u[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane 4b + m of r holds the sum of v[4m + b].
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, r);
}

// One step of 16 columns (the masked tail when `m` is not all ones) for R activation rows
// against NR weight rows `ldw` apart: one accumulator per pair, so the order of each sum depends
// on neither R nor NR and a batch computes what single rows do, bit for bit.
template <WeightType T, int R, int NR, bool kMasked>
MNEMO_AVX512 inline __attribute__((always_inline)) void TileStepAvx512(const float* x, int64_t ldx,
                                                                       const Elem<T>* w,
                                                                       int64_t ldw, int64_t i,
                                                                       __mmask16 m,
                                                                       __m512 (&acc)[R][NR]) {
  __m512 wv[NR];
  for (int j = 0; j < NR; ++j) {
    wv[j] = kMasked ? LoadMasked16<T>(w + j * ldw + i, m) : Load16<T>(w + j * ldw + i);
  }
  for (int r = 0; r < R; ++r) {
    __m512 xv =
        kMasked ? _mm512_maskz_loadu_ps(m, x + r * ldx + i) : _mm512_loadu_ps(x + r * ldx + i);
    // Keeps the activations in a register: GCC otherwise folds the load into each of the NR
    // multiply-adds, NR loads where one does. On a Zen 4 core, 8 rows × 3 weight rows with the
    // data in L2: f32 67–71 → 93–95 GFLOP/s, bf16 76–82 → 93 (in = 512).
    asm("" : "+v"(xv));
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_fmadd_ps(wv[j], xv, acc[r][j]);
  }
}

// Before the step of 32 columns at `i` over NR contiguous weight rows `ldw` apart: asks for the
// lines the next steps read (kPrefetchAhead, NextTilePrefetch).
template <int NR, typename E>
MNEMO_AVX512 inline __attribute__((always_inline)) void PrefetchTileStep(const E* w, int64_t ldw,
                                                                         int64_t i,
                                                                         bool next_tile) {
  constexpr int64_t kStepBytes = 32 * static_cast<int64_t>(sizeof(E));  // per row
  // The next tile's rows follow this tile's: its lines in order, NR of them a step, so the whole
  // tile has been asked for when this one ends (past the last tile: a harmless miss).
  const auto* next = reinterpret_cast<const char*>(w + NR * ldw);
  for (int j = 0; j < NR; ++j) {
    for (int64_t b = 0; b < kStepBytes; b += 64) {
      if (next_tile) {
        _mm_prefetch(next + (i / 32 * NR + j) * kStepBytes + b, _MM_HINT_T1);
      } else {
        _mm_prefetch(reinterpret_cast<const char*>(w + j * ldw + i + kPrefetchAhead) + b,
                     _MM_HINT_T0);
      }
    }
  }
}

// y[r, j] = the sum of acc[r][j]'s lanes (+ bias[j]), 16 accumulators at a time (zeros pad the
// last sixteen).
template <int R, int NR>
MNEMO_AVX512 inline __attribute__((always_inline)) void StoreTileSums(const __m512 (&acc)[R][NR],
                                                                      const float* bias, float* y,
                                                                      int64_t ldy) {
  constexpr int kAcc = R * NR, kChunks = (kAcc + 15) / 16;
  alignas(64) float sums[kChunks * 16];
  for (int c = 0; c < kChunks; ++c) {
    __m512 v[16];
    for (int k = 0; k < 16; ++k) {
      const int a = c * 16 + k;
      v[k] = a < kAcc ? acc[a / NR][a % NR] : _mm512_setzero_ps();
    }
    _mm512_store_ps(sums + c * 16, SumLanes16(v));
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < NR; ++j) {
      y[r * ldy + j] = sums[r * NR + j] + (bias != nullptr ? bias[j] : 0.0f);
    }
  }
}

// y[r, j] = Σ_i x[r, i] · w[j, i] (+ bias[j]) for r < R, j < NR.
template <WeightType T, int R, int NR>
MNEMO_AVX512 void TileAvx512(const float* x, int64_t ldx, const Elem<T>* w, int64_t ldw,
                             const float* bias, float* y, int64_t ldy, int64_t in) {
  __m512 acc[R][NR];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const int64_t pairs = in / 32 * 32, singles = in / 16 * 16;
  int64_t i = 0;
  if (ldw == in) {  // rows one after another: prefetch ahead (every line of 32 columns)
    const bool next_tile = NextTilePrefetch();
    for (; i < pairs; i += 32) {
      PrefetchTileStep<NR>(w, ldw, i, next_tile);
      TileStepAvx512<T, R, NR, false>(x, ldx, w, ldw, i, 0xffff, acc);
      TileStepAvx512<T, R, NR, false>(x, ldx, w, ldw, i + 16, 0xffff, acc);
    }
  }
  for (; i < singles; i += 16) TileStepAvx512<T, R, NR, false>(x, ldx, w, ldw, i, 0xffff, acc);
  if (i < in) {
    const auto tail = static_cast<__mmask16>((1u << (in - i)) - 1u);
    TileStepAvx512<T, R, NR, true>(x, ldx, w, ldw, i, tail, acc);
  }
  StoreTileSums(acc, bias, y, ldy);
}

// R activation rows against `out` weight rows: WeightRowsAvx512(R) of them at a time, the rest
// one by one.
template <WeightType T, int R>
MNEMO_AVX512 void GemvAvx512(const float* x, int64_t ldx, const Elem<T>* w, int64_t ldw,
                             const float* bias, float* y, int64_t ldy, int64_t in, int64_t out) {
  constexpr int kRows = WeightRowsAvx512(R);
  int64_t o = 0;
  for (; o + kRows <= out; o += kRows) {
    TileAvx512<T, R, kRows>(x, ldx, w + o * ldw, ldw, bias != nullptr ? bias + o : nullptr, y + o,
                            ldy, in);
  }
  for (; o < out; ++o) {
    TileAvx512<T, R, 1>(x, ldx, w + o * ldw, ldw, bias != nullptr ? bias + o : nullptr, y + o, ldy,
                        in);
  }
}

// ---- AVX-512 BF16: products of bf16 activations and bf16 weights (HalfProducts::kBf16) ----

#define MNEMO_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,avx512bf16")))

// One step of 32 columns (the masked tail when `m` is not all ones) for R bf16 activation rows
// against NR bf16 weight rows `ldw` apart: each accumulator lane adds the products of one pair
// of columns (vdpbf16ps), one accumulator per (row, weight row) pair as in TileStepAvx512, so a
// batch computes what its rows compute alone, bit for bit.
template <int R, int NR, bool kMasked>
MNEMO_AVX512_BF16 inline __attribute__((always_inline)) void Bf16TileStep(
    const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t i, __mmask32 m,
    __m512 (&acc)[R][NR]) {
  __m512i wv[NR];
  for (int j = 0; j < NR; ++j) {
    wv[j] = kMasked ? _mm512_maskz_loadu_epi16(m, w + j * ldw + i)
                    : _mm512_loadu_si512(w + j * ldw + i);
  }
  for (int r = 0; r < R; ++r) {
    __m512i xv = kMasked ? _mm512_maskz_loadu_epi16(m, x + r * ldx + i)
                         : _mm512_loadu_si512(x + r * ldx + i);
    asm("" : "+v"(xv));  // one load for the NR products, as in TileStepAvx512
    for (int j = 0; j < NR; ++j) {
      acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)xv, (__m512bh)wv[j]);
    }
  }
}

// y[r, j] = Σ_i x[r, i] · w[j, i] (+ bias[j]) for r < R, j < NR, x and w bf16.
template <int R, int NR>
MNEMO_AVX512_BF16 void Bf16TileAvx512(const uint16_t* x, int64_t ldx, const uint16_t* w,
                                      int64_t ldw, const float* bias, float* y, int64_t ldy,
                                      int64_t in) {
  __m512 acc[R][NR];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const int64_t steps = in / 32 * 32;
  const bool contiguous = ldw == in;  // rows one after another: prefetch ahead as TileAvx512
  const bool next_tile = NextTilePrefetch();
  int64_t i = 0;
  for (; i < steps; i += 32) {
    if (contiguous) PrefetchTileStep<NR>(w, ldw, i, next_tile);
    Bf16TileStep<R, NR, false>(x, ldx, w, ldw, i, ~__mmask32{0}, acc);
  }
  if (i < in) {
    const auto tail = static_cast<__mmask32>((uint64_t{1} << (in - i)) - 1u);
    Bf16TileStep<R, NR, true>(x, ldx, w, ldw, i, tail, acc);
  }
  StoreTileSums(acc, bias, y, ldy);
}

// R bf16 activation rows against `out` bf16 weight rows, WeightRowsAvx512(R) at a time as
// GemvAvx512 (the same registers: R·NR accumulators, NR weight and one activation vector).
template <int R>
MNEMO_AVX512_BF16 void Bf16GemvAvx512(const uint16_t* x, int64_t ldx, const uint16_t* w,
                                      int64_t ldw, const float* bias, float* y, int64_t ldy,
                                      int64_t in, int64_t out) {
  constexpr int kRows = WeightRowsAvx512(R);
  int64_t o = 0;
  for (; o + kRows <= out; o += kRows) {
    Bf16TileAvx512<R, kRows>(x, ldx, w + o * ldw, ldw, bias != nullptr ? bias + o : nullptr, y + o,
                             ldy, in);
  }
  for (; o < out; ++o) {
    Bf16TileAvx512<R, 1>(x, ldx, w + o * ldw, ldw, bias != nullptr ? bias + o : nullptr, y + o, ldy,
                         in);
  }
}

// dst[i] = src[i] rounded to bf16, to nearest even (NaN stays NaN), 16 at a time.
MNEMO_AVX512_BF16 void RoundToBf16Avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)h);
  }
  if (i < n) {
    const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    _mm256_mask_storeu_epi16(dst + i, m, (__m256i)h);
  }
}

#undef MNEMO_AVX512_BF16

// y[c] += Σ_r p[r]·w[r, c]: 64 columns at a time in four accumulators (masked at the end), each
// 16-bit row read once.
template <WeightType T>
MNEMO_AVX512 void RowSumAvx512(const float* p, const Elem<T>* w, int64_t ldw, int64_t n,
                               int64_t cols, float* y) {
  for (int64_t c0 = 0; c0 < cols; c0 += 64) {
    __mmask16 m[4];
    __m512 a[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t left = std::clamp<int64_t>(cols - c0 - 16 * k, 0, 16);
      m[k] = static_cast<__mmask16>((1u << left) - 1u);
      a[k] = _mm512_maskz_loadu_ps(m[k], y + c0 + 16 * k);
    }
    for (int64_t r = 0; r < n; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r]);
      for (int k = 0; k < 4; ++k) {
        if (m[k] != 0) {
          a[k] = _mm512_fmadd_ps(pr, LoadMasked16<T>(w + r * ldw + c0 + 16 * k, m[k]), a[k]);
        }
      }
    }
    for (int k = 0; k < 4; ++k) _mm512_mask_storeu_ps(y + c0 + 16 * k, m[k], a[k]);
  }
}

// Every head's dot products of one query against n key rows, each row read once, whole and in
// order (not head by head, one pass over the rows per head's slice): s[h·lds + j] =
// Σ_c x[h·d + c] · w[j·ldw + h·d + c] for d = 16·V. Each (row, head) sum is one accumulator over
// the head's V vectors, parked in `part` until 16 rows of one head are summed by SumLanes16: the
// same multiply-adds and adds, in the same order, as TileAvx512 for that head alone.
template <WeightType T, int V>
MNEMO_AVX512 void HeadDotsAvx512(const float* x, const Elem<T>* w, int64_t ldw, int64_t n,
                                 int heads, float* s, int64_t lds) {
  constexpr int kD = 16 * V, kRows = 16, kHeads = 16;
  __m512 part[kHeads][kRows];
  for (int64_t j0 = 0; j0 < n; j0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n - j0));
    for (int h0 = 0; h0 < heads; h0 += kHeads) {
      const int hn = std::min(kHeads, heads - h0);
      for (int r = 0; r < rows; ++r) {
        const Elem<T>* row = w + (j0 + r) * ldw + h0 * kD;
        PrefetchRow<2>(row + kHeadRowsAhead * ldw, int64_t{hn} * kD);
        for (int h = 0; h < hn; ++h) {
          __m512 acc = _mm512_setzero_ps();
          for (int c = 0; c < V; ++c) {
            acc = _mm512_fmadd_ps(Load16<T>(row + h * kD + 16 * c),
                                  _mm512_loadu_ps(x + (h0 + h) * kD + 16 * c), acc);
          }
          part[h][r] = acc;
        }
      }
      const auto mask = static_cast<__mmask16>((1u << rows) - 1u);
      for (int h = 0; h < hn; ++h) {
        for (int r = rows; r < kRows; ++r) part[h][r] = _mm512_setzero_ps();
        _mm512_mask_storeu_ps(s + (h0 + h) * lds + j0, mask, SumLanes16(part[h]));
      }
    }
  }
}

// y[h·d + c] += Σ_j p[h·ldp + j] · w[j·ldw + h·d + c] for every head h (d = 16·V): the rows by
// blocks of 16, each block read once for G heads at a time (16 accumulators); the same
// multiply-adds in the same order as RowSumAvx512 for each head alone.
template <WeightType T, int V>
MNEMO_AVX512 void HeadRowSumsAvx512(const float* p, int64_t ldp, const Elem<T>* w, int64_t ldw,
                                    int64_t n, int heads, float* y) {
  constexpr int kD = 16 * V, kG = 16 / V;
  constexpr int64_t kRows = 16;
  for (int64_t j0 = 0; j0 < n; j0 += kRows) {
    const int64_t j1 = std::min(n, j0 + kRows);
    for (int h0 = 0; h0 < heads; h0 += kG) {
      const int hn = std::min(kG, heads - h0);
      __m512 a[kG][V];
      for (int g = 0; g < kG; ++g) {
        for (int c = 0; c < V; ++c) {
          a[g][c] = g < hn ? _mm512_loadu_ps(y + (h0 + g) * kD + 16 * c) : _mm512_setzero_ps();
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        const Elem<T>* row = w + j * ldw + h0 * kD;
        PrefetchRow<2>(row + kHeadRowsAhead * ldw, int64_t{hn} * kD);
        for (int g = 0; g < kG; ++g) {
          if (g >= hn) break;
          const __m512 pj = _mm512_set1_ps(p[(h0 + g) * ldp + j]);
          for (int c = 0; c < V; ++c) {
            a[g][c] = _mm512_fmadd_ps(pj, Load16<T>(row + g * kD + 16 * c), a[g][c]);
          }
        }
      }
      for (int g = 0; g < hn; ++g) {
        for (int c = 0; c < V; ++c) _mm512_storeu_ps(y + (h0 + g) * kD + 16 * c, a[g][c]);
      }
    }
  }
}

template <WeightType T>
MNEMO_AVX512 void WidenAvx512(const uint16_t* src, float scale, float* dst, int64_t n) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(Load16<T>(src + i), s));
  if (i < n) {
    const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(LoadMasked16<T>(src + i, m), s));
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#undef MNEMO_AVX512

// ---- dispatch ----

// A decode kernel on one group of activation rows (x of type X) against weight rows (E).
template <typename X, typename E>
using RowsFn = void (*)(const X*, int64_t, const E*, int64_t, const float*, float*, int64_t,
                        int64_t, int64_t);
template <WeightType T>
using GemvFn = RowsFn<float, Elem<T>>;

template <WeightType T, int R>
GemvFn<T> GemvFor(HalfIsa isa) {
  if constexpr (T != WeightType::kF32 && R <= kRowGroupAvx2) {
    if (isa == HalfIsa::kAvx2) return &GemvAvx2<T, R>;
  }
  return &GemvAvx512<T, R>;
}

// fn(std::integral_constant<int, R>{}) for a group of R = `rows` activation rows (1–8; more
// than 8: 8), so the kernels get the group's size as a constant.
template <typename Fn>
auto WithRowGroup(int rows, Fn&& fn) {
  switch (rows) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 3:
      return fn(std::integral_constant<int, 3>{});
    case 4:
      return fn(std::integral_constant<int, 4>{});
    case 5:
      return fn(std::integral_constant<int, 5>{});
    case 6:
      return fn(std::integral_constant<int, 6>{});
    case 7:
      return fn(std::integral_constant<int, 7>{});
    default:
      return fn(std::integral_constant<int, 8>{});
  }
}

// A decode kernel over panels of kPanelRows weight rows `ldw` apart, each against every group of
// `group` activation rows (`full` for whole groups, `last` for the final one).
template <typename X, typename E>
void RunPanels(RowsFn<X, E> full, RowsFn<X, E> last, int64_t group, const X* x, int64_t ldx,
               const E* w, int64_t ldw, const float* bias, float* y, int64_t ldy, int64_t rows,
               int64_t in, int64_t out) {
  for (int64_t p0 = 0; p0 < out; p0 += kPanelRows) {
    const int64_t n = std::min(kPanelRows, out - p0);
    if (ldw != in) {
      for (int64_t o = p0 + kPrefetchRows; o < std::min(out, p0 + kPrefetchRows + n); ++o) {
        PrefetchRow<3>(w + o * ldw, in);
      }
    }
    const float* b = bias != nullptr ? bias + p0 : nullptr;
    for (int64_t r0 = 0; r0 < rows; r0 += group) {
      const RowsFn<X, E> fn = r0 + group < rows ? full : last;
      fn(x + r0 * ldx, ldx, w + p0 * ldw, ldw, b, y + r0 * ldy + p0, ldy, in, n);
    }
  }
}

// The decode kernel (isa kAvx512 or kAvx2; kF32 weights only kAvx512).
template <WeightType T>
void GemvPanels(HalfIsa isa, const float* x, int64_t ldx, const Elem<T>* w, int64_t ldw,
                const float* bias, float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  const int64_t group = isa == HalfIsa::kAvx512 ? kRowGroupAvx512 : kRowGroupAvx2;
  const auto kernel = [isa](auto r) { return GemvFor<T, decltype(r)::value>(isa); };
  RunPanels<float, Elem<T>>(WithRowGroup(static_cast<int>(std::min(group, rows)), kernel),
                            WithRowGroup(static_cast<int>((rows - 1) % group + 1), kernel), group,
                            x, ldx, w, ldw, bias, y, ldy, rows, in, out);
}

// 16-bit weights of either type.
void HalfGemvPanels(HalfIsa isa, const float* x, int64_t ldx, const uint16_t* w, int64_t ldw,
                    WeightType type, const float* bias, float* y, int64_t ldy, int64_t rows,
                    int64_t in, int64_t out) {
  if (type == WeightType::kBF16) {
    GemvPanels<WeightType::kBF16>(isa, x, ldx, w, ldw, bias, y, ldy, rows, in, out);
  } else {
    GemvPanels<WeightType::kF16>(isa, x, ldx, w, ldw, bias, y, ldy, rows, in, out);
  }
}

// More rows: widen kTileCols weight rows at a time into this thread's buffer, then sgemm.
void WidenedGemm(const float* x, int64_t ldx, const uint16_t* w, WeightType type, const float* bias,
                 float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  thread_local std::vector<float> tile;  // grows to the largest tile once, then is reused
  const auto need = static_cast<size_t>(std::min(kTileCols, out) * in);
  if (tile.size() < need) tile.resize(need);
  for (int64_t c0 = 0; c0 < out; c0 += kTileCols) {
    const int64_t n = std::min(kTileCols, out - c0);
    WidenRows(w + c0 * in, in, type, n, in, tile.data(), in);
    float beta = 0.0f;
    if (bias != nullptr) {  // y starts as the bias and sgemm accumulates into it
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(y + r * ldy + c0, bias + c0, n * sizeof(float));
      }
      beta = 1.0f;
    }
    GemmNT(rows, n, in, 1.0f, x, ldx, tile.data(), in, beta, y + c0, ldy);
  }
}

}  // namespace

const char* HalfIsaName(HalfIsa isa) {
  switch (isa) {
    case HalfIsa::kAvx512:
      return "avx512";
    case HalfIsa::kAvx2:
      return "avx2+f16c";
    case HalfIsa::kScalar:
      return "scalar";
  }
  return "?";
}

const std::vector<HalfIsa>& SupportedHalfIsas() {
  static const std::vector<HalfIsa> isas = [] {
    std::vector<HalfIsa> out;
    __builtin_cpu_init();
    // F16C from CPUID directly: not every compiler's __builtin_cpu_supports knows its name.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    if (f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      out.push_back(HalfIsa::kAvx512);
    }
    if (f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      out.push_back(HalfIsa::kAvx2);
    }
    out.push_back(HalfIsa::kScalar);
    return out;
  }();
  return isas;
}

void HalfGemvRows(HalfIsa isa, const float* x, int64_t ldx, const uint16_t* w, WeightType type,
                  const float* bias, float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  if (isa == HalfIsa::kScalar) {
    GemvScalar(x, ldx, w, in, type, bias, y, ldy, rows, in, out);
    return;
  }
  HalfGemvPanels(isa, x, ldx, w, in, type, bias, y, ldy, rows, in, out);
}

bool Bf16ProductsAvailable() {
  static const bool available = [] {
    __builtin_cpu_init();
    return SupportedHalfIsas().front() == HalfIsa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  }();
  return available;
}

void RoundToBf16(const float* src, uint16_t* dst, int64_t n) { RoundToBf16Avx512(src, dst, n); }

void Bf16GemvRows(const uint16_t* x, int64_t ldx, const uint16_t* w, const float* bias, float* y,
                  int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  using Fn = RowsFn<uint16_t, uint16_t>;
  const auto kernel = [](auto r) -> Fn { return &Bf16GemvAvx512<decltype(r)::value>; };
  RunPanels<uint16_t, uint16_t>(
      WithRowGroup(static_cast<int>(std::min<int64_t>(kRowGroupAvx512, rows)), kernel),
      WithRowGroup(static_cast<int>((rows - 1) % kRowGroupAvx512 + 1), kernel), kRowGroupAvx512, x,
      ldx, w, in, bias, y, ldy, rows, in, out);
}

bool FloatDecodeKernelAvailable() { return SupportedHalfIsas().front() == HalfIsa::kAvx512; }

void FloatGemvRows(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                   int64_t ldy, int64_t rows, int64_t in, int64_t out) {
  GemvPanels<WeightType::kF32>(HalfIsa::kAvx512, x, ldx, w, in, bias, y, ldy, rows, in, out);
}

void FloatDotRows(const float* x, const float* w, int64_t ldw, int64_t n, int64_t cols, float* y) {
  if (n > 0)
    GemvPanels<WeightType::kF32>(HalfIsa::kAvx512, x, 0, w, ldw, nullptr, y, 1, 1, cols, n);
}

void FloatRowSum(const float* p, const float* w, int64_t ldw, int64_t n, int64_t cols, float* y) {
  RowSumAvx512<WeightType::kF32>(p, w, ldw, n, cols, y);
}

void HalfDotRows(HalfIsa isa, const float* x, const uint16_t* w, int64_t ldw, WeightType type,
                 int64_t n, int64_t cols, float* y) {
  if (n <= 0) return;
  if (isa == HalfIsa::kScalar) {
    GemvScalar(x, 0, w, ldw, type, nullptr, y, 1, 1, cols, n);
    return;
  }
  HalfGemvPanels(isa, x, 0, w, ldw, type, nullptr, y, 1, 1, cols, n);
}

void HalfRowSum(HalfIsa isa, const float* p, const uint16_t* w, int64_t ldw, WeightType type,
                int64_t n, int64_t cols, float* y) {
  const bool bf16 = type == WeightType::kBF16;
  switch (isa) {
    case HalfIsa::kAvx512:
      bf16 ? RowSumAvx512<WeightType::kBF16>(p, w, ldw, n, cols, y)
           : RowSumAvx512<WeightType::kF16>(p, w, ldw, n, cols, y);
      return;
    case HalfIsa::kAvx2:
      bf16 ? RowSumAvx2<WeightType::kBF16>(p, w, ldw, n, cols, y)
           : RowSumAvx2<WeightType::kF16>(p, w, ldw, n, cols, y);
      return;
    case HalfIsa::kScalar:
      RowSumScalar(p, w, ldw, type, n, cols, y);
      return;
  }
}

namespace {

// Calls fn(std::integral_constant<int, V>{}) for head_dim = 16·V, one of HeadKernelsAvailable's
// sizes: the head kernels' vectors per head as a constant, so their accumulators are registers.
template <typename Fn>
void WithHeadVectors(int head_dim, Fn&& fn) {
  switch (head_dim / 16) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 4:
      return fn(std::integral_constant<int, 4>{});
    default:
      return fn(std::integral_constant<int, 8>{});
  }
}

template <WeightType T>
void HeadDotsOf(const float* x, const Elem<T>* w, int64_t ldw, int64_t n, int heads, int head_dim,
                float* s, int64_t lds) {
  WithHeadVectors(head_dim, [&](auto v) {
    HeadDotsAvx512<T, decltype(v)::value>(x, w, ldw, n, heads, s, lds);
  });
}

template <WeightType T>
void HeadRowSumsOf(const float* p, int64_t ldp, const Elem<T>* w, int64_t ldw, int64_t n, int heads,
                   int head_dim, float* y) {
  WithHeadVectors(head_dim, [&](auto v) {
    HeadRowSumsAvx512<T, decltype(v)::value>(p, ldp, w, ldw, n, heads, y);
  });
}

}  // namespace

bool HeadKernelsAvailable(int head_dim) {
  return SupportedHalfIsas().front() == HalfIsa::kAvx512 &&
         (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128);
}

void HeadDots(const float* x, const float* w, int64_t ldw, int64_t n, int heads, int head_dim,
              float* s, int64_t lds) {
  HeadDotsOf<WeightType::kF32>(x, w, ldw, n, heads, head_dim, s, lds);
}

void HeadDots(const float* x, const uint16_t* w, WeightType type, int64_t ldw, int64_t n, int heads,
              int head_dim, float* s, int64_t lds) {
  if (type == WeightType::kBF16) {
    HeadDotsOf<WeightType::kBF16>(x, w, ldw, n, heads, head_dim, s, lds);
  } else {
    HeadDotsOf<WeightType::kF16>(x, w, ldw, n, heads, head_dim, s, lds);
  }
}

void HeadRowSums(const float* p, int64_t ldp, const float* w, int64_t ldw, int64_t n, int heads,
                 int head_dim, float* y) {
  HeadRowSumsOf<WeightType::kF32>(p, ldp, w, ldw, n, heads, head_dim, y);
}

void HeadRowSums(const float* p, int64_t ldp, const uint16_t* w, WeightType type, int64_t ldw,
                 int64_t n, int heads, int head_dim, float* y) {
  if (type == WeightType::kBF16) {
    HeadRowSumsOf<WeightType::kBF16>(p, ldp, w, ldw, n, heads, head_dim, y);
  } else {
    HeadRowSumsOf<WeightType::kF16>(p, ldp, w, ldw, n, heads, head_dim, y);
  }
}

void WidenRow(const uint16_t* src, WeightType type, float scale, float* dst, int64_t n) {
  WidenRows(src, n, type, 1, n, dst, n, scale);
}

void WidenRows(const uint16_t* src, int64_t lds, WeightType type, int64_t rows, int64_t cols,
               float* dst, int64_t ldd, float scale) {
  const bool bf16 = type == WeightType::kBF16;
  switch (SupportedHalfIsas().front()) {  // chosen once for every row
    case HalfIsa::kAvx512:
      for (int64_t r = 0; r < rows; ++r) {
        bf16 ? WidenAvx512<WeightType::kBF16>(src + r * lds, scale, dst + r * ldd, cols)
             : WidenAvx512<WeightType::kF16>(src + r * lds, scale, dst + r * ldd, cols);
      }
      return;
    case HalfIsa::kAvx2:
      for (int64_t r = 0; r < rows; ++r) {
        bf16 ? WidenAvx2<WeightType::kBF16>(src + r * lds, scale, dst + r * ldd, cols)
             : WidenAvx2<WeightType::kF16>(src + r * lds, scale, dst + r * ldd, cols);
      }
      return;
    case HalfIsa::kScalar:
      for (int64_t r = 0; r < rows; ++r) {
        WidenScalar(src + r * lds, type, scale, dst + r * ldd, cols);
      }
      return;
  }
}

void HalfLinear(const float* x, int64_t ldx, const uint16_t* w, WeightType type, const float* bias,
                float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out, ThreadPool& pool,
                HalfProducts products) {
  if (rows <= 0 || out <= 0) return;
  // kBf16: the activations rounded once, on the calling thread, for every block; xb is a pointer
  // rather than the thread_local by name, which a worker would resolve to its own copy.
  const uint16_t* xb = nullptr;
  if (products == HalfProducts::kBf16 && type == WeightType::kBF16 &&
      rows <= kDecodeKernelMaxRows && Bf16ProductsAvailable()) {
    thread_local std::vector<uint16_t> rounded;  // grows to the largest call once, then reused
    if (rounded.size() < static_cast<size_t>(rows * in)) rounded.resize(rows * in);
    for (int64_t r = 0; r < rows; ++r) RoundToBf16(x + r * ldx, rounded.data() + r * in, in);
    xb = rounded.data();
  }
  const HalfIsa isa = SupportedHalfIsas().front();
  ForColumnBlocks(rows, in, out, pool, [&](int64_t o0, int64_t n) {
    const float* b = bias != nullptr ? bias + o0 : nullptr;
    if (xb != nullptr) {
      Bf16GemvRows(xb, in, w + o0 * in, b, y + o0, ldy, rows, in, n);
    } else if (rows <= kDecodeKernelMaxRows) {
      HalfGemvRows(isa, x, ldx, w + o0 * in, type, b, y + o0, ldy, rows, in, n);
    } else {
      WidenedGemm(x, ldx, w + o0 * in, type, b, y + o0, ldy, rows, in, n);
    }
  });
}

}  // namespace mnemo::kernels
