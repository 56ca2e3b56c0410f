// Nyströmformer's attention on the CPU (nystrom_attention.h). The products run through BLAS per
// head; the m × m landmark kernel and its pseudo-inverse, small and sensitive to rounding, run in
// double.
#include "kernels/cpu/nystrom_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/elementwise.h"

namespace mnemo::kernels {
namespace {

// c[m, m] = a[m, m] · b[m, m], row-major doubles.
void MatMul(const std::vector<double>& a, const std::vector<double>& b, std::vector<double>& c,
            int64_t m) {
  GemmNN(m, m, m, 1.0, a.data(), m, b.data(), m, 0.0, c.data(), m);
}

// Softmax of each row of a [rows, cols] double matrix.
void SoftmaxRows(std::vector<double>& x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double* row = x.data() + r * cols;
    const double top = *std::max_element(row, row + cols);
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += row[c] = std::exp(row[c] - top);
    for (int64_t c = 0; c < cols; ++c) row[c] /= sum;
  }
}

// Softmax of each row over its first `valid` entries; the rest become 0.
void MaskedSoftmaxRows(float* x, int64_t rows, int64_t cols, int64_t ld, int64_t valid) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    SoftmaxRow(row, valid);
    std::fill(row + valid, row + cols, 0.0f);
  }
}

}  // namespace

void NystromAttention(const NystromShape& s, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, const float* v, int64_t ldv, const float* conv, float* out,
                      int64_t ldo, ThreadPool& pool) {
  UseSingleThreadedBlas();
  const int64_t d = s.head_dim, len = s.len, m = s.landmarks, heads = s.num_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));  // d^(-1/4) on q and on k
  if (m == len) {
    // Exact attention (Hugging Face's branch when the landmarks are the positions).
    pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
      std::vector<float> scores(static_cast<size_t>(len * len));
      for (int64_t h = h0; h < h1; ++h) {
        GemmNT(len, len, d, scale, q + h * d, ldq, k + h * d, ldk, 0.0f, scores.data(), len);
        MaskedSoftmaxRows(scores.data(), len, len, len, s.valid);
        GemmNN(len, d, len, 1.0f, scores.data(), len, v + h * d, ldv, 0.0f, out + h * d, ldo);
      }
    });
  } else {
    const int64_t seg = len / m;
    // Landmarks (segment means) of every head: [H, m, d] for queries and keys.
    std::vector<float> ql(static_cast<size_t>(heads * m * d), 0.0f), kl(ql.size(), 0.0f);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < m; ++j) {
        float* qd = ql.data() + (h * m + j) * d;
        float* kd = kl.data() + (h * m + j) * d;
        for (int64_t p = j * seg; p < (j + 1) * seg; ++p) {
          for (int64_t e = 0; e < d; ++e) {
            qd[e] += q[p * ldq + h * d + e];
            kd[e] += k[p * ldk + h * d + e];
          }
        }
        for (int64_t e = 0; e < d; ++e) {
          qd[e] /= static_cast<float>(seg);
          kd[e] /= static_cast<float>(seg);
        }
      }
    }
    // kernel_2 = softmax(q̃·k̃ᵀ) per head, in double, and the largest column sum over all heads.
    std::vector<std::vector<double>> k2(static_cast<size_t>(heads));
    double most = 0;
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<double>& a = k2[h];
      a.assign(static_cast<size_t>(m * m), 0.0);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) {
            dot += static_cast<double>(ql[(h * m + i) * d + e]) * kl[(h * m + j) * d + e];
          }
          a[i * m + j] = dot / std::sqrt(static_cast<double>(d));
        }
      }
      SoftmaxRows(a, m, m);
      for (int64_t j = 0; j < m; ++j) {
        double col = 0;
        for (int64_t i = 0; i < m; ++i) col += a[i * m + j];
        most = std::max(most, col);
      }
    }
    pool.ParallelFor(heads, 1, [&](int64_t h0, int64_t h1) {
      std::vector<double> z(static_cast<size_t>(m * m)), kz(z.size()), t1(z.size()), t2(z.size());
      std::vector<float> k1(static_cast<size_t>(len * m)), k3(static_cast<size_t>(m * len)),
          pinv(static_cast<size_t>(m * m)), attn(k1.size()), nv(static_cast<size_t>(m * d));
      for (int64_t h = h0; h < h1; ++h) {
        // pinv(kernel_2): Z₀ = Kᵀ / most; Z ← ¼ Z (13 I − KZ (15 I − KZ (7 I − KZ))), six times.
        const std::vector<double>& a = k2[h];
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < m; ++j) z[i * m + j] = a[j * m + i] / most;
        }
        for (int step = 0; step < 6; ++step) {
          MatMul(a, z, kz, m);
          for (int64_t i = 0; i < m * m; ++i) t1[i] = -kz[i] + (i % (m + 1) == 0 ? 7.0 : 0.0);
          MatMul(kz, t1, t2, m);
          for (int64_t i = 0; i < m * m; ++i) t2[i] = -t2[i] + (i % (m + 1) == 0 ? 15.0 : 0.0);
          MatMul(kz, t2, t1, m);
          for (int64_t i = 0; i < m * m; ++i) t1[i] = -t1[i] + (i % (m + 1) == 0 ? 13.0 : 0.0);
          MatMul(z, t1, t2, m);
          for (int64_t i = 0; i < m * m; ++i) z[i] = 0.25 * t2[i];
        }
        for (int64_t i = 0; i < m * m; ++i) pinv[i] = static_cast<float>(z[i]);
        // kernel_1 = softmax(q·k̃ᵀ) [L, m]; kernel_3 = softmax(q̃·kᵀ) over the valid keys [m, L].
        GemmNT(len, m, d, scale, q + h * d, ldq, kl.data() + h * m * d, d, 0.0f, k1.data(), m);
        for (int64_t i = 0; i < len; ++i) SoftmaxRow(k1.data() + i * m, m);
        GemmNT(m, len, d, scale, ql.data() + h * m * d, d, k + h * d, ldk, 0.0f, k3.data(), len);
        MaskedSoftmaxRows(k3.data(), m, len, len, s.valid);
        // out = (kernel_1 · pinv) · (kernel_3 · v)
        GemmNN(len, m, m, 1.0f, k1.data(), m, pinv.data(), m, 0.0f, attn.data(), m);
        GemmNN(m, d, len, 1.0f, k3.data(), len, v + h * d, ldv, 0.0f, nv.data(), d);
        GemmNN(len, d, m, 1.0f, attn.data(), m, nv.data(), d, 0.0f, out + h * d, ldo);
      }
    });
  }
  if (s.conv_taps > 0 && conv != nullptr) {
    // The values' depthwise convolution along the positions, per head.
    const int64_t taps = s.conv_taps, half = taps / 2;
    pool.ParallelFor(len, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t h = 0; h < heads; ++h) {
          float* o = out + i * ldo + h * d;
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t p = i + t - half;
            if (p < 0 || p >= len) continue;
            const float w = conv[h * taps + t];
            const float* vp = v + p * ldv + h * d;
            for (int64_t e = 0; e < d; ++e) o[e] += w * vp[e];
          }
        }
      }
    });
  }
}

}  // namespace mnemo::kernels
