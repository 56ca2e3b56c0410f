#include "server/replica_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace mnemo::server {

grpc::Status ReplicaServiceImpl::HandOffSession(grpc::ServerContext* context,
                                                const v1::HandOffSessionRequest* request,
                                                v1::HandOffSessionResponse* response) {
  // Between replicas. Served while draining, so only the credentials are checked (not
  // scope.Admit()); with an auth file only an admin tenant may make a replica let a session go
  // (the replicas' own certificate subject or --replica-token-file token): anyone else could
  // push every session out to the store.
  RpcScope scope(ctx_, "HandOffSession", context);
  if (const absl::Status& s = scope.Authenticated(); !s.ok()) return scope.Finish(s);
  if (!scope.caller().admin) {
    return scope.Finish(absl::PermissionDeniedError(
        "HandOffSession is for replicas: it needs an admin tenant's credentials"));
  }
  if (absl::Status bounded = CheckRequest(*request, ctx_.limits); !bounded.ok()) {
    return scope.Finish(bounded);
  }
  absl::Time deadline = absl::Now() + wait_;
  const auto call_deadline = context->deadline();
  if (call_deadline != std::chrono::system_clock::time_point::max()) {
    // Answer before the caller gives up, so it learns the outcome.
    deadline = std::min(deadline, absl::FromChrono(call_deadline) - absl::Milliseconds(200));
  }
  absl::StatusOr<int64_t> version = ctx_.sessions->HandOff(request->session_id(), deadline);
  if (absl::IsDeadlineExceeded(version.status())) {
    // Busy, not unreachable: the caller must not take the session over now.
    version = absl::AbortedError(version.status().message());
  }
  const bool done = version.ok();
  ctx_.metrics->HandOff("out", done ? "ok" : absl::IsNotFound(version.status()) ? "ok" : "error");
  if (done) {
    response->set_state_version(*version);
    std::fprintf(stderr, "mnemo-server: session %s (version %lld) handed off to %s\n",
                 request->session_id().c_str(), static_cast<long long>(*version),
                 request->to_replica().c_str());
  }
  return scope.Finish(version.status());
}

std::shared_ptr<grpc::Channel> ReplicaClient::ChannelTo(const std::string& address) {
  MutexLock lock(&mu_);
  std::shared_ptr<grpc::Channel>& channel = channels_[address];
  if (channel == nullptr) {
    grpc::ChannelArguments args;
    // A replica that is gone must not hold a take-over up for long.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channel = grpc::CreateCustomChannel(address, credentials_, args);
  }
  return channel;
}

absl::Status ReplicaClient::HandOff(const std::string& address, const std::string& id) {
  auto stub = v1::ReplicaService::NewStub(ChannelTo(address));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
  v1::HandOffSessionRequest request;
  request.set_session_id(id);
  request.set_to_replica(self_);
  if (!token_.empty()) context.AddMetadata("authorization", "Bearer " + token_);
  v1::HandOffSessionResponse response;
  const grpc::Status status = stub->HandOffSession(&context, request, &response);
  if (status.ok()) return absl::OkStatus();
  // No answer in time is as good as gone: the claim that follows fences that replica.
  const auto code = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
                        ? absl::StatusCode::kUnavailable
                        : static_cast<absl::StatusCode>(status.error_code());
  return absl::Status(code, absl::StrCat("replica at ", address, ": ", status.error_message()));
}

}  // namespace mnemo::server
