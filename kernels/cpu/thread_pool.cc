// The fixed worker pool that runs the CPU kernels' parallel work (thread_pool.h): workers spin
// briefly between jobs, then sleep on a condition variable.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mnemo::kernels {
namespace {

// Spin iterations before blocking (each a pause instruction, ~10–40 ns): a few hundred
// microseconds, longer than the gap between a decode step's jobs, far shorter than a token.
constexpr int kSpinIterations = 20000;

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(num_threads, 1); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
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
  static ThreadPool* pool =
      new ThreadPool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return *pool;
}

void ThreadPool::RunPart(int index) {
  // Part i is [i·n/parts, (i+1)·n/parts): sizes differ by at most one, each ≥ min_chunk.
  if (index < parts_) {
    const int64_t begin = index * job_n_ / parts_;
    const int64_t end = (index + 1) * job_n_ / parts_;
    if (begin < end) (*job_)(begin, end);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(min_chunk, 1));
  const int64_t parts = std::min<int64_t>(num_threads(), max_parts);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  MutexLock call_lock(&call_mu_);
  job_ = &fn;
  job_n_ = n;
  parts_ = parts;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    // Bumping the generation under sleep_mu_ means a worker about to sleep either sees it or is
    // already waiting and gets the notification.
    MutexLock lock(&sleep_mu_);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleepers_ > 0) wake_cv_.SignalAll();
  }
  RunPart(0);
  for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < kSpinIterations) {
      CpuRelax();
      continue;
    }
    MutexLock lock(&sleep_mu_);
    caller_waiting_ = true;
    while (pending_.load(std::memory_order_acquire) != 0) done_cv_.Wait(&sleep_mu_);
    caller_waiting_ = false;
    break;
  }
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Wait for a new generation: spin first, then sleep.
    uint64_t current = generation_.load(std::memory_order_acquire);
    for (int spin = 0; current == seen && spin < kSpinIterations; ++spin) {
      if (stop_.load(std::memory_order_acquire)) return;
      CpuRelax();
      current = generation_.load(std::memory_order_acquire);
    }
    if (current == seen) {
      MutexLock lock(&sleep_mu_);
      ++sleepers_;
      while (!stop_.load(std::memory_order_acquire) &&
             generation_.load(std::memory_order_acquire) == seen) {
        wake_cv_.Wait(&sleep_mu_);
      }
      --sleepers_;
      if (stop_.load(std::memory_order_acquire)) return;
      current = generation_.load(std::memory_order_acquire);
    }
    seen = current;
    RunPart(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      MutexLock lock(&sleep_mu_);
      if (caller_waiting_) done_cv_.Signal();
    }
  }
}

}  // namespace mnemo::kernels
