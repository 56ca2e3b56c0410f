// MetricsHttpServer: serves a prometheus-cpp registry as Prometheus text on GET /metrics.
//
// Why not prometheus-cpp's own Exposer: its HTTP server (civetweb) cannot start its worker threads
// in a process that links CUDA 13's libraries: they carry ~170 KB of thread-local storage, more
// than civetweb's fixed thread stack, so pthread_create fails with EINVAL and the Exposer throws
// "null context when constructing CivetServer" (Debian bookworm's prometheus-cpp 1.0.1). The
// server links cuBLAS whenever CUDA is built. One thread serves every connection at once with
// non-blocking sockets and poll(): each connection has kRequestDeadline from its accept to the
// end of its answer and is closed when that passes, and beyond kMaxConnections the oldest is
// closed to make room, so slow or idle clients can never hold scrapes up. The text comes from
// prometheus-cpp's own serializer.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "prometheus/registry.h"

namespace mnemo::server {

class MetricsHttpServer {
 public:
  // Listens on "HOST:PORT" (port 0 picks one). UNAVAILABLE when it cannot bind. `before_scrape`
  // (may be empty) runs on the server's thread before each collection, to refresh gauges that
  // are read rather than kept (the allocator's figures).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      std::function<void()> before_scrape = {});
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

  // From a connection's accept to the last byte of its answer.
  static constexpr absl::Duration kRequestDeadline = absl::Seconds(5);
  // Connections open at once; one more closes the oldest.
  static constexpr size_t kMaxConnections = 64;

 private:
  MetricsHttpServer(int listen_fd, int port, std::shared_ptr<prometheus::Registry> registry,
                    std::function<void()> before_scrape);
  void Loop();
  // The HTTP response to `request` (the bytes up to the blank line).
  std::string Answer(const std::string& request) const;

  int listen_fd_;
  int port_;
  int wake_[2] = {-1, -1};  // a pipe that interrupts poll() at shutdown
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_scrape_;
  std::thread thread_;
};

}  // namespace mnemo::server
