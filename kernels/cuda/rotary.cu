// Rotary position embedding on the GPU (rotary.h): one thread per (row, head, pair).
#include <algorithm>

#include "kernels/cuda/rotary.h"

namespace mnemo::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void RotaryKernel(float* x, int64_t ld, int64_t n, const int64_t* positions,
                             int num_heads, int half, const float* inv_freq) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(t % half);
    const int64_t rh = t / half;
    const int h = static_cast<int>(rh % num_heads);
    const int64_t r = rh / num_heads;
    const float angle = __fmul_rn(static_cast<float>(positions[r]), inv_freq[i]);
    const auto c = static_cast<float>(cos(static_cast<double>(angle)));
    const auto s = static_cast<float>(sin(static_cast<double>(angle)));
    float* v = x + r * ld + static_cast<int64_t>(h) * 2 * half;
    const float x1 = v[i], x2 = v[half + i];
    v[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    v[half + i] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

}  // namespace

cudaError_t ApplyRotary(float* x, int64_t ld, int64_t rows, const int64_t* positions, int num_heads,
                        int head_dim, const float* inv_freq, cudaStream_t stream) {
  const int half = head_dim / 2;
  const int64_t n = rows * num_heads * half;
  if (n == 0) return cudaSuccess;
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  RotaryKernel<<<blocks, kThreads, 0, stream>>>(x, ld, n, positions, num_heads, half, inv_freq);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
