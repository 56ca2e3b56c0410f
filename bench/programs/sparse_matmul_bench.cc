// sparse_matmul_bench: decode-shaped products y = W·x (n = 1) with the dense f32 matrix
// (OpenBLAS sgemv through kernels::Gemv, one thread) against the CSR form at several densities
// and the 2:4 form (kernels/cpu/sparse_matmul.h), for a 1024×4096 and a 4096×1024 matrix. Prints
// one JSON line per (shape, format, threads).
//
//   sparse_matmul_bench [--runs N] [--warmup W] [--footprint-mb F] [--seed S]
//
// Each timed call reads the next of several identical copies of the matrix, enough copies to
// total F MiB (default 512), so the weights come from DRAM as in a decode step over a whole
// model rather than from the cache. bytes = the matrix's storage + x + y; gb_per_s = bytes /
// median. The sparse kernels run on a 1-thread pool (threads 1, beside sgemv) and on
// ThreadPool::Default() (threads = hardware threads).
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/sparse_matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace {

using mnemo::kernels::CsrMatrix;
using mnemo::kernels::Sparse24Matrix;
using mnemo::kernels::ThreadPool;

struct Options {
  int runs = 200;
  int warmup = 10;
  int64_t footprint_mb = 512;
  uint32_t seed = 0;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "sparse_matmul_bench: %s\n", message.c_str());
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) Die("missing value after " + arg);
    const long long value = std::atoll(argv[++i]);
    if (arg == "--runs") {
      o.runs = static_cast<int>(value);
    } else if (arg == "--warmup") {
      o.warmup = static_cast<int>(value);
    } else if (arg == "--footprint-mb") {
      o.footprint_mb = value;
    } else if (arg == "--seed") {
      o.seed = static_cast<uint32_t>(value);
    } else {
      Die("unknown flag " + arg);
    }
  }
  if (o.runs < 1 || o.warmup < 0 || o.footprint_mb < 0) Die("bad --runs / --warmup / --footprint");
  return o;
}

// Enough copies of a matrix of `bytes` to fill the footprint (at least 1, at most 1024).
int64_t Copies(size_t bytes, const Options& o) {
  const int64_t want = (o.footprint_mb << 20) / std::max<int64_t>(1, static_cast<int64_t>(bytes));
  return std::clamp<int64_t>(want + 1, 1, 1024);
}

// Median microseconds of `runs` calls of fn(copy) after `warmup`, cycling through the copies.
double MedianMicros(const Options& o, int64_t copies, const std::function<void(int64_t)>& fn) {
  int64_t next = 0;
  for (int i = 0; i < o.warmup; ++i) fn(next++ % copies);
  std::vector<double> us(static_cast<size_t>(o.runs));
  for (double& t : us) {
    const auto start = std::chrono::steady_clock::now();
    fn(next++ % copies);
    t = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

void Print(int64_t rows, int64_t cols, const char* format, double density, int threads,
           int64_t copies, double us, size_t matrix_bytes) {
  const size_t bytes = matrix_bytes + static_cast<size_t>(rows + cols) * sizeof(float);
  std::printf(
      "{\"rows\": %" PRId64 ", \"cols\": %" PRId64
      ", \"n\": 1, \"format\": \"%s\", \"density\": %.2f, \"threads\": %d, \"copies\": %" PRId64
      ", \"median_us\": %.2f, \"bytes\": %zu, \"gb_per_s\": %.2f}\n",
      rows, cols, format, density, threads, copies, us, bytes, bytes / (us * 1e3));
  std::fflush(stdout);
}

void RunShape(int64_t rows, int64_t cols, const Options& o, std::mt19937& rng) {
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(cols)), y(static_cast<size_t>(rows));
  for (float& v : x) v = val(rng);
  std::vector<float> dense(static_cast<size_t>(rows * cols));
  for (float& v : dense) v = val(rng);
  ThreadPool single(1);
  ThreadPool& all = ThreadPool::Default();

  {
    const size_t bytes = dense.size() * sizeof(float);
    const int64_t copies = Copies(bytes, o);
    std::vector<std::vector<float>> w(static_cast<size_t>(copies), dense);
    mnemo::kernels::UseSingleThreadedBlas();
    const double us = MedianMicros(o, copies, [&](int64_t c) {
      mnemo::kernels::Gemv(rows, cols, w[c].data(), cols, x.data(), 0.0f, y.data());
    });
    Print(rows, cols, "dense_sgemv", 1.0, 1, copies, us, bytes);
  }

  for (double density : {0.5, 0.2, 0.1}) {
    std::vector<float> pruned = dense;
    std::bernoulli_distribution keep(density);
    for (float& v : pruned) v = keep(rng) ? v : 0.0f;
    const CsrMatrix csr = mnemo::kernels::ToCsr(pruned.data(), rows, cols);
    const int64_t copies = Copies(csr.bytes(), o);
    std::vector<CsrMatrix> w(static_cast<size_t>(copies), csr);
    for (ThreadPool* pool : {&single, &all}) {
      const double us = MedianMicros(o, copies, [&](int64_t c) {
        mnemo::kernels::CsrMatmul(w[c], x.data(), 1, cols, nullptr, y.data(), rows, *pool);
      });
      Print(rows, cols, "csr", static_cast<double>(csr.nnz()) / (rows * cols), pool->num_threads(),
            copies, us, csr.bytes());
    }
  }

  {
    // Magnitude 2:4 pruning: keep the two largest |w| of each group.
    std::vector<float> pruned = dense;
    for (int64_t g = 0; g < rows * cols / 4; ++g) {
      float* wg = pruned.data() + 4 * g;
      int order[4] = {0, 1, 2, 3};
      std::sort(order, order + 4, [&](int a, int b) { return std::abs(wg[a]) > std::abs(wg[b]); });
      wg[order[2]] = wg[order[3]] = 0.0f;
    }
    const Sparse24Matrix s24 = mnemo::kernels::To24(pruned.data(), rows, cols);
    const int64_t copies = Copies(s24.bytes(), o);
    std::vector<Sparse24Matrix> w(static_cast<size_t>(copies), s24);
    for (ThreadPool* pool : {&single, &all}) {
      const double us = MedianMicros(o, copies, [&](int64_t c) {
        mnemo::kernels::Sparse24Matmul(w[c], x.data(), 1, cols, nullptr, y.data(), rows, *pool);
      });
      Print(rows, cols, "2:4", 0.5, pool->num_threads(), copies, us, s24.bytes());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  std::mt19937 rng(o.seed);
  RunShape(1024, 4096, o, rng);
  RunShape(4096, 1024, o, rng);
  return 0;
}
