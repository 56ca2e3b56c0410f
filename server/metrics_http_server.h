// MetricsHttpServer: serves a prometheus-cpp registry as Prometheus text on GET /metrics.
//
// Why not prometheus-cpp's own Exposer: its HTTP server (civetweb) cannot start its worker threads
// in a process that links CUDA 13's libraries: they carry ~170 KB of thread-local storage, more
// than civetweb's fixed thread stack, so pthread_create fails with EINVAL and the Exposer throws
// "null context when constructing CivetServer" (Debian bookworm's prometheus-cpp 1.0.1). The
// server links cuBLAS whenever CUDA is built. Scrapes are rare and small, so one thread answering
// one connection at a time suffices; the text comes from prometheus-cpp's own serializer.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

#include "prometheus/registry.h"

namespace mnemo::server {

class MetricsHttpServer {
 public:
  // Listens on "HOST:PORT" (port 0 picks one). UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int port, std::shared_ptr<prometheus::Registry> registry);
  void Loop();
  void Answer(int fd) const;

  int listen_fd_;
  int port_;
  int wake_[2] = {-1, -1};  // a pipe that interrupts poll() at shutdown
  std::shared_ptr<prometheus::Registry> registry_;
  std::thread thread_;
};

}  // namespace mnemo::server
