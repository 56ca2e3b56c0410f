// physical_limits: the machine's limits that bound the engine, measured in the benchmark's run
// and printed as JSON lines (one per measurement):
//   bandwidth  STREAM-like kernels over arrays much larger than the last-level cache, with one
//              thread and with every hardware thread: "read" (sum of an array: the access
//              pattern of a decode step streaming weights and memory) and "triad"
//              (a = b + s·c, bytes counted as STREAM does: 2 reads + 1 write, no write-allocate).
//              Also "read" over a working-set-sized array (default 256 MiB ≈ one decode step's
//              weights + state) to show whether caches change the picture.
//   sgemv      OpenBLAS sgemv streaming a large matrix (what a decode step's products can reach).
//   sgemm      OpenBLAS sgemm, large square and the prefill shapes x[S, in] · w[out, in]ᵀ with
//              (in, out) = (512, 1536), (512, 2048), (2048, 512), S = 128 and 512; 1 and all
//              OpenBLAS threads.
// Each measurement: a warm-up then several repetitions; min / median / max and best (= max).
//
//   physical_limits [--quick] [--large-mib N] [--ws-mib N]
//   physical_limits --cuda [--quick]   the GPU instead (bench/cuda_limits.h): copy bandwidth
//                                      and float32 GEMM peak
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#ifdef MNEMO_WITH_CUDA
#include "bench/programs/cuda_limits.h"
#endif

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define BENCH_MULTIVERSION __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define BENCH_MULTIVERSION
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  double min, median, max;
};

Stats Summarise(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return {v.front(), n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v.back()};
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// 64 independent accumulators (4 zmm or 8 ymm chains) so the sum is bound by loads, not latency.
BENCH_MULTIVERSION float SumRange(const float* p, int64_t n) {
  constexpr int kLanes = 64;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += p[i + l];
  }
  float total = 0.0f;
  for (; i < n; ++i) total += p[i];
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

BENCH_MULTIVERSION void TriadRange(float* a, const float* b, const float* c, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// Runs fn(thread, begin, end) over [0, n) split into `threads` contiguous parts, one std::thread
// each (the caller takes part 0).
void Parallel(int threads, int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) {
    workers.emplace_back([&, t] { fn(t, std::min(n, t * chunk), std::min(n, (t + 1) * chunk)); });
  }
  fn(0, 0, std::min(n, chunk));
  for (auto& w : workers) w.join();
}

void PrintStats(const char* key, const Stats& s) {
  std::printf("\"%s\":{\"min\":%.6g,\"median\":%.6g,\"max\":%.6g}", key, s.min, s.median, s.max);
}

volatile float g_sink;

void Bandwidth(const char* kernel, const char* array, int threads, int64_t mib, int reps) {
  const int64_t n = mib * 1024 * 1024 / static_cast<int64_t>(sizeof(float));
  const bool triad = std::strcmp(kernel, "triad") == 0;
  // Allocate without touching, then first-touch in parallel with the same split as the kernel.
  float* a = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  float* b = triad ? static_cast<float*>(std::aligned_alloc(64, n * sizeof(float))) : nullptr;
  float* c = triad ? static_cast<float*>(std::aligned_alloc(64, n * sizeof(float))) : nullptr;
  Parallel(threads, n, [&](int, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      a[i] = 1.0f;
      if (triad) {
        b[i] = 2.0f;
        c[i] = 0.5f;
      }
    }
  });
  std::vector<float> partial(threads);
  std::vector<double> gbps;
  const double bytes = static_cast<double>(n) * sizeof(float) * (triad ? 3 : 1);
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    if (triad) {
      Parallel(threads, n, [&](int, int64_t lo, int64_t hi) {
        TriadRange(a + lo, b + lo, c + lo, 0.5f, hi - lo);
      });
    } else {
      Parallel(threads, n,
               [&](int t, int64_t lo, int64_t hi) { partial[t] = SumRange(a + lo, hi - lo); });
    }
    const double s = Seconds(t0, Clock::now());
    if (r > 0) gbps.push_back(bytes / s / 1e9);  // first pass is the warm-up
    g_sink = partial[0] + a[n / 2];
  }
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"bandwidth\",\"kernel\":\"%s\",\"array\":\"%s\","
      "\"threads\":%d,\"array_mib\":%lld,\"bytes_per_pass\":%.0f,",
      kernel, array, threads, static_cast<long long>(mib), bytes);
  const Stats st = Summarise(gbps);
  PrintStats("gbps", st);
  std::printf(",\"best_gbps\":%.6g,\"reps\":%d}\n", st.max, reps);
  std::fflush(stdout);
  std::free(a);
  std::free(b);
  std::free(c);
}

