// kernels/cpu/nystrom_attention against a naive double-precision implementation written from
// the definition (nystrom_attention.h; Hugging Face's NystromformerSelfAttention): landmark
// means, the three softmax kernels, six Newton–Schulz steps from Kᵀ over the largest column sum
// of every head, the masked padding and the values' convolution; over landmark counts from one
// to every position, full and padded passes, with and without the convolution, with rows strided
// as the qkv projection lays them out.
#include "kernels/cpu/nystrom_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

using Matrix = std::vector<std::vector<double>>;

Matrix Mul(const Matrix& a, const Matrix& b) {
  Matrix c(a.size(), std::vector<double>(b[0].size(), 0.0));
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t l = 0; l < b.size(); ++l) {
      for (size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][l] * b[l][j];
    }
  }
  return c;
}

// Row softmax over the first `valid` columns (the rest 0).
void Softmax(Matrix& x, size_t valid) {
  for (auto& row : x) {
    const double top = *std::max_element(row.begin(), row.begin() + valid);
    double sum = 0;
    for (size_t j = 0; j < row.size(); ++j) sum += row[j] = j < valid ? std::exp(row[j] - top) : 0;
    for (double& e : row) e /= sum;
  }
}

// out [L, H·d] in double from the definition.
std::vector<double> Reference(const NystromShape& s, const std::vector<float>& qkv,
                              const std::vector<float>& conv) {
  const int64_t H = s.num_heads, d = s.head_dim, L = s.len, m = s.landmarks, w = H * d;
  const double scale = std::pow(static_cast<double>(d), -0.25);
  std::vector<Matrix> Q(H, Matrix(L, std::vector<double>(d))), K = Q, V = Q;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t e = 0; e < d; ++e) {
        Q[h][i][e] = qkv[i * 3 * w + h * d + e] * scale;
        K[h][i][e] = qkv[i * 3 * w + w + h * d + e] * scale;
        V[h][i][e] = qkv[i * 3 * w + 2 * w + h * d + e];
      }
    }
  }
  auto transpose = [](const Matrix& a) {
    Matrix t(a[0].size(), std::vector<double>(a.size()));
    for (size_t i = 0; i < a.size(); ++i) {
      for (size_t j = 0; j < a[0].size(); ++j) t[j][i] = a[i][j];
    }
    return t;
  };
  std::vector<Matrix> context(H), kernel2(H), Ql(H), Kl(H);
  double most = 0;
  for (int64_t h = 0; h < H; ++h) {
    if (m == L) {
      Matrix scores = Mul(Q[h], transpose(K[h]));
      Softmax(scores, static_cast<size_t>(s.valid));
      context[h] = Mul(scores, V[h]);
      continue;
    }
    const int64_t seg = L / m;
    Ql[h] = Matrix(m, std::vector<double>(d, 0.0));
    Kl[h] = Ql[h];
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t p = j * seg; p < (j + 1) * seg; ++p) {
        for (int64_t e = 0; e < d; ++e) {
          Ql[h][j][e] += Q[h][p][e] / static_cast<double>(seg);
          Kl[h][j][e] += K[h][p][e] / static_cast<double>(seg);
        }
      }
    }
    kernel2[h] = Mul(Ql[h], transpose(Kl[h]));
    Softmax(kernel2[h], static_cast<size_t>(m));
    for (int64_t j = 0; j < m; ++j) {
      double col = 0;
      for (int64_t i = 0; i < m; ++i) col += kernel2[h][i][j];
      most = std::max(most, col);
    }
  }
  for (int64_t h = 0; h < H && m != L; ++h) {
    Matrix z = transpose(kernel2[h]);
    for (auto& row : z) {
      for (double& e : row) e /= most;
    }
    auto minus_from = [&](double c, const Matrix& a) {  // c·I − a
      Matrix r = a;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < m; ++j) r[i][j] = (i == j ? c : 0.0) - a[i][j];
      }
      return r;
    };
    for (int step = 0; step < 6; ++step) {
      const Matrix kz = Mul(kernel2[h], z);
      z = Mul(z, minus_from(13, Mul(kz, minus_from(15, Mul(kz, minus_from(7, kz))))));
      for (auto& row : z) {
        for (double& e : row) e *= 0.25;
      }
    }
    Matrix k1 = Mul(Q[h], transpose(Kl[h]));
    Softmax(k1, static_cast<size_t>(m));
    Matrix k3 = Mul(Ql[h], transpose(K[h]));
    Softmax(k3, static_cast<size_t>(s.valid));
    context[h] = Mul(Mul(k1, z), Mul(k3, V[h]));
  }
  std::vector<double> out(static_cast<size_t>(L * w));
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t e = 0; e < d; ++e) {
        double x = context[h][i][e];
        for (int64_t t = 0; t < s.conv_taps; ++t) {
          const int64_t p = i + t - s.conv_taps / 2;
          if (p >= 0 && p < L) x += conv[h * s.conv_taps + t] * V[h][p][e];
        }
        out[i * w + h * d + e] = x;
      }
    }
  }
  return out;
}

TEST(NystromAttentionTest, MatchesTheDefinition) {
  ThreadPool pool(2);
  for (const NystromShape s : {NystromShape{2, 4, 16, 16, 4, 0}, NystromShape{3, 8, 24, 17, 6, 5},
                               NystromShape{2, 4, 12, 12, 12, 3}, NystromShape{1, 8, 20, 9, 20, 0},
                               NystromShape{4, 2, 8, 8, 1, 7}, NystromShape{2, 4, 32, 5, 8, 31}}) {
    SCOPED_TRACE(testing::Message()
                 << "H " << s.num_heads << " d " << s.head_dim << " L " << s.len << " valid "
                 << s.valid << " m " << s.landmarks << " taps " << s.conv_taps);
    const int64_t w = static_cast<int64_t>(s.num_heads) * s.head_dim;
    std::mt19937 rng(static_cast<uint32_t>(s.len * 13 + s.landmarks));
    std::normal_distribution<float> dist;
    std::vector<float> qkv(static_cast<size_t>(s.len * 3 * w)),
        conv(static_cast<size_t>(s.num_heads * s.conv_taps));
    for (float& x : qkv) x = dist(rng);
    for (float& x : conv) x = 0.3f * dist(rng);
    std::vector<float> out(static_cast<size_t>(s.len * w), 99.0f);
    NystromAttention(s, qkv.data(), 3 * w, qkv.data() + w, 3 * w, qkv.data() + 2 * w, 3 * w,
                     s.conv_taps > 0 ? conv.data() : nullptr, out.data(), w, pool);
    const std::vector<double> want = Reference(s, qkv, conv);
    double scale = 0;
    for (double x : want) scale = std::max(scale, std::abs(x));
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_NEAR(out[i], want[i], 2e-5 * scale + 1e-6) << "element " << i;
    }
  }
}

}  // namespace
}  // namespace mnemo::kernels
