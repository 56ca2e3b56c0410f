#include "bench/programs/cuda_limits.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include <cublas_v2.h>

namespace mnemo::bench {
namespace {

#define LIMITS_CHECK(expr)                                                         \
  do {                                                                             \
    const auto err_ = (expr);                                                      \
    if (err_ != 0) {                                                               \
      std::fprintf(stderr, "physical_limits: %s failed (%d)\n", #expr, int(err_)); \
      return 1;                                                                    \
    }                                                                              \
  } while (0)

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int RunCudaLimits(bool quick) {
  cudaDeviceProp prop{};
  LIMITS_CHECK(cudaGetDeviceProperties(&prop, 0));
  int mem_clock_khz = 0, bus_width = 0;
  cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0);
  cudaDeviceGetAttribute(&bus_width, cudaDevAttrGlobalMemoryBusWidth, 0);
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"cuda_info\",\"device\":\"%s\",\"sm\":%d%d,"
      "\"multiprocessors\":%d,\"memory_gib\":%.3f,\"l2_mib\":%.1f}\n",
      prop.name, prop.major, prop.minor, prop.multiProcessorCount,
      static_cast<double>(prop.totalGlobalMem) / (1 << 30),
      static_cast<double>(prop.l2CacheSize) / (1 << 20));
  std::fflush(stdout);
  cudaStream_t stream;
  LIMITS_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  LIMITS_CHECK(cudaEventCreate(&start));
  LIMITS_CHECK(cudaEventCreate(&stop));

  // Copy bandwidth: 1 GiB buffers, far beyond L2, filled with non-zero bytes first.
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  LIMITS_CHECK(cudaMalloc(&a, bytes));
  LIMITS_CHECK(cudaMalloc(&b, bytes));
  LIMITS_CHECK(cudaMemsetAsync(a, 0x5a, bytes, stream));
  LIMITS_CHECK(cudaMemsetAsync(b, 0x3c, bytes, stream));
  const int reps = quick ? 5 : 20;
  std::vector<double> gbps;
  for (int r = -2; r < reps; ++r) {
    LIMITS_CHECK(cudaEventRecord(start, stream));
    LIMITS_CHECK(
        cudaMemcpyAsync(r % 2 ? a : b, r % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, stream));
    LIMITS_CHECK(cudaEventRecord(stop, stream));
    LIMITS_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LIMITS_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (r >= 0) gbps.push_back(2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9);
  }
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"cuda_copy\",\"bytes\":%zu,"
      "\"d2d_copy_gb_s\":%.6g,\"best_gb_s\":%.6g,\"reps\":%d,"
      "\"note\":\"bytes read + written per second\"}\n",
      bytes, Median(gbps), *std::max_element(gbps.begin(), gbps.end()), reps);
  std::fflush(stdout);
  LIMITS_CHECK(cudaFree(a));
  LIMITS_CHECK(cudaFree(b));

  // float32 GEMM peak through cuBLAS without TF32 (random-ish non-zero data).
  const int n = quick ? 4096 : 8192;
  float *x = nullptr, *y = nullptr, *z = nullptr;
  const size_t mat = static_cast<size_t>(n) * n * sizeof(float);
  LIMITS_CHECK(cudaMalloc(&x, mat));
  LIMITS_CHECK(cudaMalloc(&y, mat));
  LIMITS_CHECK(cudaMalloc(&z, mat));
  std::vector<float> host(static_cast<size_t>(n) * n);
  for (size_t i = 0; i < host.size(); ++i)
    host[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f;
  LIMITS_CHECK(cudaMemcpy(x, host.data(), mat, cudaMemcpyHostToDevice));
  LIMITS_CHECK(cudaMemcpy(y, host.data(), mat, cudaMemcpyHostToDevice));
  cublasHandle_t handle;
  LIMITS_CHECK(cublasCreate(&handle));
  LIMITS_CHECK(cublasSetStream(handle, stream));
  LIMITS_CHECK(cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH));
  const float one = 1.0f, zero = 0.0f;
  std::vector<double> tflops;
  for (int r = -2; r < (quick ? 3 : 10); ++r) {
    LIMITS_CHECK(cudaEventRecord(start, stream));
    LIMITS_CHECK(
        cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, x, n, y, n, &zero, z, n));
    LIMITS_CHECK(cudaEventRecord(stop, stream));
    LIMITS_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LIMITS_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (r >= 0) tflops.push_back(2.0 * n * static_cast<double>(n) * n / (ms * 1e-3) / 1e12);
  }
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"cuda_sgemm\",\"n\":%d,\"f32_tflops\":%.6g,"
      "\"note\":\"cuBLAS SGEMM, pedantic float32 (no TF32)\"}\n",
      n, Median(tflops));
  cublasDestroy(handle);
  cudaFree(x);
  cudaFree(y);
  cudaFree(z);
  return 0;
}

}  // namespace mnemo::bench
