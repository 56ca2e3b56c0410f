// Products with 16-bit (bf16 or f16) weight matrices on the CPU: the weights stay 16-bit in
// memory, so a decode step reads half the bytes of float32 weights. Activations and sums stay
// float32; each weight is widened exactly (bf16 and f16 are subsets of float32), so the only
// difference from the float32 product of the same widened weights is the order of the sums.
//
// Decode rows (up to kDecodeKernelMaxRows per call: one session or a batch of them) stream each
// weight row and widen it in registers: AVX-512 where the CPU has it, AVX2 + F16C otherwise,
// plain C++ elsewhere, chosen at run time. More rows (prefill) widen tiles of the weights into a
// per-thread float32 buffer and run OpenBLAS's sgemm on them: Debian's OpenBLAS is built without
// its bf16 kernels (`cblas_sbgemm`), and sgemm on widened tiles keeps the float32 activations
// exact. The AVX-512 decode kernel also runs float32 weights and float32 key/value rows (Float*
// below), so a float32 batch computes what its rows compute alone too.
//
// HalfProducts::kBf16 (opt-in: `--cpu-weights bf16-products`) trades that exactness for the
// multiply rate of AVX-512 BF16: a compute-bound batch of decode rows against bf16 weights rounds
// its activations to bf16 and sums bf16 × bf16 products in float32 with vdpbf16ps, 32 products an
// instruction where a float32 multiply-add does 16.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/kinds.h"

