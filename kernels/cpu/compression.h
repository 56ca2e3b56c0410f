// The Compressive Transformer's compression functions (MODEL-SPEC §2.2, CHECKPOINT-FORMAT.md
// "Compressive memory"): one group of c evicted rows [c, D], oldest first, becomes one row [D].
#pragma once

#include <cstdint>

namespace mnemo::kernels {

// out = elementwise max (or mean) of the c rows (`ld` floats apart).
void PoolRows(bool max, const float* rows, int64_t c, int64_t d, int64_t ld, float* out);

// out = bias + Σ_{k < taps} W[:, :, k] · rows[k·step], W [D, D, taps] row-major (PyTorch Conv1d
// layout [out, in, kernel]). conv1d: taps = c, step = 1; dilated_conv: taps = K, step = c/K.
void ConvRows(const float* w, const float* bias, int64_t taps, int64_t step, const float* rows,
              int64_t d, int64_t ld, float* out);

// Index of the row with the largest usage (the oldest on ties).
int64_t MostUsedRow(const float* usage, int64_t c);

}  // namespace mnemo::kernels
