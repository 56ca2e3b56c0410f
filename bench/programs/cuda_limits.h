// The GPU's physical limits, measured in the same run as the GPU benchmarks: device-to-device
// copy bandwidth (bytes read + written per second) and cuBLAS float32 GEMM throughput (no TF32,
// the ceiling of mnemo's f32 path). Prints JSON lines; returns a process exit code.
#pragma once

namespace mnemo::bench {

int RunCudaLimits(bool quick);

}  // namespace mnemo::bench