namespace mnemo::kernels {

// The instruction sets the decode kernel has, best first.
enum class HalfIsa : uint8_t { kAvx512, kAvx2, kScalar };

const char* HalfIsaName(HalfIsa isa);
// The ones this CPU runs (kScalar always), best first; the kernels use the first unless told.
const std::vector<HalfIsa>& SupportedHalfIsas();

// Calls with at most this many rows take the decode kernel (each weight row read once per eight
// rows with AVX-512, per four with AVX2, from the cache after the first); more take widened tiles
// and sgemm. Up to 32 rows (batched decode) the register kernel beats widening a tile: B = 12
// 350 → 420–480 tok/s, B = 32 447–506 → 506–521 on the 12-layer benchmark model. float32 weights
// likewise (FloatGemvRows): B = 32 393 → 414 tok/s against sgemm, one session 101 → 109.
inline constexpr int64_t kDecodeKernelMaxRows = 32;

// How HalfLinear multiplies bf16 weights on decode rows.
enum class HalfProducts : uint8_t {
  // Each weight widened exactly, float32 activations: the float32 product of the widened weights
  // up to the order of the sums. The default; f16 weights and prefill rows always.
  kFloat32,
  // Where the CPU has AVX-512 BF16 (Bf16ProductsAvailable), calls of at most
  // kDecodeKernelMaxRows rows against bf16 weights round each activation to bf16 (to nearest
  // even) and take Bf16GemvRows: each product exact, sums in float32 as the decode kernel's (a
  // batch still computes what its rows compute alone, bit for bit). Rounding adds at most 2⁻⁹ of
  // Σ|x·w| to an output. Elsewhere (other CPUs, f16 weights, calls of more rows: prefill) as
  // kFloat32: a permission, not a requirement. On one Zen 4 core, 32 rows with the data in L2:
  // 94 → 165 GFLOP/s at in = 512, 100 → 124 at in = 2048; B = 32 sessions of the 12-layer
  // benchmark model (2 vCPUs), bf16 weights + bf16 memory 681 → 783 tok/s, one session alike.
  kBf16,
};

// y[rows, out] = x[rows, in] · w[out, in]ᵀ (+ bias[out] when not null), w stored as `type`
// (kBF16 or kF16), split over `pool` by blocks of output columns. Strides are in elements.
void HalfLinear(const float* x, int64_t ldx, const uint16_t* w, WeightType type, const float* bias,
                float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out, ThreadPool& pool,
                HalfProducts products = HalfProducts::kFloat32);

// Whether this CPU runs HalfProducts::kBf16's kernel (AVX-512 F, BW, VL and BF16).
bool Bf16ProductsAvailable();
// That kernel on one block, single-threaded (Bf16ProductsAvailable only): y[r, o] =
// Σ_i x[r, i] · w[o, i] (+ bias[o]) for r < rows (any count), x and w bf16, sums in float32
// (vdpbf16ps: bf16 inputs below the normal range count as zero, as do float32 results).
void Bf16GemvRows(const uint16_t* x, int64_t ldx, const uint16_t* w, const float* bias, float* y,
                  int64_t ldy, int64_t rows, int64_t in, int64_t out);
// dst[i] = src[i] rounded to bf16, to nearest even, float32 subnormals to zero
// (Bf16ProductsAvailable only: vcvtneps2bf16).
void RoundToBf16(const float* src, uint16_t* dst, int64_t n);

// The decode kernel on one block, single-threaded, with a chosen instruction set (tests compare
// each with the others): y[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o]) for r < rows (any count).
void HalfGemvRows(HalfIsa isa, const float* x, int64_t ldx, const uint16_t* w, WeightType type,
                  const float* bias, float* y, int64_t ldy, int64_t rows, int64_t in, int64_t out);

// The decode kernel on float32 weights (AVX-512 only: FloatDecodeKernelAvailable()), single-
// threaded: y[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o]) for r < rows. Linear (blas.h) takes it for
// decode rows: it reads each weight row once per eight rows, where sgemm would first copy (pack)
// the whole weight matrix, and each row's sums do not depend on the rows beside it.
bool FloatDecodeKernelAvailable();
void FloatGemvRows(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                   int64_t ldy, int64_t rows, int64_t in, int64_t out);
// HalfDotRows and HalfRowSum (below) on float32 rows, with the same kernels (AVX-512 only).
void FloatDotRows(const float* x, const float* w, int64_t ldw, int64_t n, int64_t cols, float* y);
void FloatRowSum(const float* p, const float* w, int64_t ldw, int64_t n, int64_t cols, float* y);

// Attention over 16-bit key/value rows (relative_attention.cc, 16-bit session memory), single-
// threaded, with a chosen instruction set, rows `ldw` elements apart:
//   HalfDotRows: y[j] = Σ_c x[c] · w[j, c] for j < n (a query against n keys);
//   HalfRowSum:  y[c] += Σ_j p[j] · w[j, c] for c < cols (probabilities times n values).
// Each row is widened in registers and read once; no widened copy is written.
void HalfDotRows(HalfIsa isa, const float* x, const uint16_t* w, int64_t ldw, WeightType type,
                 int64_t n, int64_t cols, float* y);
void HalfRowSum(HalfIsa isa, const float* p, const uint16_t* w, int64_t ldw, WeightType type,
                int64_t n, int64_t cols, float* y);

// The same two products for every head of a decode query at once, each key/value row read once,
// whole and in order (not head by head, one pass over the rows per head's slice), single-threaded;
// rows `ldw` elements apart hold the heads side by side (head h at columns h·head_dim …):
//   HeadDots:    s[h·lds + j] = Σ_c x[h·head_dim + c] · w[j, h·head_dim + c] for j < n, h < heads;
//   HeadRowSums: y[h·head_dim + c] += Σ_j p[h·ldp + j] · w[j, h·head_dim + c].
// Each sum is the one HalfDotRows / HalfRowSum (FloatDotRows / FloatRowSum on float32 rows)
// computes for that head alone, bit for bit. AVX-512 and head_dim 16, 32, 64 or 128 only:
// HeadKernelsAvailable.
bool HeadKernelsAvailable(int head_dim);
void HeadDots(const float* x, const float* w, int64_t ldw, int64_t n, int heads, int head_dim,
              float* s, int64_t lds);
void HeadDots(const float* x, const uint16_t* w, WeightType type, int64_t ldw, int64_t n, int heads,
              int head_dim, float* s, int64_t lds);
void HeadRowSums(const float* p, int64_t ldp, const float* w, int64_t ldw, int64_t n, int heads,
                 int head_dim, float* y);
void HeadRowSums(const float* p, int64_t ldp, const uint16_t* w, WeightType type, int64_t ldw,
                 int64_t n, int heads, int head_dim, float* y);

// dst[n] = widened src[n] · scale (an embedding row).
void WidenRow(const uint16_t* src, WeightType type, float scale, float* dst, int64_t n);

// dst[r, c] = widened src[r, c] · scale for r < rows, c < cols; rows lds (source) and ldd
// (destination) elements apart: tiles of 16-bit weights or key/value rings before a float32 BLAS
// call.
void WidenRows(const uint16_t* src, int64_t lds, WeightType type, int64_t rows, int64_t cols,
               float* dst, int64_t ldd, float scale = 1.0f);

}  // namespace mnemo::kernels
