// The compressive memory's row grouping on the GPU (compression.h): pool, pack taps or pick the
// most used row of each group through device pointer tables; twin of kernels/cpu/compression.
#include "kernels/cuda/compression.h"

namespace mnemo::kernels::cuda {
namespace {

// Grid (ceil(d_model / 256), groups): thread i of a block handles column i of one group.
__global__ void GroupRowsKernel(const float* const* rows, const float* const* masses, int c,
                                int64_t d_model, GroupOp op, int taps, int step, float* out) {
  const int64_t g = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= d_model) return;
  const float* const* group = rows + g * c;
  if (op == GroupOp::kMostUsed) {
    int best = 0;
    float most = *masses[g * c];
    for (int k = 1; k < c; ++k) {
      const float m = *masses[g * c + k];
      if (m > most) {
        most = m;
        best = k;
      }
    }
    out[g * d_model + i] = group[best][i];
    return;
  }
  if (op == GroupOp::kPackTaps) {
    float* o = out + g * d_model * taps + i * taps;
    for (int k = 0; k < taps; ++k) o[k] = group[k * step][i];
    return;
  }
  float acc = group[0][i];
  for (int k = 1; k < c; ++k) {
    const float x = group[k][i];
    acc = op == GroupOp::kMax ? fmaxf(acc, x) : acc + x;
  }
  out[g * d_model + i] = op == GroupOp::kMean ? acc / static_cast<float>(c) : acc;
}

}  // namespace

cudaError_t GroupRows(const float* const* rows, const float* const* masses, int64_t groups, int c,
                      int64_t d_model, GroupOp op, int taps, int step, float* out,
                      cudaStream_t stream) {
  if (groups <= 0 || d_model <= 0) return cudaSuccess;
  if (c <= 0 || groups > 65535 || (op == GroupOp::kMostUsed && masses == nullptr) ||
      (op == GroupOp::kPackTaps && (taps <= 0 || step <= 0 || (taps - 1) * step >= c))) {
    return cudaErrorInvalidValue;
  }
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>((d_model + kThreads - 1) / kThreads),
                  static_cast<unsigned>(groups));
  GroupRowsKernel<<<grid, kThreads, 0, stream>>>(rows, masses, c, d_model, op, taps, step, out);
  return cudaGetLastError();
}

}  // namespace mnemo::kernels::cuda
