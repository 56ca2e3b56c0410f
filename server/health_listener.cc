// The health-only listener: a gRPC server with the default health service and nothing of ours
// that answers, without the reflection plugin gRPC adds to every builder.
#include "server/health_listener.h"

#include <chrono>

#include "absl/strings/str_cat.h"

#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/transport_security.h"

namespace mnemo::server {

absl::StatusOr<std::unique_ptr<HealthListener>> HealthListener::Start(const std::string& address) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  // gRPC adds its default health service only beside services of ours, and a server needs one
  // with synchronous methods to poll its queues: the generated base class of ModelService
  // answers every method UNIMPLEMENTED, which is what a health-only listener says to them.
  static v1::ModelService::Service* const placeholder = new v1::ModelService::Service();
  builder.RegisterService(placeholder);
  builder.SetOption(std::make_unique<WithoutPlugins>(std::vector<std::string>{kReflectionPlugin}));
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Probes send tiny requests: nothing larger is read.
  builder.SetMaxReceiveMessageSize(4096);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " (--health-listen)"));
  }
  return std::unique_ptr<HealthListener>(new HealthListener(std::move(server), port));
}

HealthListener::~HealthListener() { Shutdown(); }

void HealthListener::SetServingStatus(const std::string& service, bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(service, serving);
}

void HealthListener::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  // Health calls are instant: nothing is worth waiting for (without a deadline, the shutdown
  // took three seconds more while a probe's connection was open).
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
}

}  // namespace mnemo::server
