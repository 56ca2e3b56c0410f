// The Compressive Transformer's compression functions (MODEL-SPEC §2.2, docs/checkpoint-format.md
// "Compressive memory"): one group of c evicted rows [c, D], oldest first, becomes one row [D].
#pragma once

#include <cstdint>

namespace mnemo::kernels {

// out = elementwise max (or mean) of the c rows (`ld` floats apart).
void PoolRows(bool max, const float* rows, int64_t c, int64_t d_model, int64_t ld, float* out);

// The learned compressions, out = bias + Σ_{k < taps} W[:, :, k] · rows[k·step], with W
// [D, D, taps] row-major (PyTorch Conv1d layout [out, in, kernel]); conv1d: taps = c, step = 1;
// dilated_conv: taps = K, step = c/K. A group is first packed as x[i·taps + k] = rows[k·step][i]
// so that W, viewed as [D, D·taps], multiplies every packed group in one BLAS product.
void PackConvTaps(const float* rows, int64_t taps, int64_t step, int64_t d_model, int64_t ld,
                  float* x);
// out[g, :] = bias + W · x[g, :] for n packed groups x [n, D·taps].
void ConvGroups(const float* w, const float* bias, int64_t taps, int64_t n, const float* x,
                int64_t d_model, float* out);

// Index of the row with the largest usage (the oldest on ties).
int64_t MostUsedRow(const float* usage, int64_t c);

}  // namespace mnemo::kernels
