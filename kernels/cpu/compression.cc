// The compressive memory's compression functions on the CPU (compression.h): pooling, conv tap
// packing and the most-used pick; the oracle of kernels/cuda/compression.cu.
#include "kernels/cpu/compression.h"

#include <algorithm>

#include "kernels/cpu/blas.h"

namespace mnemo::kernels {

void PoolRows(bool max, const float* rows, int64_t c, int64_t d_model, int64_t ld, float* out) {
  std::copy(rows, rows + d_model, out);
  for (int64_t r = 1; r < c; ++r) {
    const float* row = rows + r * ld;
    for (int64_t i = 0; i < d_model; ++i) out[i] = max ? std::max(out[i], row[i]) : out[i] + row[i];
  }
  if (!max) {
    const float inv = 1.0f / static_cast<float>(c);
    for (int64_t i = 0; i < d_model; ++i) out[i] *= inv;
  }
}

void PackConvTaps(const float* rows, int64_t taps, int64_t step, int64_t d_model, int64_t ld,
                  float* x) {
  for (int64_t k = 0; k < taps; ++k) {
    const float* row = rows + k * step * ld;
    for (int64_t i = 0; i < d_model; ++i) x[i * taps + k] = row[i];
  }
}

void ConvGroups(const float* w, const float* bias, int64_t taps, int64_t n, const float* x,
                int64_t d_model, float* out) {
  for (int64_t g = 0; g < n; ++g) std::copy(bias, bias + d_model, out + g * d_model);
  GemmNT(n, d_model, d_model * taps, 1.0f, x, d_model * taps, w, d_model * taps, 1.0f, out,
         d_model);
}

int64_t MostUsedRow(const float* usage, int64_t c) {
  int64_t best = 0;
  for (int64_t r = 1; r < c; ++r) {
    if (usage[r] > usage[best]) best = r;
  }
  return best;
}

}  // namespace mnemo::kernels
