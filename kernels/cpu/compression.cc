#include "kernels/cpu/compression.h"

#include <algorithm>

namespace mnemo::kernels {

void PoolRows(bool max, const float* rows, int64_t c, int64_t d, int64_t ld, float* out) {
  std::copy(rows, rows + d, out);
  for (int64_t r = 1; r < c; ++r) {
    const float* row = rows + r * ld;
    for (int64_t i = 0; i < d; ++i) out[i] = max ? std::max(out[i], row[i]) : out[i] + row[i];
  }
  if (!max) {
    const float inv = 1.0f / static_cast<float>(c);
    for (int64_t i = 0; i < d; ++i) out[i] *= inv;
  }
}

void ConvRows(const float* w, const float* bias, int64_t taps, int64_t step, const float* rows,
              int64_t d, int64_t ld, float* out) {
  for (int64_t o = 0; o < d; ++o) {
    const float* wo = w + o * d * taps;  // W[o, :, :]
    float acc = bias[o];
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t k = 0; k < taps; ++k) acc += wo[i * taps + k] * rows[k * step * ld + i];
    }
    out[o] = acc;
  }
}

int64_t MostUsedRow(const float* usage, int64_t c) {
  int64_t best = 0;
  for (int64_t r = 1; r < c; ++r) {
    if (usage[r] > usage[best]) best = r;
  }
  return best;
}

}  // namespace mnemo::kernels
