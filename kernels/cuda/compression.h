// The Compressive Transformer's fixed compression functions on the GPU (MODEL-SPEC §2.2), the
// same as kernels/cpu/compression.h: each group of c evicted rows, oldest first, becomes one row.
// Rows are read through device pointer tables, so one launch serves a whole batch whose evicted
// rows lie in different places (a session's pending buffer, its hidden-row ring, the segment).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mnemo::kernels::cuda {

enum class GroupOp : int { kMax = 0, kMean = 1, kPackTaps = 2, kMostUsed = 3 };

// For g < groups, with r_k = rows[g·c + k] (device pointers to rows of d_model floats):
//   kMax / kMean: out[g, :] = elementwise max / mean of r_0 … r_{c−1}; out is [groups, d_model].
//   kPackTaps: out[g, i·taps + k] = r_{k·step}[i] for k < taps; out is [groups, d_model·taps]: the
//     packing that lets a [D, D, taps] convolution weight, viewed as [D, D·taps], multiply
//     every group in one product (conv1d: taps = c, step = 1; dilated_conv: taps = K,
//     step = c / K).
//   kMostUsed: out[g, :] = the r_k whose mass *masses[g·c + k] is largest (the oldest on ties);
//     `masses` holds one device pointer per row and is read by this op only.
cudaError_t GroupRows(const float* const* rows, const float* const* masses, int64_t groups, int c,
                      int64_t d_model, GroupOp op, int taps, int step, float* out,
                      cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
