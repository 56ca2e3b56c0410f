// Mutex, MutexLock and CondVar for kernels/: std::mutex and std::condition_variable carrying
// clang's thread-safety attributes (libstdc++'s own types carry none), so that -Wthread-safety
// checks the locking of kernels/ code, which may not depend on Abseil (DESIGN.md §1). Behaviour
// and cost are those of the std types underneath; ThreadSanitizer sees them as such.
#pragma once

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

namespace mnemo::kernels {

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

class CondVar {
 public:
  // Releases `*mu` (held by the caller), blocks until signalled, and takes `*mu` again before
  // returning. May return spuriously: callers wait in a loop on their condition.
  void Wait(Mutex* mu) MNEMO_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // still held: the caller's scope releases it
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace mnemo::kernels
