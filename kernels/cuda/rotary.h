// Rotary position embedding on the GPU: the twin of kernels/cpu/rotary.h (same halves, the
// float32 angle position·inv_freq[i], its cosine and sine in double, rounded).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mnemo::kernels::cuda {

// Rotates, in place, the `num_heads` head vectors at the start of each of x's `rows` rows (`ld`
// floats apart) by positions[r] (device, one per row).
cudaError_t ApplyRotary(float* x, int64_t ld, int64_t rows, const int64_t* positions, int num_heads,
                        int head_dim, const float* inv_freq, cudaStream_t stream);

}  // namespace mnemo::kernels::cuda
