// A second, plaintext gRPC listener that serves only grpc.health.v1 (--health-listen): probes
// that cannot speak TLS (Kubernetes' gRPC probes) reach it while the main listener requires TLS
// or client certificates. It answers the same statuses as the main listener ("" readiness,
// "liveness"): whoever sets a status on one sets it on both through Health below.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

#include "grpcpp/server.h"

namespace mnemo::server {

class HealthListener {
 public:
  // Listens on "HOST:PORT" (port 0 picks one) without TLS. UNAVAILABLE when it cannot bind
  // (a port in use included: the listener does not share it).
  static absl::StatusOr<std::unique_ptr<HealthListener>> Start(const std::string& address);
  ~HealthListener();
  HealthListener(const HealthListener&) = delete;
  HealthListener& operator=(const HealthListener&) = delete;

  int port() const { return port_; }
  // Thread-safe (as gRPC's health service).
  void SetServingStatus(const std::string& service, bool serving);
  // Stops answering; probes then fail to connect. Called last, after the main listener.
  void Shutdown();

 private:
  HealthListener(std::unique_ptr<grpc::Server> server, int port)
      : server_(std::move(server)), port_(port) {}

  std::unique_ptr<grpc::Server> server_;
  int port_;
  bool shut_down_ = false;
};

// Sets a health status on the main server and on the health listener (when there is one).
class Health {
 public:
  Health(grpc::Server* main, HealthListener* extra) : main_(main), extra_(extra) {}
  void Set(const std::string& service, bool serving) {
    main_->GetHealthCheckService()->SetServingStatus(service, serving);
    if (extra_ != nullptr) extra_->SetServingStatus(service, serving);
  }

 private:
  grpc::Server* main_;
  HealthListener* extra_;
};

}  // namespace mnemo::server
