// ReplicaService (mnemo.v1): what replicas sharing a session store ask of each other. The server
// side hands a session off (SessionManager::HandOff); ReplicaClient is the asking side, the
// SessionManager's hand_off hook.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

#include "base/mutex.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "mnemo/v1/mnemo.grpc.pb.h"
#include "server/service_context.h"

namespace mnemo::server {

class ReplicaServiceImpl final : public v1::ReplicaService::Service {
 public:
  // `wait` bounds how long a hand-off waits for a running request (less when the call's
  // deadline comes first).
  ReplicaServiceImpl(ServiceContext& ctx, absl::Duration wait) : ctx_(ctx), wait_(wait) {}

  // Served while draining too: a drain and a hand-off both write the session and let it go.
  grpc::Status HandOffSession(grpc::ServerContext* context,
                              const v1::HandOffSessionRequest* request,
                              v1::HandOffSessionResponse* response) override;

 private:
  ServiceContext& ctx_;
  const absl::Duration wait_;
};

// Calls other replicas' ReplicaService, keeping one channel per address.
class ReplicaClient {
 public:
  // `self` names this replica in requests; `timeout` bounds each call; `credentials` are those
  // of the replicas' listeners (insecure when they are plaintext); `token`, when not empty, is
  // sent as the bearer token (replicas whose auth file gives it an admin tenant).
  ReplicaClient(std::string self, absl::Duration timeout,
                std::shared_ptr<grpc::ChannelCredentials> credentials, std::string token = "")
      : self_(std::move(self)),
        timeout_(timeout),
        credentials_(std::move(credentials)),
        token_(std::move(token)) {}

  // OK once the replica at `address` handed session `id` off; NOT_FOUND when it does not hold it;
  // ABORTED while a request still runs there; UNAVAILABLE when it cannot be reached (gone, or
  // not answering within the timeout).
  absl::Status HandOff(const std::string& address, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string self_;
  const absl::Duration timeout_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::string token_;
  Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mnemo::server
