// Rotary position embedding on the CPU (rotary.h).
#include "kernels/cpu/rotary.h"

#include <cmath>
#include <vector>

namespace mnemo::kernels {

void ApplyRotary(const RotaryShape& s, const int64_t* positions, float* x, int64_t ld,
                 ThreadPool& pool) {
  const int half = s.head_dim / 2;
  pool.ParallelFor(s.rows, 4, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> cos_sin;
    cos_sin.resize(2 * static_cast<size_t>(half));
    for (int64_t r = r0; r < r1; ++r) {
      const auto p = static_cast<float>(positions[r]);
      for (int i = 0; i < half; ++i) {           // the row's angles, shared by its heads
        const double angle = p * s.inv_freq[i];  // (a float32 product)
        cos_sin[i] = static_cast<float>(std::cos(angle));
        cos_sin[half + i] = static_cast<float>(std::sin(angle));
      }
      for (int h = 0; h < s.num_heads; ++h) {
        float* v = x + r * ld + static_cast<int64_t>(h) * s.head_dim;
        for (int i = 0; i < half; ++i) {
          const float x1 = v[i], x2 = v[half + i], c = cos_sin[i], sn = cos_sin[half + i];
          v[i] = x1 * c - x2 * sn;
          v[half + i] = x2 * c + x1 * sn;
        }
      }
    }
  });
}

}  // namespace mnemo::kernels
