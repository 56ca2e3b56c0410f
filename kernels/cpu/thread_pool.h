// A fixed pool of worker threads that runs all of the CPU backend's parallel work (products split
// by columns, attention by heads, row-wise loops). OpenBLAS is kept single-threaded (blas.h), so
// these are the only compute threads.
// A job is split into more chunks than threads, and every thread, the caller included, takes the
// next unclaimed chunk from an atomic counter until none is left. A thread that the OS deschedules
// (another process on its core, a CFS quota) holds up at most the chunk it is running: the others
// take its share, and the caller never waits for a worker that has not started.
// Between jobs a worker spins for a short while (~0.5 ms), then yields its core in a loop (up to
// 10 ms), then sleeps on a condition variable: decode issues dozens of small jobs per token, and
// waking a sleeping thread costs tens of microseconds on virtual machines, more than many of the
// jobs themselves, and lets the scheduler move it onto a busy core. The caller waits for the
// chunks still running on workers the same way. An idle pool sleeps.
// Threading: call_mu_ serialises ParallelFor callers. A job's fields are published by the release
// store of state_ and read only by a thread that has claimed one of its chunks (a successful
// compare-exchange of state_), so a worker that wakes after the job is over never reads them.
// sleep_mu_ guards the sleeping hand-off (sleepers_, caller_waiting_).
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
  // Chunks per thread a job is split into at most: enough that a descheduled thread's share is
  // small and taken by the others, few enough that claiming a chunk costs nothing measurable.
  static constexpr int64_t kChunksPerThread = 4;

  // `num_threads` counts the caller: 1 means no workers (everything runs inline).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // The most chunks ParallelFor splits a job into (1 without workers). Callers that pre-split their
  // work into items (column blocks, row ranges of equal cost) aim for this many.
  int64_t max_chunks() const { return MaxChunks(num_threads()); }
  static int64_t MaxChunks(int num_threads);

  // The number of chunks ParallelFor(n, min_chunk, ...) uses on a pool of `max_chunks`:
  // min(max_chunks, n / min_chunk), at least 1 (0 for n ≤ 0). Chunk i is
  // [i·n/chunks, (i+1)·n/chunks): sizes differ by at most one and are at least min_chunk. The
  // boundaries depend on nothing else (never on timing), so results are reproducible bit for bit.
  static int64_t NumChunks(int64_t n, int64_t min_chunk, int64_t max_chunks);

  // Runs fn(begin, end) on every chunk of [0, n) (see NumChunks), on the caller and the workers,
  // each chunk once, in no particular order, and returns when all are done. Calls from several
  // threads are serialised; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn)
      MNEMO_EXCLUDES(call_mu_, sleep_mu_);

  // The process-wide pool, sized by DefaultThreadCount() (cpu_count.h): the CPUs this process may
  // run on, capped by its cgroup's CPU quota, or MNEMO_CPU_THREADS.
  static ThreadPool& Default();

 private:
  // state_ packs the current job's epoch (bits 32–63), its chunk count (16–31) and the next
  // unclaimed chunk (0–15).
  static constexpr int64_t kMaxChunkCount = (int64_t{1} << 16) - 1;

  void WorkerLoop() MNEMO_EXCLUDES(sleep_mu_);
  // Claims and runs chunks of the current job until none is left; `worker` wakes a sleeping
  // caller after the job's last chunk.
  void RunChunks(bool worker) MNEMO_EXCLUDES(sleep_mu_);

  std::vector<std::thread> workers_;
  Mutex call_mu_;  // serialises ParallelFor callers
  uint32_t epoch_ MNEMO_GUARDED_BY(call_mu_) = 0;
  // The current job; written by the caller before state_ is stored (release), read only after a
  // chunk of it is claimed (acquire), and rewritten only after every chunk is done.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};  // chunks of the current job finished
  std::atomic<bool> stop_{false};
  Mutex sleep_mu_;  // guards the sleeping hand-off below
  CondVar wake_cv_;
  CondVar done_cv_;
  int sleepers_ MNEMO_GUARDED_BY(sleep_mu_) = 0;             // workers blocked on wake_cv_
  bool caller_waiting_ MNEMO_GUARDED_BY(sleep_mu_) = false;  // the caller is blocked on done_cv_
};

}  // namespace mnemo::kernels
