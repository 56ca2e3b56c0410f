// kernels/cpu/rotary: every head of every row turned by its position as the definition says
// (halves rotated by the float32 angle position·inv_freq[i]), in double; columns past the heads
// untouched; a turn by p then by −p is the identity up to rounding.
#include "kernels/cpu/rotary.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

TEST(RotaryTest, TurnsEachHeadByItsRowsAngle) {
  for (const int head_dim : {2, 8, 64, 128}) {
    const int heads = 3, half = head_dim / 2;
    const int64_t rows = 5, ld = heads * head_dim + 7;  // 7 columns the op must not touch
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) {
      inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / head_dim));
    }
    const std::vector<int64_t> positions = {0, 1, 17, 4095, 1000003};
    std::mt19937 rng(static_cast<uint32_t>(head_dim));
    std::normal_distribution<float> dist;
    std::vector<float> x(static_cast<size_t>(rows * ld));
    for (float& v : x) v = dist(rng);
    const std::vector<float> x0 = x;
    ApplyRotary({rows, heads, head_dim, inv_freq.data()}, positions.data(), x.data(), ld,
                ThreadPool::Default());
    for (int64_t r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        const int64_t at = r * ld + h * head_dim;
        for (int i = 0; i < half; ++i) {
          const double angle = static_cast<float>(positions[r]) * inv_freq[i];  // float32
          const double x1 = x0[at + i], x2 = x0[at + half + i];
          ASSERT_NEAR(x[at + i], x1 * std::cos(angle) - x2 * std::sin(angle), 1e-5)
              << "row " << r << " head " << h << " pair " << i;
          ASSERT_NEAR(x[at + half + i], x2 * std::cos(angle) + x1 * std::sin(angle), 1e-5);
        }
      }
      for (int64_t c = heads * head_dim; c < ld; ++c) ASSERT_EQ(x[r * ld + c], x0[r * ld + c]);
    }
    if (head_dim == 8) {  // position 0 is the identity
      for (int64_t c = 0; c < heads * head_dim; ++c) ASSERT_EQ(x[c], x0[c]);
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels
