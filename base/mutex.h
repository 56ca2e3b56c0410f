// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable carrying clang's
// thread-safety attributes (libstdc++'s own types carry none), so that -Wthread-safety (the
// thread-safety preset) checks every lock in the project. The std types underneath keep the
// behaviour, the cost and ThreadSanitizer's view of them: Debian's Abseil is not built with TSan,
// so TSan cannot see absl::Mutex's synchronisation and reports false races through it. Standard
// library only, so kernels/ may use it too; outside kernels/ annotate with Abseil's macros
// (ABSL_GUARDED_BY, ...), which expand to the same attributes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define MNEMO_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define MNEMO_THREAD_ANNOTATION(x)
#endif
#define MNEMO_CAPABILITY(x) MNEMO_THREAD_ANNOTATION(capability(x))
#define MNEMO_SCOPED_CAPABILITY MNEMO_THREAD_ANNOTATION(scoped_lockable)
#define MNEMO_GUARDED_BY(x) MNEMO_THREAD_ANNOTATION(guarded_by(x))
#define MNEMO_REQUIRES(...) MNEMO_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define MNEMO_ACQUIRE(...) MNEMO_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define MNEMO_RELEASE(...) MNEMO_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define MNEMO_EXCLUDES(...) MNEMO_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))

namespace mnemo {

class MNEMO_CAPABILITY("mutex") Mutex {
 public:
  void Lock() MNEMO_ACQUIRE() { mu_.lock(); }
  void Unlock() MNEMO_RELEASE() { mu_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `*mu` for its scope.
class MNEMO_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) MNEMO_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() MNEMO_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// The waits release `*mu` (held by the caller), block until signalled (or the time is up), and
// take `*mu` again before returning. They may return spuriously: callers wait in a loop on their
// condition.
class CondVar {
 public:
  void Wait(Mutex* mu) MNEMO_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // still held: the caller's scope releases it
  }
  // True when `deadline` passed.
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mu, const std::chrono::time_point<Clock, Duration>& deadline)
      MNEMO_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool timed_out = cv_.wait_until(lock, deadline) == std::cv_status::timeout;
    lock.release();
    return timed_out;
  }
  // True when `timeout` passed.
  template <typename Rep, typename Period>
  bool WaitFor(Mutex* mu, const std::chrono::duration<Rep, Period>& timeout) MNEMO_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool timed_out = cv_.wait_for(lock, timeout) == std::cv_status::timeout;
    lock.release();
    return timed_out;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace mnemo
