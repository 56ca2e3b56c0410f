// The fixed worker pool that runs the CPU kernels' parallel work (thread_pool.h): chunks handed out
// by an atomic counter; between jobs workers spin, then yield, then sleep on a condition variable.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#include "kernels/cpu/cpu_count.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mnemo::kernels {
namespace {

// Spin iterations before yielding (each a pause instruction, ~10–40 ns): a few hundred
// microseconds, longer than the gap between most of a decode step's jobs, shorter than a token.
constexpr int kSpinIterations = 20000;
// Then a worker yields its core in a loop for up to this long before it sleeps. A worker that
// sleeps is woken wherever the scheduler finds room, which with another process holding one core
// is often the caller's own core (measured: decode with a nice-19 busy loop on one of two cores
// fell to 0.7 of quiet), while a yielding worker keeps its core and lets whoever shares it run.
constexpr auto kYieldTime = std::chrono::milliseconds(10);

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

constexpr uint64_t Pack(uint32_t epoch, int64_t chunks, int64_t next) {
  return (uint64_t{epoch} << 32) | (static_cast<uint64_t>(chunks) << 16) |
         static_cast<uint64_t>(next);
}
constexpr uint32_t EpochOf(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
constexpr int64_t ChunksOf(uint64_t state) { return static_cast<int64_t>((state >> 16) & 0xffff); }
constexpr int64_t NextOf(uint64_t state) { return static_cast<int64_t>(state & 0xffff); }

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(num_threads, 1); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    MutexLock lock(&sleep_mu_);
    stop_.store(true, std::memory_order_release);
  }
  wake_cv_.SignalAll();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = new ThreadPool(DefaultThreadCount());
  return *pool;
}

int64_t ThreadPool::MaxChunks(int num_threads) {
  if (num_threads <= 1) return 1;
  return std::min(kMaxChunkCount, int64_t{num_threads} * kChunksPerThread);
}

int64_t ThreadPool::NumChunks(int64_t n, int64_t min_chunk, int64_t max_chunks) {
  if (n <= 0) return 0;
  const int64_t by_size = n / std::max<int64_t>(min_chunk, 1);
  return std::clamp<int64_t>(std::min(by_size, max_chunks), 1, kMaxChunkCount);
}

void ThreadPool::RunChunks(bool worker) {
  uint64_t state = state_.load(std::memory_order_acquire);
  for (;;) {
    const int64_t chunks = ChunksOf(state), next = NextOf(state);
    if (next >= chunks) return;
    // Claiming the chunk is what makes reading the job safe: the job cannot finish, and its
    // fields cannot be rewritten, before this chunk is counted done.
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acquire,
                                      std::memory_order_acquire)) {
      continue;
    }
    const int64_t n = job_n_;
    (*job_)(next * n / chunks, (next + 1) * n / chunks);
    // Release: the chunk's writes (and this thread's reads of the job) happen before the caller
    // sees the job done. After the last chunk the caller may return and start another job.
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks && worker) {
      MutexLock lock(&sleep_mu_);
      if (caller_waiting_) done_cv_.Signal();
    }
    state = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t chunks = NumChunks(n, min_chunk, max_chunks());
  if (chunks == 0) return;
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  MutexLock call_lock(&call_mu_);
  job_ = &fn;
  job_n_ = n;
  done_.store(0, std::memory_order_relaxed);
  ++epoch_;
  {
    // Storing the state under sleep_mu_ means a worker about to sleep either sees it or is
    // already waiting and gets the notification.
    MutexLock lock(&sleep_mu_);
    state_.store(Pack(epoch_, chunks, 0), std::memory_order_release);
    if (sleepers_ > 0) wake_cv_.SignalAll();
  }
  RunChunks(/*worker=*/false);
  // Every chunk is claimed; wait for those still running on workers: spin, yield, then sleep
  // (a caller that sleeps waits for its core to be free again when it is woken).
  auto finished = [&] { return done_.load(std::memory_order_acquire) == chunks; };
  for (int spin = 0; !finished() && spin < kSpinIterations; ++spin) CpuRelax();
  if (finished()) return;
  const auto until = std::chrono::steady_clock::now() + kYieldTime;
  while (!finished() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  if (finished()) return;
  MutexLock lock(&sleep_mu_);
  caller_waiting_ = true;
  while (!finished()) done_cv_.Wait(&sleep_mu_);
  caller_waiting_ = false;
}

void ThreadPool::WorkerLoop() {
  uint32_t seen = 0;
  for (;;) {
    // Wait for a new job: spin first, then yield, then sleep.
    uint64_t state = state_.load(std::memory_order_acquire);
    for (int spin = 0; EpochOf(state) == seen && spin < kSpinIterations; ++spin) {
      if (stop_.load(std::memory_order_acquire)) return;
      CpuRelax();
      state = state_.load(std::memory_order_acquire);
    }
    if (EpochOf(state) == seen) {
      const auto until = std::chrono::steady_clock::now() + kYieldTime;
      while (EpochOf(state) == seen && !stop_.load(std::memory_order_acquire) &&
             std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
        state = state_.load(std::memory_order_acquire);
      }
    }
    if (EpochOf(state) == seen) {
      MutexLock lock(&sleep_mu_);
      ++sleepers_;
      while (!stop_.load(std::memory_order_acquire) &&
             EpochOf(state_.load(std::memory_order_acquire)) == seen) {
        wake_cv_.Wait(&sleep_mu_);
      }
      --sleepers_;
      if (stop_.load(std::memory_order_acquire)) return;
      state = state_.load(std::memory_order_acquire);
    }
    // A worker that wakes late finds every chunk claimed and goes back to waiting.
    seen = EpochOf(state);
    RunChunks(/*worker=*/true);
  }
}

}  // namespace mnemo::kernels
