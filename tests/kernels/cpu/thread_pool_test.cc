// kernels/cpu/thread_pool: ParallelFor runs every chunk of [0, n) exactly once with boundaries
// that depend only on (n, min_chunk, pool size); a worker blocked inside a chunk does not hold up
// the rest of the job (the caller takes its share); many small jobs back to back, from several
// callers, stay correct (the tsan preset runs these).
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::kernels {
namespace {

using Chunk = std::pair<int64_t, int64_t>;

// The chunks NumChunks promises, in order.
std::vector<Chunk> ExpectedChunks(int64_t n, int64_t min_chunk, int64_t max_chunks) {
  const int64_t chunks = ThreadPool::NumChunks(n, min_chunk, max_chunks);
  std::vector<Chunk> out;
  for (int64_t i = 0; i < chunks; ++i) out.emplace_back(i * n / chunks, (i + 1) * n / chunks);
  return out;
}

void CheckCoverage(ThreadPool& pool, int64_t n, int64_t min_chunk) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(std::max<int64_t>(n, 1)));
  std::mutex mu;
  std::vector<Chunk> chunks;
  pool.ParallelFor(n, min_chunk, [&](int64_t begin, int64_t end) {
    {
      std::lock_guard<std::mutex> lock(mu);
      chunks.emplace_back(begin, end);
    }
    for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
        << "index " << i << " of n=" << n << " min_chunk=" << min_chunk
        << " threads=" << pool.num_threads();
  }
  if (n <= 0) {
    EXPECT_TRUE(chunks.empty()) << "fn called for n=" << n;
    return;
  }
  EXPECT_LE(static_cast<int64_t>(chunks.size()), pool.max_chunks());
  std::sort(chunks.begin(), chunks.end());
  // The boundaries are exactly NumChunks's, whichever thread ran which chunk.
  EXPECT_EQ(chunks, ExpectedChunks(n, min_chunk, pool.max_chunks()))
      << "n=" << n << " min_chunk=" << min_chunk << " threads=" << pool.num_threads();
  for (const auto& [begin, end] : chunks) {
    EXPECT_LT(begin, end) << "empty chunk passed to fn";
    if (chunks.size() > 1) EXPECT_GE(end - begin, std::max<int64_t>(min_chunk, 1));
  }
}

TEST(ThreadPoolTest, ParallelForCoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 31, 32, 33, 100, 1001, 100000}) {
      for (int64_t min_chunk : {0, 1, 2, 3, 4, 8, 64, 1000}) {
        CheckCoverage(pool, n, min_chunk);
      }
    }
  }
}

TEST(ThreadPoolTest, NumChunks) {
  EXPECT_EQ(ThreadPool::MaxChunks(1), 1);
  EXPECT_EQ(ThreadPool::MaxChunks(2), 2 * ThreadPool::kChunksPerThread);
  EXPECT_EQ(ThreadPool::NumChunks(0, 1, 8), 0);
  EXPECT_EQ(ThreadPool::NumChunks(-3, 1, 8), 0);
  EXPECT_EQ(ThreadPool::NumChunks(5, 1, 8), 5);       // fewer items than chunks
  EXPECT_EQ(ThreadPool::NumChunks(100, 1, 8), 8);     // capped by the pool
  EXPECT_EQ(ThreadPool::NumChunks(100, 30, 8), 3);    // capped by min_chunk
  EXPECT_EQ(ThreadPool::NumChunks(100, 1000, 8), 1);  // smaller than one chunk
  EXPECT_EQ(ThreadPool::NumChunks(100, 0, 8), 8);     // min_chunk 0 counts as 1
  EXPECT_EQ(ThreadPool::NumChunks(100, 1, 1), 1);     // a pool without workers
}

TEST(ThreadPoolTest, FewerItemsThanThreads) {
  ThreadPool pool(8);
  for (int64_t n = 1; n < 8; ++n) CheckCoverage(pool, n, 1);
}

TEST(ThreadPoolTest, NonPositiveThreadCountRunsInline) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.num_threads(), 1);
  EXPECT_EQ(pool.max_chunks(), 1);
  const std::thread::id caller = std::this_thread::get_id();
  int calls = 0;
  pool.ParallelFor(100, 1, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 100);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPoolTest, SplitsWorkIntoMoreChunksThanThreads) {
  ThreadPool pool(4);
  std::mutex mu;
  std::vector<Chunk> chunks;
  pool.ParallelFor(400, 1, [&](int64_t begin, int64_t end) {
    std::lock_guard<std::mutex> lock(mu);
    chunks.emplace_back(begin, end);
  });
  EXPECT_EQ(static_cast<int64_t>(chunks.size()), 4 * ThreadPool::kChunksPerThread);
}

