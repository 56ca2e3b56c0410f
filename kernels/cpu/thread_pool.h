// A fixed pool of worker threads that runs all of the CPU backend's parallel work (products split
// by columns, attention by heads, row-wise loops). OpenBLAS is kept single-threaded (blas.h), so
// these are the only compute threads and nothing fights them for cores.
// Between jobs a worker spins for a short while before sleeping on a condition variable: decode
// issues dozens of small jobs per token, and waking a sleeping thread costs tens of microseconds
// on virtual machines, more than many of the jobs themselves.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mnemo::kernels {

class ThreadPool {
 public:
  // `num_threads` counts the caller: 1 means no workers (everything runs inline).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over [0, n) split into at most num_threads() contiguous chunks of at least
  // `min_chunk` items (sizes differ by at most one), and returns when all are done. Calls from
  // several threads are serialised; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool sized to the machine's hardware threads.
  static ThreadPool& Default();

 private:
  void WorkerLoop(int index);
  void RunPart(int index);

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises ParallelFor callers
  // The current job; written by the caller before generation_ is bumped (release), read by
  // workers after they observe the new generation (acquire).
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t parts_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers still running the current job
  std::atomic<bool> stop_{false};
  std::mutex sleep_mu_;  // guards the sleeping hand-off below
  std::condition_variable wake_cv_;
  std::condition_variable done_cv_;
  int sleepers_ = 0;             // workers blocked on wake_cv_ (guarded by sleep_mu_)
  bool caller_waiting_ = false;  // the caller is blocked on done_cv_ (guarded by sleep_mu_)
};

}  // namespace mnemo::kernels
