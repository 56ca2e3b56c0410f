// Launchers for dtype conversion on the GPU (weights arrive as f16/bf16 and are widened to
// float32 for the f32 oracle path). Plain C++ header: including it needs no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mnemo::kernels::cuda {

// Number of CUDA devices, 0 when there is no driver or no device (never fails).
int DeviceCount();

// Converts `count` f16 (is_bf16 = false) or bf16 (is_bf16 = true) elements at host address
// `src` to float32 at host address `dst`, on device 0. Returns "" or the CUDA error with the
// call site.
std::string WidenToFloatOnDevice(const uint16_t* src, float* dst, size_t count, bool is_bf16);

}  // namespace mnemo::kernels::cuda