// A worker stuck inside a chunk (as if descheduled) does not hold up the others: the caller runs
// every other chunk while it is stuck. The stuck chunk waits for the rest of the job to be done,
// so a pool that left any other chunk to that worker would never finish (the wait times out and
// the counts below fail): the test asserts on who ran what, not on timing.
TEST(ThreadPoolTest, CallerTakesTheShareOfABlockedWorker) {
  ThreadPool pool(2);
  const int64_t chunks = pool.max_chunks();
  ASSERT_GE(chunks, 4);
  const std::thread::id caller = std::this_thread::get_id();
  std::mutex mu;
  std::condition_variable cv;
  bool worker_started = false;
  int64_t others_done = 0;
  int64_t caller_chunks = 0, worker_chunks = 0;
  bool worker_saw_rest_done = false;
  pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
    ASSERT_EQ(end - begin, 1);
    std::unique_lock<std::mutex> lock(mu);
    if (std::this_thread::get_id() == caller) {
      // The caller's first chunk lets a worker claim one before the caller takes the rest.
      if (caller_chunks == 0) {
        cv.wait_for(lock, std::chrono::seconds(10), [&] { return worker_started; });
      }
      ++caller_chunks;
      ++others_done;
      cv.notify_all();
      return;
    }
    ++worker_chunks;
    if (worker_started) {  // a second chunk on the worker: the caller was not taking them
      ++others_done;
      cv.notify_all();
      return;
    }
    worker_started = true;
    cv.notify_all();
    worker_saw_rest_done =
        cv.wait_for(lock, std::chrono::seconds(10), [&] { return others_done == chunks - 1; });
  });
  EXPECT_TRUE(worker_saw_rest_done);
  EXPECT_EQ(worker_chunks, 1);
  EXPECT_EQ(caller_chunks, chunks - 1);
}

// The same with a plain sleep: every chunk on the worker sleeps, the caller's are instant. The job
// takes about one sleep (the worker's single chunk), not one sleep per chunk of a fixed share.
TEST(ThreadPoolTest, SleepingWorkerCostsOneChunk) {
  ThreadPool pool(2);
  const int64_t chunks = pool.max_chunks();
  const std::thread::id caller = std::this_thread::get_id();
  constexpr auto kSleep = std::chrono::milliseconds(100);
  std::atomic<int64_t> worker_chunks{0};
  bool first = true;  // the caller's first chunk (only the caller touches it)
  const auto t0 = std::chrono::steady_clock::now();
  pool.ParallelFor(chunks, 1, [&](int64_t, int64_t) {
    if (std::this_thread::get_id() == caller) {
      // Let a worker claim a chunk before the caller takes the rest (up to a generous limit).
      for (int i = 0; first && worker_chunks.load() == 0 && i < 10000; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      first = false;
      return;
    }
    worker_chunks.fetch_add(1);
    std::this_thread::sleep_for(kSleep);
  });
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  // The caller takes every chunk the worker has not claimed while it sleeps, so the job lasts the
  // worker's own chunks and no longer: normally one (a fixed split would give it chunks / 2, four
  // sleeps). The count is recorded, not asserted: on a loaded machine the caller may get no CPU
  // for a whole sleep, and then the worker rightly takes another chunk (ownership is asserted
  // above, in CallerTakesTheShareOfABlockedWorker).
  const int64_t worker = worker_chunks.load();
  RecordProperty("worker_chunks", static_cast<int>(worker));
  EXPECT_GE(worker, 1);
  EXPECT_LT(elapsed, kSleep * (worker + 1)) << "worker ran " << worker << " chunks";
}

// Many tiny jobs back to back: workers often wake after the caller has finished the whole job
// alone, and must neither run a chunk twice nor touch the finished job (each job's fn and its
// data live on the caller's stack and die with the call; ASan and TSan see any late access).
TEST(ThreadPoolTest, ManySmallJobsStress) {
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    for (int rep = 0; rep < 3000; ++rep) {
      const int64_t n = 1 + rep % 37;
      std::vector<int> hits(static_cast<size_t>(n), 0);
      pool.ParallelFor(n, 1 + rep % 3, [&hits](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)], 1) << rep;
    }
  }
}

TEST(ThreadPoolTest, ManyConsecutiveJobsAndConcurrentCallers) {
  ThreadPool pool(3);
  for (int rep = 0; rep < 200; ++rep) CheckCoverage(pool, 1 + rep % 17, 1);
  // Calls from several threads are serialised, each still complete and correct.
  std::vector<std::thread> callers;
  callers.reserve(4);
  std::atomic<int64_t> total{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&pool, &total, t] {
      for (int rep = 0; rep < 50; ++rep) {
        const int64_t n = 10 + t + rep;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.ParallelFor(n, 2, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        for (auto& h : hits) {
          EXPECT_EQ(h.load(), 1);
          total += h.load();
        }
      }
    });
  }
  for (auto& c : callers) c.join();
  int64_t want = 0;
  for (int t = 0; t < 4; ++t) {
    for (int rep = 0; rep < 50; ++rep) want += 10 + t + rep;
  }
  EXPECT_EQ(total.load(), want);
}

// Workers that have gone to sleep (no job for a while) wake for the next one.
TEST(ThreadPoolTest, WorkersSleepAndWake) {
  ThreadPool pool(2);
  for (int rep = 0; rep < 3; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CheckCoverage(pool, 64, 1);
  }
}

TEST(ThreadPoolTest, DefaultPoolIsOneProcessWidePool) {
  ThreadPool& pool = ThreadPool::Default();
  EXPECT_GE(pool.num_threads(), 1);
  EXPECT_EQ(&pool, &ThreadPool::Default());
  CheckCoverage(pool, 77, 1);
}

}  // namespace
}  // namespace mnemo::kernels
