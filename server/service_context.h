// What the gRPC services share: the loaded models, the sessions, the metrics, the request limits
// and the draining flag; and RpcScope, which counts and times every RPC the same way.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "mnemo/v1/request_parsing.h"
#include "server/grpc_status.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/request_bounds.h"
#include "server/session_manager.h"
#include "server/session_runner.h"

namespace mnemo::server {

// What one request may carry (server/request_bounds.h checks it; docs/server-api.md "Request
// limits"). The flags of the same names set them.
struct RequestLimits {
  int64_t max_generate_tokens = 4096;  // GenerateRequest.max_tokens
  // Tokens of one prompt or scored text, ids of one Detokenize and of one Ingest message.
  int64_t max_input_tokens = 1 << 20;
  // Bytes of one text field: Tokenize, a prompt, a scored text, one Ingest message's chunk.
  int64_t max_text_bytes = int64_t{8} << 20;
  int max_stop_strings = 16;
  int max_stop_bytes = 256;
  int max_stop_ids = 64;  // GenerateRequest.stop_ids
  int max_labels = 16;    // labels, label_filter
  absl::Duration max_session_ttl = absl::Hours(168);
};

struct ServiceContext {
  ModelRegistry* models = nullptr;
  SessionManager* sessions = nullptr;
  Metrics* metrics = nullptr;
  RequestLimits limits;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};  // RPCs between RpcScope's construction and destruction
};

// UNAVAILABLE while the server drains: every new call is refused, reads included.
inline absl::Status AdmitNewWork(ServiceContext& ctx) {
  if (!ctx.draining.load()) return absl::OkStatus();
  ctx.metrics->Rejected("shutting_down");
  return WithReason(absl::UnavailableError("the server is shutting down; retry on another replica"),
                    kReasonDraining);
}

// Counts an RPC as running while alive and records its code and duration when finished.
class RpcScope {
 public:
  RpcScope(ServiceContext& ctx, const char* rpc) : ctx_(ctx), rpc_(rpc), start_(absl::Now()) {
    ctx_.metrics->RequestStarted();
    ++ctx_.in_flight;
  }
  ~RpcScope() {
    ctx_.metrics->RequestEnded();
    --ctx_.in_flight;
  }
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  absl::Time start() const { return start_; }
  // UNAVAILABLE while the server drains.
  absl::Status Admit() const { return AdmitNewWork(ctx_); }
  grpc::Status Finish(const absl::Status& status) {
    grpc::Status s = ToGrpcStatus(status);
    ctx_.metrics->Request(rpc_, GrpcCodeName(s.error_code()),
                          absl::ToDoubleSeconds(absl::Now() - start_));
    return s;
  }

 private:
  ServiceContext& ctx_;
  const char* rpc_;
  absl::Time start_;
};

// Serves a unary method registered as streamed unary: reads the request (a request that does not
// parse is answered with its INVALID_ARGUMENT and counted; while draining, every call gets
// UNAVAILABLE; one past a size limit gets INVALID_ARGUMENT before any work), runs `handle`,
// writes the response.
template <typename Request, typename Response, typename Handle>
grpc::Status ServeUnary(ServiceContext& ctx, const char* rpc, grpc::ServerContext* context,
                        grpc::ServerUnaryStreamer<Request, Response>* stream, Handle handle) {
  Request request;
  (void)v1::TakeRequestParseError();  // what an earlier call on this thread left behind
  if (!stream->Read(&request)) {
    grpc::Status error = v1::TakeRequestParseError();
    if (error.ok()) error = grpc::Status(grpc::StatusCode::CANCELLED, "no request arrived");
    ctx.metrics->Request(rpc, GrpcCodeName(error.error_code()), 0);
    return error;
  }
  if (absl::Status admitted = AdmitNewWork(ctx); !admitted.ok()) {
    ctx.metrics->Request(rpc, "UNAVAILABLE", 0);
    return ToGrpcStatus(admitted);
  }
  if (absl::Status bounded = CheckRequest(request, ctx.limits); !bounded.ok()) {
    ctx.metrics->Request(rpc, "INVALID_ARGUMENT", 0);
    return ToGrpcStatus(bounded);
  }
  Response response;
  grpc::Status status = handle(context, &request, &response);
  if (status.ok() && !stream->Write(response)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
  return status;
}

// The request's deadline and cancellation as the server core sees them.
inline RequestControl ControlOf(grpc::ServerContext* context) {
  RequestControl control;
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    control.deadline = absl::FromChrono(deadline);
  }
  control.cancelled = [context] { return context->IsCancelled(); };
  return control;
}

}  // namespace mnemo::server