void Sgemv(int threads, int64_t out, int64_t in, int reps) {
  openblas_set_num_threads(threads);
  std::vector<float> w(out * in, 0.001f), x(in, 1.0f), y(out);
  std::vector<double> gbps;
  const double bytes = static_cast<double>(out * in) * sizeof(float);
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f,
                w.data(), static_cast<int>(in), x.data(), 1, 0.0f, y.data(), 1);
    const double s = Seconds(t0, Clock::now());
    if (r > 0) gbps.push_back(bytes / s / 1e9);
  }
  g_sink = y[0];
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"sgemv\",\"threads\":%d,\"out\":%lld,\"in\":%lld,"
      "\"matrix_mib\":%.1f,",
      threads, static_cast<long long>(out), static_cast<long long>(in), bytes / 1048576.0);
  const Stats st = Summarise(gbps);
  PrintStats("gbps", st);
  std::printf(",\"best_gbps\":%.6g,\"reps\":%d}\n", st.max, reps);
  std::fflush(stdout);
}

// C[m, n] = A[m, k] · B[n, k]ᵀ, the engine's Linear layout.
void Sgemm(const char* shape, int threads, int64_t m, int64_t n, int64_t k, int reps) {
  openblas_set_num_threads(threads);
  std::vector<float> a(m * k, 0.001f), b(n * k, 0.002f), c(m * n);
  std::vector<double> gflops;
  const double flops = 2.0 * m * n * k;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k), b.data(),
                static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
    const double s = Seconds(t0, Clock::now());
    if (r > 0) gflops.push_back(flops / s / 1e9);
  }
  g_sink = c[0];
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"sgemm\",\"shape\":\"%s\",\"threads\":%d,"
      "\"m\":%lld,\"n\":%lld,\"k\":%lld,",
      shape, threads, static_cast<long long>(m), static_cast<long long>(n),
      static_cast<long long>(k));
  const Stats st = Summarise(gflops);
  PrintStats("gflops", st);
  std::printf(",\"best_gflops\":%.6g,\"reps\":%d}\n", st.max, reps);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, cuda = false;
  int64_t large_mib = 1024, ws_mib = 256;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--large-mib" && i + 1 < argc) {
      large_mib = std::atoll(argv[++i]);
    } else if (arg == "--ws-mib" && i + 1 < argc) {
      ws_mib = std::atoll(argv[++i]);
    } else if (arg == "--cuda") {
      cuda = true;
    } else {
      std::fprintf(stderr,
                   "usage: physical_limits [--quick] [--large-mib N] [--ws-mib N] [--cuda]\n");
      return 1;
    }
  }
  if (cuda) {  // the GPU's limits only
#ifdef MNEMO_WITH_CUDA
    return mnemo::bench::RunCudaLimits(quick);
#else
    std::fprintf(stderr, "physical_limits: built without CUDA\n");
    return 2;
#endif
  }
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int blas_default = openblas_get_num_threads();
  std::printf(
      "{\"impl\":\"machine\",\"figure\":\"info\",\"hardware_threads\":%d,"
      "\"openblas_threads_default\":%d,\"openblas_core\":\"%s\",\"openblas_config\":\"%s\","
      "\"openblas_coretype_env\":\"%s\"}\n",
      hw, blas_default, openblas_get_corename(), openblas_get_config(),
      std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "");
  std::fflush(stdout);
  const int reps = quick ? 3 : 7;
  std::vector<int> thread_counts{1};
  if (hw > 1) thread_counts.push_back(hw);

  for (int t : thread_counts) {
    Bandwidth("read", "large", t, large_mib, reps);
    Bandwidth("triad", "large", t, large_mib / 2, reps);  // 3 arrays of large/2
    Bandwidth("read", "working_set", t, ws_mib, reps);
  }
  // sgemv over a 256 MiB and a 64 MiB matrix (in = 512 like the model's width).
  for (int t : thread_counts) {
    Sgemv(t, 128 * 1024, 512, reps);
    Sgemv(t, 32 * 1024, 512, reps);
  }
  for (int t : thread_counts) {
    Sgemm("square", t, 2048, 2048, 2048, quick ? 2 : 4);
    for (int64_t s : {128, 512}) {
      Sgemm("prefill_qkv", t, s, 1536, 512, reps);
      Sgemm("prefill_fc1", t, s, 2048, 512, reps);
      Sgemm("prefill_fc2", t, s, 512, 2048, reps);
    }
  }
  openblas_set_num_threads(blas_default);
  return 0;
}
