// A fixed pool of worker threads that runs all of the CPU backend's parallel work (products split
// by columns, attention by heads, row-wise loops). OpenBLAS is kept single-threaded (blas.h), so
// these are the only compute threads and nothing fights them for cores.
// Between jobs a worker spins for a short while before sleeping on a condition variable: decode
// issues dozens of small jobs per token, and waking a sleeping thread costs tens of microseconds
// on virtual machines, more than many of the jobs themselves.
// Threading: call_mu_ serialises ParallelFor callers; the job fields it sets are published to the
// workers by the generation_ counter (release/acquire), not by a lock. sleep_mu_ guards the
// sleeping hand-off (sleepers_, caller_waiting_) and orders generation bumps against sleepers.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "base/mutex.h"

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
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn)
      MNEMO_EXCLUDES(call_mu_, sleep_mu_);

  // The process-wide pool sized to the machine's hardware threads.
  static ThreadPool& Default();

 private:
  void WorkerLoop(int index) MNEMO_EXCLUDES(sleep_mu_);
  void RunPart(int index);

  std::vector<std::thread> workers_;
  Mutex call_mu_;  // serialises ParallelFor callers
  // The current job; written by the caller before generation_ is bumped (release), read by
  // workers after they observe the new generation (acquire).
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t parts_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers still running the current job
  std::atomic<bool> stop_{false};
  Mutex sleep_mu_;  // guards the sleeping hand-off below
  CondVar wake_cv_;
  CondVar done_cv_;
  int sleepers_ MNEMO_GUARDED_BY(sleep_mu_) = 0;             // workers blocked on wake_cv_
  bool caller_waiting_ MNEMO_GUARDED_BY(sleep_mu_) = false;  // the caller is blocked on done_cv_
};

}  // namespace mnemo::kernels
